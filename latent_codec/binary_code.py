"""Binary codes for semantic hashing (Salakhutdinov & Hinton): a bundle's code thresholded per dimension, packed
into bytes, compared by Hamming distance.

A bundle that carries binary codes says so in its manifest (``binary_code``: one threshold per code
dimension). Bit d of an item is 1 when its code value d, as the payload carries it (unpacked and
dequantised, so the edge and the cloud compute the same bits from the same bytes), is above threshold d.
Bits are packed MSB first, eight to a byte (numpy's ``packbits`` order): a 32-value code is 4 bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import BundleError, PayloadError


@dataclass(frozen=True)
class BinaryCode:
    thresholds: tuple[float, ...]  # one per code dimension

    @property
    def bits(self) -> int:
        return len(self.thresholds)

    @property
    def nbytes(self) -> int:
        return (self.bits + 7) // 8

    @classmethod
    def from_dict(cls, d: dict) -> BinaryCode:
        thresholds = d.get("thresholds") if isinstance(d, dict) else None
        if not isinstance(thresholds, list) or not thresholds:
            raise ValueError("binary_code.thresholds must be a non-empty list of numbers")
        values = tuple(float(t) for t in thresholds)
        if not all(np.isfinite(values)):
            raise ValueError("binary_code.thresholds must be finite")
        return cls(values)

    def to_dict(self) -> dict:
        return {"thresholds": list(self.thresholds)}

    def of_codes(self, codes: np.ndarray) -> np.ndarray:
        """(N, D) codes -> (N, nbytes) uint8 packed bits."""
        z = np.asarray(codes, np.float32).reshape(len(codes), -1)
        if z.shape[1] != self.bits:
            raise PayloadError(f"codes have {z.shape[1]} values; the binary code has {self.bits} bits")
        return np.packbits(z > np.asarray(self.thresholds, np.float32), axis=1)

    def check(self, code: bytes) -> np.ndarray:
        """A code given as bytes -> (nbytes,) uint8; PayloadError naming the expected length, or padding bits set."""
        if len(code) != self.nbytes:
            raise PayloadError(
                f"the code is {len(code)} bytes; this bundle's binary codes are {self.bits} bits = {self.nbytes} bytes"
            )
        arr = np.frombuffer(code, np.uint8)
        spare = self.nbytes * 8 - self.bits
        if spare and int(arr[-1]) & ((1 << spare) - 1):
            raise PayloadError(f"the code's last {spare} bits are padding and must be 0")
        return arr


def of_codec(codec) -> BinaryCode | None:
    """The binary code a codec's bundle carries, or None."""
    manifest = getattr(codec, "manifest", None)
    return None if manifest is None else manifest.binary_code


def binary_codes(codec, payloads: Sequence[bytes]) -> np.ndarray:
    """(N, nbytes) packed bits of payloads of a bundle with binary codes: unpack, dequantise, threshold."""
    spec = of_codec(codec)
    if spec is None:
        raise BundleError(f"bundle {codec.bundle_id} has no binary codes (export it with --binary-code)")
    if not payloads:
        return np.zeros((0, spec.nbytes), np.uint8)
    symbols, _ = codec.symbols(payloads)
    return spec.of_codes(np.asarray(codec.dequantise(symbols)).reshape(len(payloads), -1))


def hamming(query: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Hamming distance of one packed code (nbytes,) to each of (N, nbytes) packed codes -> (N,) int64."""
    if len(codes) == 0:
        return np.zeros(0, np.int64)
    return np.bitwise_count(np.bitwise_xor(codes, query[None, :])).sum(axis=1, dtype=np.int64)


def nearest(query: np.ndarray, codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the k codes nearest the query (ties by index, so results are stable) and their distances."""
    d = hamming(query, codes)
    k = min(k, len(d))
    if k <= 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    part = np.argpartition(d, k - 1)[:k] if k < len(d) else np.arange(len(d))
    # Ties at the k-th distance: argpartition picks arbitrarily among them; take the lowest indices instead.
    cut = d[part].max()
    idx = np.concatenate([np.flatnonzero(d < cut), np.flatnonzero(d == cut)])[:k]
    order = np.lexsort((idx, d[idx]))
    return idx[order], d[idx[order]]

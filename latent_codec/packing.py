"""Item payloads: the exact bytes that represent one item's code on the wire and in storage.

Layout of one item's payload (manifest "payload" section):

    [ fixed part: bit-packed, MSB first ]      [ entropy part ]
      code symbols at quantiser bits            ANS bytes of the code symbols
      (only when not entropy-coded)             (only when entropy-coded)
      + side-information fields at their bits
        (e.g. max-unpooling switches, 2 bits each)

Everything a decoder needs beyond the code itself (switches) is *inside* the
payload, so compression ratios count it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .entropy import FactorizedPrior
from .errors import PayloadError
from .quantize import Quantizer


@dataclass
class SideField:
    """Extra decoder input sent with the code, e.g. max-unpooling switches."""

    name: str
    shape: list[int]  # per item
    bits: int  # per value, values 0..2**bits-1

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "bits": self.bits}

    @classmethod
    def from_dict(cls, d: dict) -> SideField:
        f = cls(str(d["name"]), [int(s) for s in d["shape"]], int(d["bits"]))
        if not 1 <= f.bits <= 16:
            raise ValueError(f"side field {f.name}: bits must be 1..16")
        return f


@dataclass
class PayloadSpec:
    quantizer: Quantizer
    code_dims: int
    prior: FactorizedPrior | None = None
    side: list[SideField] = field(default_factory=list)

    @property
    def format(self) -> str:
        name = self.quantizer.name
        return f"{name}+ans" if self.prior is not None else name

    @property
    def fixed_bits(self) -> int:
        bits = sum(f.numel * f.bits for f in self.side)
        if self.prior is None:
            bits += self.code_dims * self.quantizer.symbol_bits
        return bits

    @property
    def fixed_bytes(self) -> int:
        return (self.fixed_bits + 7) // 8

    @property
    def item_bytes(self) -> int | None:
        """Bytes per item for fixed-size formats; None when entropy-coded (variable)."""
        return None if self.prior is not None else self.fixed_bytes

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "code_dims": self.code_dims,
            "quantization": self.quantizer.to_dict(),
            "entropy": self.prior.to_dict() if self.prior is not None else None,
            "side": [f.to_dict() for f in self.side],
            "item_bytes": self.item_bytes,
        }

    @classmethod
    def from_dict(cls, d: dict) -> PayloadSpec:
        q = Quantizer.from_dict(d["quantization"])
        prior = FactorizedPrior.from_dict(d["entropy"]) if d.get("entropy") else None
        spec = cls(q, int(d["code_dims"]), prior, [SideField.from_dict(f) for f in d.get("side", [])])
        if q.kind == "affine" and len(q.lo) != spec.code_dims:
            raise ValueError(f"quantiser has {len(q.lo)} dimensions, code has {spec.code_dims}")
        if prior is not None:
            if q.kind != "affine":
                raise ValueError("entropy coding needs affine quantisation")
            if prior.dims != spec.code_dims or prior.levels != q.levels:
                raise ValueError(
                    f"entropy tables are {prior.dims}x{prior.levels}, need {spec.code_dims}x{q.levels}"
                )
        if d.get("format") not in (None, spec.format):
            raise ValueError(f"payload format says {d.get('format')!r} but its fields make {spec.format!r}")
        return spec

    # ---- pack / unpack ------------------------------------------------------
    def _symbol_ints(self, symbols: np.ndarray) -> np.ndarray:
        if self.quantizer.kind == "float16":
            return symbols.astype(np.float16).view(np.uint16).astype(np.uint32)
        if self.quantizer.kind == "float32":
            return symbols.astype(np.float32).view(np.uint32)
        return symbols.astype(np.uint32)

    def pack(self, codes: np.ndarray, side: dict[str, np.ndarray] | None = None) -> list[bytes]:
        """(N, *code_shape) float codes (+ side fields) -> N item payloads."""
        z = np.asarray(codes, dtype=np.float32).reshape(len(codes), -1)
        n = len(z)
        if z.shape[1] != self.code_dims:
            raise PayloadError(f"code has {z.shape[1]} dimensions, manifest says {self.code_dims}")
        symbols = self.quantizer.quantize(z)
        groups: list[tuple[np.ndarray, int]] = []
        if self.prior is None:
            groups.append((self._symbol_ints(symbols), self.quantizer.symbol_bits))
        side = side or {}
        for f in self.side:
            if f.name not in side:
                raise PayloadError(f"missing side field {f.name!r}")
            v = np.asarray(side[f.name]).reshape(n, -1)
            if v.shape[1] != f.numel:
                raise PayloadError(f"side field {f.name}: {v.shape[1]} values per item, expected {f.numel}")
            if v.size and (int(v.min()) < 0 or int(v.max()) >= (1 << f.bits)):
                raise PayloadError(f"side field {f.name}: values outside 0..{(1 << f.bits) - 1}")
            groups.append((v.astype(np.uint32), f.bits))
        fixed = _pack_bits(groups, n)
        if self.prior is None:
            return [bytes(row) for row in fixed]
        coded = self.prior.encode(symbols)
        return [bytes(row) + c for row, c in zip(fixed, coded)]

    def unpack(self, payloads: list[bytes]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """N item payloads -> (N, code_dims) float32 codes and side fields (N, *shape)."""
        n = len(payloads)
        fb = self.fixed_bytes
        for i, p in enumerate(payloads):
            if self.prior is None and len(p) != fb:
                raise PayloadError(f"item {i}: payload is {len(p)} bytes, format {self.format} needs {fb}")
            if self.prior is not None and len(p) < fb:
                raise PayloadError(
                    f"item {i}: payload is {len(p)} bytes, shorter than its {fb}-byte fixed part"
                )
        fixed = np.frombuffer(b"".join(bytes(p[:fb]) for p in payloads), dtype=np.uint8).reshape(n, fb)
        widths: list[tuple[int, int]] = []
        if self.prior is None:
            widths.append((self.code_dims, self.quantizer.symbol_bits))
        widths += [(f.numel, f.bits) for f in self.side]
        values = _unpack_bits(fixed, widths)
        side_vals = values[1:] if self.prior is None else values
        if self.prior is None:
            ints = values[0]
            if self.quantizer.kind == "float16":
                symbols = ints.astype(np.uint16).view(np.float16)
            elif self.quantizer.kind == "float32":
                symbols = ints.astype(np.uint32).view(np.float32)
            else:
                symbols = ints.astype(np.uint16)
                if symbols.size and int(symbols.max()) >= self.quantizer.levels:
                    raise PayloadError(f"symbol out of range for {self.quantizer.bits}-bit codes")
        else:
            symbols = self.prior.decode([bytes(p[fb:]) for p in payloads])
        codes = self.quantizer.dequantize(symbols)
        side = {f.name: v.reshape(n, *f.shape) for f, v in zip(self.side, side_vals)}
        return codes, side


def _pack_bits(groups: list[tuple[np.ndarray, int]], n: int) -> np.ndarray:
    """Concatenate groups of (N, K) ints at b bits each, MSB first, into (N, bytes) uint8."""
    if not groups:
        return np.zeros((n, 0), dtype=np.uint8)
    parts = []
    for values, b in groups:
        shifts = np.arange(b - 1, -1, -1, dtype=np.uint32)
        parts.append(((values[:, :, None] >> shifts) & 1).astype(np.uint8).reshape(n, -1))
    return np.packbits(np.concatenate(parts, axis=1), axis=1)


def _unpack_bits(data: np.ndarray, widths: list[tuple[int, int]]) -> list[np.ndarray]:
    n = data.shape[0]
    total = sum(k * b for k, b in widths)
    bits = np.unpackbits(data, axis=1, count=total) if total else np.zeros((n, 0), np.uint8)
    out, pos = [], 0
    for k, b in widths:
        chunk = bits[:, pos : pos + k * b].reshape(n, k, b).astype(np.uint32)
        weights = (1 << np.arange(b - 1, -1, -1, dtype=np.uint32)).astype(np.uint32)
        out.append((chunk * weights).sum(axis=2, dtype=np.uint32))
        pos += k * b
    return out


def join_payloads(payloads: list[bytes], fixed_size: bool) -> tuple[bytes, list[int]]:
    """Payloads -> (concatenated data, per-item sizes or [] for fixed-size formats)."""
    return b"".join(payloads), ([] if fixed_size else [len(p) for p in payloads])


def split_payloads(data: bytes, sizes: list[int], count: int, item_bytes: int | None) -> list[bytes]:
    """Inverse of join_payloads, validating lengths against the manifest."""
    if item_bytes is not None:
        if sizes:
            raise PayloadError("codes.sizes must be empty for a fixed-size format")
        if len(data) != count * item_bytes:
            raise PayloadError(
                f"codes.data is {len(data)} bytes; {count} items of {item_bytes} bytes need {count * item_bytes}"
            )
        return [data[i * item_bytes : (i + 1) * item_bytes] for i in range(count)]
    if len(sizes) != count:
        raise PayloadError(f"codes.sizes has {len(sizes)} entries for {count} items")
    if sum(sizes) != len(data):
        raise PayloadError(f"codes.sizes add up to {sum(sizes)} bytes but codes.data is {len(data)} bytes")
    out, pos = [], 0
    for s in sizes:
        out.append(data[pos : pos + s])
        pos += s
    return out

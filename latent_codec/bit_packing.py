"""Fixed-width fields packed MSB first across item payloads: flat codes and side fields (switches)."""

from __future__ import annotations

import numpy as np


def pack_bits(groups: list[tuple[np.ndarray, int]], n: int) -> np.ndarray:
    """Concatenate groups of (N, K) ints at b bits each, MSB first, into (N, bytes) uint8."""
    if not groups:
        return np.zeros((n, 0), dtype=np.uint8)
    parts = []
    for values, b in groups:
        shifts = np.arange(b - 1, -1, -1, dtype=np.uint32)
        parts.append(((values[:, :, None] >> shifts) & 1).astype(np.uint8).reshape(n, -1))
    return np.packbits(np.concatenate(parts, axis=1), axis=1)


# Byte-aligned widths are read as big-endian words (MSB first, as packed), with no bit unpacking: the common
# 8-bit codes, on a server's per-call path.
_WHOLE = {8: ">u1", 16: ">u2", 32: ">u4"}


def unpack_bits(data: np.ndarray, widths: list[tuple[int, int]]) -> list[np.ndarray]:
    """Inverse of ``pack_bits``: (N, bytes) uint8 -> one (N, K) uint32 array per (K, b) group."""
    n = data.shape[0]
    total = sum(k * b for k, b in widths)
    bits: np.ndarray | None = None  # unpacked only if some group is not whole bytes on a byte boundary
    out, pos = [], 0
    for k, b in widths:
        if pos % 8 == 0 and b in _WHOLE:
            words = np.ascontiguousarray(data[:, pos // 8 : (pos + k * b) // 8]).view(_WHOLE[b])
            out.append(words.reshape(n, k).astype(np.uint32))
        else:
            if bits is None:
                bits = np.unpackbits(data, axis=1, count=total) if total else np.zeros((n, 0), np.uint8)
            chunk = bits[:, pos : pos + k * b].reshape(n, k, b).astype(np.uint32)
            weights = (1 << np.arange(b - 1, -1, -1, dtype=np.uint32)).astype(np.uint32)
            out.append((chunk * weights).sum(axis=2, dtype=np.uint32))
        pos += k * b
    return out

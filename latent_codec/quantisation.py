"""Code quantisation: float codes <-> integer symbols (or the code itself, cast), per the manifest.

- ``affine``: per-dimension uniform quantisation to ``bits`` (2..16) between ``lo[d]`` and ``hi[d]``,
  fitted on training codes (symbols 0..2^bits-1);
- ``float16`` / ``float32``: the code itself, cast (no entropy coding).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import PayloadError


@dataclass
class Quantiser:
    kind: str  # "affine" | "float16" | "float32"
    bits: int = 0
    lo: list[float] = field(default_factory=list)
    hi: list[float] = field(default_factory=list)

    # ---- construction -------------------------------------------------
    @classmethod
    def fit_affine(cls, codes: np.ndarray, bits: int, clip_quantile: float = 0.0) -> Quantiser:
        """Fit per-dimension [lo, hi] on training codes (N, D).

        clip_quantile > 0 ignores that fraction of outliers on each side:
        a few extreme training codes should not waste levels for everyone.
        """
        if not 2 <= bits <= 16:
            raise ValueError(f"affine quantisation needs 2..16 bits, got {bits}")
        z = np.asarray(codes, dtype=np.float64).reshape(len(codes), -1)
        if clip_quantile > 0:
            lo = np.quantile(z, clip_quantile, axis=0)
            hi = np.quantile(z, 1 - clip_quantile, axis=0)
        else:
            lo, hi = z.min(axis=0), z.max(axis=0)
        hi = np.where(hi - lo < 1e-6, lo + 1e-6, hi)  # constant dimension: any 1 level works
        return cls("affine", bits, [float(v) for v in lo], [float(v) for v in hi])

    @classmethod
    def from_dict(cls, d: dict) -> Quantiser:
        kind = d.get("kind")
        if kind == "affine":
            q = cls("affine", int(d["bits"]), [float(v) for v in d["lo"]], [float(v) for v in d["hi"]])
            if not 2 <= q.bits <= 16 or len(q.lo) != len(q.hi) or not q.lo:
                raise ValueError("affine quantiser needs 2..16 bits and equal, non-empty lo/hi")
            return q
        if kind in ("float16", "float32"):
            return cls(kind)
        raise ValueError(f"unknown quantisation kind {kind!r}")

    def to_dict(self) -> dict:
        if self.kind == "affine":
            return {"kind": "affine", "bits": self.bits, "lo": self.lo, "hi": self.hi}
        return {"kind": self.kind}

    # ---- properties -------------------------------------------------------
    @property
    def levels(self) -> int:
        return 1 << self.bits if self.kind == "affine" else 0

    @property
    def symbol_bits(self) -> int:
        """Bits per code dimension in a fixed-width payload."""
        return {"affine": self.bits, "float16": 16, "float32": 32}[self.kind]

    @property
    def name(self) -> str:
        return f"affine{self.bits}" if self.kind == "affine" else self.kind

    # ---- the mapping ------------------------------------------------------
    def quantise(self, codes: np.ndarray) -> np.ndarray:
        """(N, D) float codes -> (N, D) symbols: uint16 for affine, the float dtype otherwise."""
        z = np.asarray(codes, dtype=np.float32).reshape(len(codes), -1)
        if self.kind == "float16":
            return z.astype(np.float16)
        if self.kind == "float32":
            return z
        if z.shape[1] != len(self.lo):
            raise PayloadError(f"code has {z.shape[1]} dimensions, quantiser was fitted for {len(self.lo)}")
        lo = np.asarray(self.lo, np.float32)
        step = (np.asarray(self.hi, np.float32) - lo) / np.float32(self.levels - 1)
        s = np.rint((z - lo) / step)
        return np.clip(s, 0, self.levels - 1).astype(np.uint16)

    def dequantise(self, symbols: np.ndarray) -> np.ndarray:
        """(N, D) symbols -> (N, D) float32 codes (bin centres for affine)."""
        if self.kind in ("float16", "float32"):
            return np.asarray(symbols).astype(np.float32)
        s = np.asarray(symbols)
        if s.size and int(s.max()) >= self.levels:
            raise PayloadError(f"symbol {int(s.max())} out of range for {self.bits}-bit codes")
        lo = np.asarray(self.lo, np.float32)
        step = (np.asarray(self.hi, np.float32) - lo) / np.float32(self.levels - 1)
        return (lo + s.astype(np.float32) * step).astype(np.float32)

"""The integer hyper-decoder of code maps: ẑ -> one table index per element of ŷ, identical on every machine.

The table index cannot diverge between the device that encodes and the server that decodes because it is
computed from the integers ẑ with integer weights (the trained float weights times 2^F, rounded once at
export and stored in the manifest), int64 accumulation, ReLU and integer thresholds. No floating point
takes part, so every CPU, BLAS, thread count and batch size selects the same table for every element.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np


def conv2d_int(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """'Same' 3x3 convolution of int64 maps (N, C, H, W) with int64 weights (O, C, k, k): exact integers."""
    k = w.shape[-1]
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    cols = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))  # N, C, H, W, k, k
    out = np.einsum("nchwij,ocij->nohw", cols, w, optimize=False)
    return out + b[None, :, None, None]


@dataclass
class IntegerHyperDecoder:
    """ẑ -> table index per element of ŷ: nearest ×2 upsampling, conv3, ReLU, conv3, thresholds, in int64.

    Layer 1 weights and bias are scaled by 2^F; layer 2 weights by 2^F and its bias by 2^2F, so the
    output is log σ in units of 2^-2F and is compared with thresholds in the same units.
    """

    frac_bits: int
    w1: np.ndarray  # (Nh, Nh, 3, 3) int64
    b1: np.ndarray  # (Nh,)
    w2: np.ndarray  # (M, Nh, 3, 3)
    b2: np.ndarray  # (M,)
    thresholds: np.ndarray  # (levels - 1,) increasing int64

    @classmethod
    def from_float(
        cls, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, thresholds, frac_bits: int = 10
    ) -> IntegerHyperDecoder:
        f = float(1 << frac_bits)

        def r(a: np.ndarray, scale: float) -> np.ndarray:
            return np.rint(np.asarray(a, np.float64) * scale).astype(np.int64)

        return cls(frac_bits, r(w1, f), r(b1, f), r(w2, f), r(b2, f * f), r(np.asarray(thresholds), f * f))

    def log_scale_units(self, z: np.ndarray) -> np.ndarray:
        """The integer pre-threshold output (N, M, 2hz, 2wz), log σ times 2^2F."""
        x = np.asarray(z, np.int64).repeat(2, axis=2).repeat(2, axis=3)
        a1 = np.maximum(conv2d_int(x, self.w1, self.b1), 0)
        return conv2d_int(a1, self.w2, self.b2)

    def indices(self, z: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """(N, Nh, hz, wz) integer ẑ -> (N, M, h, w) table indices 0..levels-1."""
        units = self.log_scale_units(z)[:, :, : size[0], : size[1]]
        return np.searchsorted(self.thresholds, units, side="right").astype(np.int64)

    def to_dict(self) -> dict:
        return {
            "frac_bits": self.frac_bits,
            "w1": {"shape": list(self.w1.shape), "values": self.w1.ravel().tolist()},
            "b1": self.b1.tolist(),
            "w2": {"shape": list(self.w2.shape), "values": self.w2.ravel().tolist()},
            "b2": self.b2.tolist(),
            "thresholds": self.thresholds.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> IntegerHyperDecoder:
        def arr(spec: dict) -> np.ndarray:
            return np.asarray(spec["values"], np.int64).reshape([int(s) for s in spec["shape"]])

        h = cls(
            int(d["frac_bits"]),
            arr(d["w1"]),
            np.asarray(d["b1"], np.int64),
            arr(d["w2"]),
            np.asarray(d["b2"], np.int64),
            np.asarray(d["thresholds"], np.int64),
        )
        nh, m = h.w1.shape[0], h.w2.shape[0]
        if (
            h.w1.shape != (nh, nh, 3, 3)
            or h.w2.shape != (m, nh, 3, 3)
            or h.b1.shape != (nh,)
            or h.b2.shape != (m,)
        ):
            raise ValueError("hyper-decoder weights have inconsistent shapes")
        if np.any(np.diff(h.thresholds) <= 0):
            raise ValueError("hyper-decoder thresholds must increase")
        if not 0 <= h.frac_bits <= 16:
            raise ValueError("hyper-decoder frac_bits must be 0..16")
        return h


@lru_cache(maxsize=1)
def int64_mac_seconds() -> float:
    """CPU seconds of one int64 multiply-accumulate of the integer hyper-decoder's convolutions on this machine
    (measured once per process on a small map; numpy's einsum over a strided view)."""
    import time

    x = np.ones((1, 8, 32, 32), np.int64)
    w = np.ones((8, 8, 3, 3), np.int64)
    b = np.zeros(8, np.int64)
    best = float("inf")
    for _ in range(3):
        t0 = time.thread_time()
        conv2d_int(x, w, b)
        best = min(best, time.thread_time() - t0)
    return max(best / (8 * 8 * 9 * 32 * 32), 1e-10)

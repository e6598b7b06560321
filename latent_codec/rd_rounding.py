"""Rate-aware rounding of code-map residuals: the encoder's choice between floor and ceil, not the format's.

Plain rounding sends rint(d) for every residual d = y - μ. Rounding is the encoder's choice alone: the decoder
reads whatever integer was sent, so any integer is a valid payload. Choosing, per element, the neighbour q of
d (floor or ceil) that minimises

    (d - q)² + κ · bits(q | the element's table)

spends fewer bits where the table makes one neighbour much cheaper (the mode, typically), at a small cost in
the latent's error. The table is the one the element is coded under (its σ's Gaussian table), so bits(q) is the
coder's own cost, -log2 of the table's integer frequency. κ is in squared latent units per bit: 0 is plain
rounding. DEFAULT_KAPPA (the mean-and-scale family's; the checkerboard family's is in checkerboard.py) was
chosen on ten training photographs (docs/rd_rounding_train.md: the BD-rate against plain rounding is flat,
-4.2 to -4.4 %, for κ from 0.025 to 0.06), not on the held-out ones the RD benchmark reports
(docs/rd_rounding.md, ``make bench-rd-rounding``).

With f = d - floor(d) in [0, 1), ceil costs less iff f² - (1 - f)² > κ·(bits(floor + 1) - bits(floor)), i.e.
iff f > 1/2 + κ/2 · Δ(table, floor): one threshold per (table, symbol), gathered once per element.
"""

from __future__ import annotations

import numpy as np

DEFAULT_KAPPA = (
    0.04  # squared latent units per bit (chosen on training photographs: docs/rd_rounding_train.md)
)


class RateRounding:
    """Residuals and table indices -> grid symbols, floor or ceil by (d - q)² + κ·bits(q)."""

    def __init__(self, log2_probabilities: np.ndarray, kappa: float, grid_bits: int):
        if not np.isfinite(kappa) or kappa < 0:
            raise ValueError(f"rounding strength must be a finite number >= 0, not {kappa}")
        logp = np.asarray(log2_probabilities, np.float64)  # (tables, levels)
        if logp.shape[1] != 1 << grid_bits:
            raise ValueError(f"tables of {logp.shape[1]} levels for a grid of {grid_bits} bits")
        self.kappa = float(kappa)
        self.half = 1 << (grid_bits - 1)
        extra = np.diff(-logp, axis=1)  # bits(s + 1) - bits(s), for s = 0..levels-2
        t = 0.5 + 0.5 * self.kappa * extra
        # the grid's top symbol has no ceil: a threshold above any fraction in [0, 1)
        self.thresholds = np.concatenate([t, np.full((len(t), 1), np.inf)], axis=1).astype(np.float32)

    def __call__(self, d: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """(N, M, h, w) float residuals and their table indices -> uint16 symbols on the grid."""
        v = np.clip(np.asarray(d, np.float32), -self.half, self.half - 1)
        q = np.floor(v)
        f = v - q  # in [0, 1): exact in float32
        s = (q + self.half).astype(np.intp)
        up = f > self.thresholds[np.asarray(idx, np.intp), s]
        return (s + up).astype(np.uint16)

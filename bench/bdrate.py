"""Bjøntegaard delta rate: the average bitrate difference of two rate-quality curves at equal quality.

Classic BD-rate (VCEG-M33): fit log(rate) as a cubic polynomial of PSNR for
each curve, integrate both over the PSNR interval the curves share, and turn
the mean log-rate difference into a percentage. Negative = the test curve
needs fewer bytes than the anchor at the same quality. With fewer than four
points a curve is fitted with a polynomial of degree points - 1.
"""

from __future__ import annotations

import numpy as np


def _fit(psnr: np.ndarray, log_rate: np.ndarray) -> np.ndarray:
    deg = min(3, len(psnr) - 1)
    return np.polyfit(psnr, log_rate, deg)


def common_range(anchor_psnr, test_psnr) -> tuple[float, float] | None:
    """[lo, hi] PSNR interval both curves span, or None when they do not overlap."""
    lo = max(float(np.min(anchor_psnr)), float(np.min(test_psnr)))
    hi = min(float(np.max(anchor_psnr)), float(np.max(test_psnr)))
    return (lo, hi) if hi > lo else None


def bd_rate(anchor_rate, anchor_psnr, test_rate, test_psnr) -> float | None:
    """Percent rate change of test vs anchor over their common PSNR range; None without overlap."""
    ar, ap = np.asarray(anchor_rate, float), np.asarray(anchor_psnr, float)
    tr, tp = np.asarray(test_rate, float), np.asarray(test_psnr, float)
    if min(len(ar), len(tr)) < 2 or np.any(ar <= 0) or np.any(tr <= 0):
        raise ValueError("each curve needs at least two points with positive rates")
    rng = common_range(ap, tp)
    if rng is None:
        return None
    lo, hi = rng
    pa, pt = np.polyint(_fit(ap, np.log(ar))), np.polyint(_fit(tp, np.log(tr)))
    mean_a = (np.polyval(pa, hi) - np.polyval(pa, lo)) / (hi - lo)
    mean_t = (np.polyval(pt, hi) - np.polyval(pt, lo)) / (hi - lo)
    return float((np.exp(mean_t - mean_a) - 1.0) * 100.0)


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(rate, psnr) points -> the ones no other point beats on both (ascending rate and PSNR)."""
    out: list[tuple[float, float]] = []
    for r, q in sorted(points, key=lambda p: (p[0], -p[1])):
        if not out or q > out[-1][1]:
            out.append((r, q))
    return out


def bd_rate_window(
    anchor_rate, anchor_psnr, test_rate, test_psnr, lo: float, hi: float
) -> tuple[float | None, tuple[float, float] | None]:
    """BD-rate over [lo, hi] ∩ both curves' measured ranges, piecewise linear in log(rate): no extrapolation, no
    polynomial overshoot between points. -> (percent, the interval used) or (None, None) without overlap."""
    ap, tp = np.asarray(anchor_psnr, float), np.asarray(test_psnr, float)
    rng = common_range(ap, tp)
    if rng is None or min(hi, rng[1]) <= max(lo, rng[0]):
        return None, None
    a, b = max(lo, rng[0]), min(hi, rng[1])
    q = np.linspace(a, b, 2001)

    def log_rate(rate, psnr):
        order = np.argsort(psnr)
        return np.interp(q, np.asarray(psnr)[order], np.log(np.asarray(rate, float))[order])

    diff = log_rate(test_rate, tp) - log_rate(anchor_rate, ap)
    return float((np.exp(np.trapezoid(diff, q) / (b - a)) - 1.0) * 100.0), (a, b)

"""Multi-scale SSIM (Wang, Simoncelli & Bovik, "Multi-scale structural similarity for image quality
assessment", 2003), in numpy/scipy: scikit-image has single-scale SSIM only.

The paper's settings, as the reference implementations use them: an 11x11 Gaussian window (sigma 1.5),
K1 = 0.01, K2 = 0.03, dynamic range L = 255, five scales with exponents
(0.0448, 0.2856, 0.3001, 0.2363, 0.1333), a 2x2 average and decimation by 2 between scales, statistics over
the valid part of each filtered image (no padding). Contrast-structure terms of the first four scales and the
full SSIM of the last are multiplied, each raised to its exponent; a negative term (possible with strongly
anti-correlated images) counts as 0, as in TensorFlow's tf.image.ssim_multiscale. Colour images: the mean of
the per-channel values. Each side must be at least 161 pixels (the window must fit the fifth scale).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
WIN = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03


def gaussian_1d(size: int = WIN, sigma: float = SIGMA) -> np.ndarray:
    """The window is separable: the 11x11 Gaussian is the outer product of this with itself."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def min_side(scales: int = len(WEIGHTS)) -> int:
    """The smallest image side that keeps the window inside the last scale."""
    return (WIN - 1) * 2 ** (scales - 1) + 1


def ssim_terms(x: np.ndarray, y: np.ndarray, data_range: float = 255.0) -> tuple[float, float]:
    """(mean SSIM, mean contrast-structure) of two 2-D images over the valid window positions."""
    g, pad = gaussian_1d(), (WIN - 1) // 2
    stack = np.stack([x, y, x * x, y * y, x * y])
    for axis in (1, 2):  # separable filtering; the border rows the mode touches are cut off: "valid"
        stack = ndimage.correlate1d(stack, g, axis=axis, mode="constant")
    mx, my, sxx, syy, sxy = stack[:, pad : stack.shape[1] - pad, pad : stack.shape[2] - pad]
    vx, vy, cxy = sxx - mx * mx, syy - my * my, sxy - mx * my
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    cs = (2 * cxy + c2) / (vx + vy + c2)
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    return float((lum * cs).mean()), float(cs.mean())


def _halve(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    a = a[:h, :w]
    return (a[0::2, 0::2] + a[1::2, 0::2] + a[0::2, 1::2] + a[1::2, 1::2]) / 4.0


def ms_ssim(x: np.ndarray, y: np.ndarray, data_range: float = 255.0, weights=WEIGHTS) -> float:
    """MS-SSIM of two images (H, W) or (C, H, W); colour: the mean over channels."""
    a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} and {b.shape}")
    if a.ndim == 3:
        return float(np.mean([ms_ssim(a[c], b[c], data_range, weights) for c in range(a.shape[0])]))
    if min(a.shape) < min_side(len(weights)):
        raise ValueError(
            f"MS-SSIM over {len(weights)} scales needs sides of at least {min_side(len(weights))}"
        )
    out = 1.0
    for j, wj in enumerate(weights):
        full, cs = ssim_terms(a, b, data_range)
        term = full if j == len(weights) - 1 else cs
        out *= max(term, 0.0) ** wj
        if j < len(weights) - 1:
            a, b = _halve(a), _halve(b)
    return float(out)


def db(value: float) -> float:
    """MS-SSIM as decibels, -10 log10(1 - v): the scale on which rate curves of MS-SSIM are compared."""
    return float(-10 * np.log10(max(1.0 - value, 1e-10)))

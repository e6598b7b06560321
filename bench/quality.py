"""Quality of uint8 reconstructions, the same for every codec: PSNR of the mean MSE, and mean SSIM.

SSIM is skimage.metrics.structural_similarity with its defaults (7x7 uniform
window, sample covariance, K1 = 0.01, K2 = 0.03, data_range 255), computed for
a whole stack of images at once: 10,000 per-image calls per codec setting
would dominate the benchmark's run time.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from latent_codec import metrics

WIN = 7
K1, K2 = 0.01, 0.03


def mse_unit(original: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """Per-item MSE on the [0, 1] scale of uint8 items (N, ...)."""
    return metrics.per_item_mse(original.astype(np.float64) / 255.0, recon.astype(np.float64) / 255.0)


def psnr(original: np.ndarray, recon: np.ndarray) -> float:
    """PSNR (peak 1.0) of the mean per-item MSE: what training.export.measure reports."""
    return float(metrics.psnr_from_mse(mse_unit(original, recon).mean()))


def ssim(original: np.ndarray, recon: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """Per-item SSIM of uint8 images (N, H, W) or (N, 1, H, W), equal to skimage's defaults."""
    x = original.reshape(len(original), *original.shape[-2:]).astype(np.float64)
    y = recon.reshape(len(recon), *recon.shape[-2:]).astype(np.float64)
    size = (1, WIN, WIN)
    f = lambda a: ndimage.uniform_filter(a, size=size, mode="reflect")  # noqa: E731
    ux, uy = f(x), f(y)
    uxx, uyy, uxy = f(x * x), f(y * y), f(x * y)
    norm = WIN * WIN / (WIN * WIN - 1.0)
    vx, vy, vxy = norm * (uxx - ux * ux), norm * (uyy - uy * uy), norm * (uxy - ux * uy)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (WIN - 1) // 2
    return s[:, pad:-pad, pad:-pad].mean(axis=(1, 2))

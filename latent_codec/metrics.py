"""Reconstruction quality on the [0, 1] scale: MSE and PSNR (peak 1.0)."""

from __future__ import annotations

import numpy as np

PSNR_CAP_DB = 100.0  # an exact reconstruction has infinite PSNR; report a finite cap


def psnr_from_mse(mse: np.ndarray | float) -> np.ndarray | float:
    m = np.maximum(np.asarray(mse, dtype=np.float64), 10 ** (-PSNR_CAP_DB / 10))
    out = -10.0 * np.log10(m)
    return float(out) if np.ndim(out) == 0 else out


def per_item_mse(original_unit: np.ndarray, recon_unit: np.ndarray) -> np.ndarray:
    a = np.asarray(original_unit, dtype=np.float64).reshape(len(original_unit), -1)
    b = np.asarray(recon_unit, dtype=np.float64).reshape(len(recon_unit), -1)
    return ((a - b) ** 2).mean(axis=1)

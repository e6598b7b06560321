"""Writing items as image files: one PNG per item under its source name, never over an existing file unless
asked, and the original | reconstruction pictures of ``decode --compare`` and ``evaluate --compare``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from latent_codec.errors import DataError

from .codefile import output_names

GAP = 4  # pixels of white between the original and the reconstruction


def targets(folder: Path, names: Sequence[str], force: bool) -> list[Path]:
    """The PNG path of each item; refuses (before anything is written) to overwrite files unless force."""
    paths = [folder / n for n in output_names(list(names))]
    if not force:
        existing = [p for p in paths if p.exists()]
        if existing:
            more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
            raise DataError(f"{existing[0]} exists{more}; pass --force to overwrite")
    return paths


def save_png(item: np.ndarray, path: Path) -> None:
    """One (C, H, W) uint8 item (C = 1 or 3) as a PNG."""
    from PIL import Image

    if item.dtype != np.uint8:
        raise DataError("PNG output needs uint8 items; write .npy instead")
    img = item[0] if item.shape[0] == 1 else np.moveaxis(item, 0, -1)
    Image.fromarray(np.ascontiguousarray(img)).save(path)


def save_items(
    items: Sequence[np.ndarray], names: Sequence[str], folder: Path, force: bool = False
) -> list[Path]:
    """Each item as folder/<its name's stem>.png; returns the paths written."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = targets(folder, names, force)
    for item, path in zip(items, paths):
        save_png(item, path)
    return paths


def side_by_side(original: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """(C, H, W) original and reconstruction -> one (C, H, 2W + GAP) picture, original on the left."""
    if original.shape != recon.shape:
        raise DataError(f"original is {original.shape} but its reconstruction is {recon.shape}")
    if original.dtype != np.uint8 or recon.dtype != np.uint8:
        raise DataError("pictures need uint8 items (these are float: write .npy instead)")
    c, h, _ = original.shape
    gap = np.full((c, h, GAP), 255, np.uint8)
    return np.concatenate([original.astype(np.uint8), gap, recon.astype(np.uint8)], axis=2)


def save_comparisons(
    originals: Sequence[np.ndarray],
    recons: Sequence[np.ndarray],
    names: Sequence[str],
    folder: Path,
    force: bool,
) -> list[Path]:
    """folder/<name>.png: each original beside its reconstruction."""
    return save_items([side_by_side(o, r) for o, r in zip(originals, recons)], names, folder, force)

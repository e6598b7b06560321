"""Pictures the benchmarks write: rows of images (originals, then each method's reconstructions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def image_grid(rows: list[tuple[str, np.ndarray]], path: Path, dpi: int = 80) -> None:
    """One labelled row per (name, images [N, 1, H, W] in [0, 1]); every row shows the same N items."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rows[0][1])
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.9 + 1.8, len(rows) * 0.9), squeeze=False)
    for i, (name, imgs) in enumerate(rows):
        for j in range(n):
            ax = axes[i][j]
            ax.imshow(imgs[j, 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(left=0.22, right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.05)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)

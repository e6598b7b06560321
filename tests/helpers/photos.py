"""Photographs for tests: stored with an EXIF orientation tag as a phone writes them (the photo path), and big
grey ones built from scikit-image's samples (tiles and strips)."""

from __future__ import annotations

import numpy as np
from PIL import Image

STORE_AS = {
    2: lambda u: u[:, ::-1],  # mirrored
    3: lambda u: u[::-1, ::-1],  # upside down
    4: lambda u: u[::-1, :],
    5: lambda u: np.swapaxes(u, 0, 1),  # transposed
    6: lambda u: np.rot90(u, 1),  # the camera was turned: a viewer turns it back 90 degrees clockwise
    7: lambda u: np.swapaxes(u[::-1, ::-1], 0, 1),  # transverse
    8: lambda u: np.rot90(u, -1),
}


def write_oriented(path, upright: np.ndarray, orientation: int, **save) -> None:
    """Store ``upright`` (H, W, 3) so that a viewer honouring the EXIF tag shows exactly it."""
    stored = np.ascontiguousarray(STORE_AS[orientation](upright)) if orientation != 1 else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, exif=exif, **save)


def photo(h: int, w: int) -> np.ndarray:
    """A grey photograph of h x w (scikit-image's camera and coins side by side, cropped), (1, 1, h, w)."""
    from skimage import data

    cam, coins = data.camera(), data.coins()
    row = np.concatenate(
        [cam, np.pad(coins, ((0, cam.shape[0] - coins.shape[0]), (0, 0)), mode="reflect")], 1
    )
    big = np.tile(row, (-(-h // row.shape[0]), -(-w // row.shape[1])))
    return np.ascontiguousarray(big[None, None, :h, :w])

"""decode: a code file -> items (.npy, or a folder of PNG images), offline (no server)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from latent_codec.codec import Codec
from latent_codec.container import from_batch
from latent_codec.errors import DataError

from ..codefile import read_codes
from ..progress import StepProgress
from . import flags

HELP = "decompress a code file with the bundle's decoder (offline, no server)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    flags.add_bundle(p, "the bundle the code file was written with")
    p.add_argument("--codes", required=True, type=Path, help="a code file written by `edge.cli encode`")
    flags.add_threads(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars for long items")
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="items.npy (N x C x H x W), or a directory for one PNG per item",
    )


def save_images(x: np.ndarray, folder: Path) -> None:
    from PIL import Image

    if x.dtype != np.uint8:
        raise DataError("PNG output needs uint8 items; write .npy instead")
    folder.mkdir(parents=True, exist_ok=True)
    width = len(str(max(len(x) - 1, 0)))
    for i, item in enumerate(x):
        img = item[0] if item.shape[0] == 1 else np.moveaxis(item, 0, -1)
        Image.fromarray(img).save(folder / f"{i:0{width}d}.png")


def run(args: argparse.Namespace) -> int:
    codec = Codec.open(args.bundle, need=("decoder",), threads=args.threads)
    codec.progress = StepProgress(not args.no_progress)
    batch = read_codes(args.codes)
    if batch.bundle_id != codec.bundle_id:
        raise DataError(f"{args.codes} was written with bundle {batch.bundle_id}, not {codec.bundle_id}")
    x = codec.decode(from_batch(codec, batch))
    if args.out.suffix == ".npy":
        np.save(args.out, x)
    else:
        save_images(x, args.out)
    print(f"{len(x)} items ({'x'.join(map(str, x.shape[1:]))}, {x.dtype}) -> {args.out}", file=sys.stderr)
    return 0

"""decode: a code file -> items, offline (no server): one PNG per item named after its source (``name.png``),
at its own size and colour, or one .npy when the items share a size. Existing files are not overwritten
without --force. ``--compare ORIGINALS`` also writes each original beside its reconstruction and its PSNR."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from latent_codec import metrics
from latent_codec.codec import Codec
from latent_codec.container import from_batch
from latent_codec.errors import DataError

from ..codefile import read_codes
from ..images import save_comparisons, save_items, targets
from ..progress import StepProgress
from ..source import load_for
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
        help="a directory for one PNG per item (name.png), or items.npy (N x C x H x W, items of one size)",
    )
    flags.add_force(p)
    p.add_argument(
        "--compare",
        default=None,
        help="the originals (the --data given to encode): write OUT/compare/NAME.png, original | reconstruction, "
        "and print each item's PSNR",
    )
    flags.add_photo_options(p)


def run(args: argparse.Namespace) -> int:
    codec = Codec.open_split(args.bundle, need=("decoder",), threads=args.threads)
    codec.progress = StepProgress(not args.no_progress)
    code_file = read_codes(args.codes)
    batch = code_file.batch
    if batch.bundle_id != codec.bundle_id:
        raise DataError(f"{args.codes} was written with bundle {batch.bundle_id}, not {codec.bundle_id}")
    width = len(str(max(batch.count - 1, 0)))
    names = code_file.names or [f"{i:0{width}d}" for i in range(batch.count)]  # a v2 file: by index
    npy = args.out.suffix == ".npy"
    if npy and args.out.exists() and not args.force:
        raise DataError(f"{args.out} exists; pass --force to overwrite")
    if not npy:
        targets(args.out, names, args.force)  # refuse before decoding anything
    originals = None
    if args.compare is not None:
        originals = load_for(codec, args.compare, grey=args.grey, alpha=args.alpha)
        if originals.names != names:
            raise DataError(
                f"{args.compare} holds {len(originals)} items named {originals.names[:3]}..., but {args.codes} "
                f"holds {len(names)} named {names[:3]}...: pass the data the code file was encoded from"
            )
        targets(args.out / "compare", names, args.force)
    items = codec.decode_each(from_batch(codec, batch))
    if npy:
        if len({x.shape for x in items}) > 1:
            raise DataError(
                "the items have different sizes, so they do not fit one .npy: give a directory for PNGs"
            )
        np.save(args.out, np.stack(items) if items else np.zeros((0, *codec.input.shape), np.uint8))
    else:
        save_items(items, names, args.out, args.force)
    shapes = sorted({"x".join(map(str, x.shape)) for x in items})
    print(
        f"{len(items)} items ({', '.join(shapes[:4])}{'...' if len(shapes) > 4 else ''}) -> {args.out}",
        file=sys.stderr,
    )
    if originals is not None:
        xs = [originals.take([i])[0] for i in range(len(originals))]
        save_comparisons(xs, items, names, args.out / "compare", args.force)
        for name, x, r in zip(names, xs, items):
            mse = float(codec.squared_error(x[None], r[None])[0])
            print(f"{name}\t{metrics.psnr_from_mse(mse):.2f} dB", file=sys.stderr)
        print(f"original | reconstruction pictures -> {args.out / 'compare'}", file=sys.stderr)
    return 0

"""encode: items -> a code file, offline (no server), with the bytes it took.

Items of any mix of sizes (a folder of photographs) are encoded in groups of one size; the code file keeps
each item's source name (edge/codefile.py), so ``decode`` writes ``name.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latent_codec.container import to_batch
from latent_codec.errors import DataError

from ..codefile import write_codes
from ..progress import StepProgress
from ..source import encode_items, open_source
from . import flags

HELP = "compress items to a code file with the bundle's encoder (offline, no server)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    flags.add_bundle(p)
    flags.add_source(p)
    flags.add_threads(p)
    flags.add_rounding(p)
    p.add_argument("--batch-size", type=int, default=256, help="items encoded at once (of one size)")
    p.add_argument("--out", required=True, type=Path, help="the code file to write")
    flags.add_force(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bars for long items")


def run(args: argparse.Namespace) -> int:
    if args.out.exists() and not args.force:
        raise DataError(f"{args.out} exists; pass --force to overwrite")
    codec, items = open_source(
        args.bundle,
        args.data,
        args.split,
        args.limit,
        args.threads,
        grey=args.grey,
        alpha=args.alpha,
        rounding=args.rounding,
    )
    codec.progress = StepProgress(not args.no_progress)
    payloads = encode_items(codec, items, range(len(items)), args.batch_size)
    size = write_codes(args.out, to_batch(codec, payloads), items.names)
    raw = sum(items.pixels(i) * s[0] for i, s in enumerate(items.shapes)) * items.dtype.itemsize
    pixels = sum(items.pixels(i) for i in range(len(items)))
    bpp = 8 * sum(len(p) for p in payloads) / max(pixels, 1)
    print(
        f"{len(items)} items, {raw:,} raw bytes -> {args.out} ({size:,} bytes, {raw / max(size, 1):.1f}:1, "
        f"{bpp:.3f} bits per pixel, bundle {codec.bundle_id}, {codec.format})",
        file=sys.stderr,
    )
    return 0

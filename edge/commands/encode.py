"""encode: items -> a code file, offline (no server), with the bytes it took."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latent_codec import datasets
from latent_codec.codec import Codec
from latent_codec.container import to_batch

from ..codefile import write_codes
from ..progress import StepProgress
from . import flags

HELP = "compress items to a code file with the bundle's encoder (offline, no server)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    flags.add_bundle(p)
    flags.add_source(p)
    flags.add_threads(p)
    p.add_argument("--out", required=True, type=Path, help="the code file to write")
    p.add_argument("--no-progress", action="store_true", help="no progress bars for long items")


def run(args: argparse.Namespace) -> int:
    codec = Codec.open(args.bundle, need=("encoder",), threads=args.threads)
    codec.progress = StepProgress(not args.no_progress)
    ds = datasets.load(args.data, args.split, mode="L" if codec.input.shape[0] == 1 else "RGB")
    x = ds.x[: args.limit] if args.limit else ds.x
    codec.check_items(x)
    size = write_codes(args.out, to_batch(codec, codec.encode(x)))
    print(
        f"{len(x)} items, {x.nbytes:,} raw bytes -> {args.out} ({size:,} bytes, "
        f"{x.nbytes / max(size, 1):.1f}:1, bundle {codec.bundle_id}, {codec.format})",
        file=sys.stderr,
    )
    return 0

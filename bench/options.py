"""Command-line options the training benchmarks share (variants, deep_pca)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_run_options(p: argparse.ArgumentParser, work_dir: str, only: str) -> None:
    """--quant, --threads, --seed, --only, --out-dir, --work-dir."""
    p.add_argument("--quant", default="affine8", help="payload quantiser of the exported bundles")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (the machine is shared: 1 is fastest under load)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", action="append", default=[], help=only)
    p.add_argument("--out-dir", type=Path, default=Path("docs"))
    p.add_argument("--work-dir", type=Path, default=Path(work_dir), help="checkpoints and bundles")

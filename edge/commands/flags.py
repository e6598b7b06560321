"""Flags that several subcommands take, each defined once."""

from __future__ import annotations

import argparse
from pathlib import Path

DATA_HELP = "fashion-mnist | digits | an IDX folder | .npy/.npz | a folder of PNG/JPEG images (any sizes) | one image file"


def add_bundle(
    p: argparse.ArgumentParser, help: str = "bundle directory (manifest.json + ONNX files)"
) -> None:
    p.add_argument("--bundle", required=True, type=Path, help=help)


def add_server(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", default="127.0.0.1:50051", help="cloud address host:port")


def add_source(p: argparse.ArgumentParser) -> None:
    """Where the items come from: --data (alias --data-dir), --split, --limit."""
    p.add_argument("--data", default="fashion-mnist", help=DATA_HELP)
    p.add_argument("--data-dir", dest="data", help="alias of --data")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--limit", type=int, default=0, help="only the first N items")
    add_photo_options(p)


def add_photo_options(p: argparse.ArgumentParser) -> None:
    """How photographs become items: colour to grey and alpha only when asked (latent_codec.datasets.PhotoOptions)."""
    p.add_argument(
        "--grey",
        "--mode-l",
        dest="grey",
        action="store_true",
        help="convert colour images to grey for a grey (1-channel) bundle; without it they are refused",
    )
    p.add_argument(
        "--flatten-alpha",
        dest="alpha",
        choices=["white", "black"],
        default=None,
        help="flatten images with an alpha channel onto this background; without it they are refused",
    )


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads (0 = one per core): a code-map bundle runs a photo's tiles and strips (or groups of items) "
        "on them, other bundles ONNX Runtime's operators; the output is the same for any count",
    )


def add_rounding(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--rounding",
        type=float,
        default=None,
        metavar="KAPPA",
        help="rate-aware rounding strength of a mean-and-scale or checkerboard bundle (latent_codec/"
        "rd_rounding.py; 0 = plain rounding; default: the family's, 0.04 for mean-and-scale, 0.06 for checkerboard); "
        "any value decodes with the same decoder",
    )


def add_force(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true", help="overwrite existing output files")


def add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

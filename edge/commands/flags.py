"""Flags that several subcommands take, each defined once."""

from __future__ import annotations

import argparse
from pathlib import Path

DATA_HELP = "fashion-mnist | digits | an IDX folder | .npy/.npz | a folder of PNG/JPEG images (one size) | one image file"


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


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = default)")


def add_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

"""quarantine: list the items the cloud refused for good (kept in the spool), or requeue them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latent_codec.errors import CodecError

from ..spool import Spool

HELP = "list the items the cloud refused for good, or send them again"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spool", type=Path, default=Path("edge-spool.sqlite"), help="the spool file of `ingest`")
    p.add_argument(
        "--requeue",
        action="store_true",
        help="put them back in the send queue (after fixing the cause); the next `ingest` sends them",
    )


def run(args: argparse.Namespace) -> int:
    """List quarantined items (one line each, with the cloud's reason) or requeue them."""
    if not args.spool.is_file():
        raise CodecError(f"spool not found: {args.spool}")
    spool = Spool(args.spool, max_bytes=1 << 62)  # nothing is added here: no bound to enforce
    try:
        if args.requeue:
            print(
                f"requeued {spool.requeue()} items; run `edge.cli ingest --spool {args.spool}` to send them"
            )
            return 0
        items = spool.quarantined()
        for it in items:
            print(f"{it.item_id}\t{it.bundle_id}\t{it.payload_bytes} B\t{it.reason}")
        print(f"{len(items)} quarantined items in {args.spool}", file=sys.stderr)
    finally:
        spool.close()
    return 0

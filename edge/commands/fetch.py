"""fetch: stored items back out of the cloud, decoded there, one PNG each under the name the device sent
(``IMG_0042.jpg`` -> ``IMG_0042.png``; the item id when it had none), at its own size and colour.

    python -m edge.cli fetch --server cloud:50051 --device-id phone-1 --out restored/

Existing files are not overwritten without --force.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latent_codec.errors import DataError

from ..channel import Security, add_connection_arguments
from ..client import CloudClient
from ..images import save_png, targets
from . import flags

HELP = "fetch stored items from the cloud and write them as PNGs under their source names"


def add_arguments(p: argparse.ArgumentParser) -> None:
    flags.add_server(p)
    p.add_argument("--device-id", default="", help="the device whose items to fetch")
    p.add_argument("--id", dest="item_ids", action="append", default=[], help="an item id (repeatable)")
    p.add_argument("--since-ms", type=int, default=0, help="captured at or after (Unix ms)")
    p.add_argument("--until-ms", type=int, default=0, help="captured before (Unix ms; 0 = no bound)")
    p.add_argument("--limit", type=int, default=0, help="at most N items (0 = the server's default)")
    p.add_argument("--out", required=True, type=Path, help="a directory for one PNG per item")
    flags.add_force(p)
    p.add_argument("--connect-timeout", type=float, default=10.0)
    add_connection_arguments(p)


def run(args: argparse.Namespace) -> int:
    if not args.item_ids and not args.device_id:
        raise DataError("give --device-id (its items) or --id (repeatable)")
    with CloudClient(args.server, Security.from_args(args), args.connect_timeout) as client:
        client.wait_ready()
        got = client.fetch(args.item_ids, args.device_id, args.since_ms, args.until_ms, limit=args.limit)
    failed = [f for f in got if f.item is None]
    ok = [f for f in got if f.item is not None]
    paths = targets(args.out, [f.name or f.item_id for f in ok], args.force)
    args.out.mkdir(parents=True, exist_ok=True)
    for f, path in zip(ok, paths):
        save_png(f.item, path)  # type: ignore[arg-type]
    for f in failed:
        print(f"warning: {f.item_id} not decoded: {f.error}", file=sys.stderr)
    print(
        f"{len(ok)} items -> {args.out}" + (f" ({len(failed)} not decoded)" if failed else ""),
        file=sys.stderr,
    )
    return 2 if failed else 0

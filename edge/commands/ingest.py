"""ingest: spool items and upload them durably; resumes after a crash, retries while offline.

Exit codes: 0 everything acknowledged; 2 stopped by an error (what was not
acknowledged stays spooled); 3 the cloud stayed unreachable for --retry-for
seconds (items stay spooled); 4 everything else acknowledged, some items
quarantined (refused by the cloud for good).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from ..channel import Security
from ..ingest import GaveUp, IngestConfig, IngestStopped
from ..ingest import run as run_ingest
from ..spool import parse_size
from . import flags

HELP = "spool items and upload them durably; resumes after a crash, retries while offline"
_DEFAULTS = {f.name: f.default for f in fields(IngestConfig)}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags are IngestConfig's fields, with its defaults."""
    flags.add_bundle(p)
    flags.add_server(p)
    flags.add_source(p)
    d = _DEFAULTS
    p.add_argument(
        "--spool", type=Path, default=d["spool"], help="the spool file (SQLite); resumed if present"
    )
    p.add_argument("--spool-max-bytes", default="64M", help="size bound of the spool, e.g. 64M, 512k")
    p.add_argument(
        "--device-id", default=None, help="device id (default: generated once and kept in the spool)"
    )
    p.add_argument(
        "--source-id",
        default=None,
        help="names the source in item ids (default: 8 hex digits of a hash of the data source); id = SOURCE#index",
    )
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help="items per IngestRequest")
    p.add_argument(
        "--window", type=int, default=d["window"], help="requests in flight before waiting for acks"
    )
    p.add_argument(
        "--rate", type=float, default=d["rate"], help="take at most N items per second (0 = no limit)"
    )
    p.add_argument(
        "--retry-for",
        type=float,
        default=d["retry_for"],
        help="give up after this many seconds without an acknowledgement (items stay spooled)",
    )
    p.add_argument(
        "--retry-initial", type=float, default=d["retry_initial"], help="first retry delay, seconds"
    )
    p.add_argument("--retry-max", type=float, default=d["retry_max"], help="longest retry delay, seconds")
    p.add_argument(
        "--ack-timeout",
        type=float,
        default=d["ack_timeout"],
        help="treat the stream as broken after this long without an ack while items are in flight",
    )
    p.add_argument(
        "--max-quarantine",
        type=int,
        default=d["max_quarantine"],
        help="items the cloud may refuse for good (set aside in the spool) before the run stops",
    )
    p.add_argument(
        "--audit-fraction",
        type=float,
        default=d["audit_fraction"],
        help="send this fraction of items (0..1, chosen by item id) with their original, so the cloud can "
        "measure the quality it delivers on real data",
    )
    flags.add_threads(p)
    flags.add_rounding(p)
    flags.add_report(p)


def config_from_args(args: argparse.Namespace) -> IngestConfig:
    names = {f.name for f in fields(IngestConfig)} - {"security", "progress", "spool_max_bytes"}
    return IngestConfig(
        **{n: getattr(args, n) for n in names},
        spool_max_bytes=parse_size(args.spool_max_bytes),
        security=Security.from_args(args),
        progress=not args.no_progress,
    )


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    code = 0
    try:
        report = run_ingest(config)
    except IngestStopped as exc:
        report = exc.report
        code = 3 if isinstance(exc, GaveUp) else 2
    print(report.format())
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=1))
    if code:
        print(
            f"error: {report.error}; {report.still_spooled} items stay spooled in {report.spool}",
            file=sys.stderr,
        )
    elif report.quarantined:
        print(
            f"warning: the cloud refused {report.quarantined} items for good; they are kept in {report.spool} "
            f"(list them with `edge.cli quarantine --spool {report.spool}`)",
            file=sys.stderr,
        )
        code = 4
    return code

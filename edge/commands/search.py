"""search: the stored items nearest an item by Hamming distance of their binary codes (semantic hashing).

    python -m edge.cli search --bundle bundles/hash --server 127.0.0.1:50051 --data photo.png
    python -m edge.cli search --bundle bundles/hash --server 127.0.0.1:50051 --data fashion-mnist --index 7 --limit 20
    python -m edge.cli search --bundle bundles/hash --server 127.0.0.1:50051 --code 8f3a00c1 --device cam-7

The query item is encoded here with the bundle's encoder and its payload sent; the cloud thresholds its code
exactly as it did for every stored item (latent_codec/binary_code.py). The bundle must carry binary codes
(training.export --binary-code). Hits are the items of the devices this token may read (or of --device).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from latent_codec import datasets
from latent_codec.bundle import load_bundle
from latent_codec.codec import Codec
from latent_codec.errors import CodecError

from ..channel import Security, add_connection_arguments
from ..client import CloudClient
from . import flags

HELP = "find the stored items nearest an item by their binary codes (semantic hashing)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    flags.add_bundle(p)
    flags.add_server(p)
    p.add_argument("--data", default=None, help="the query item's source: " + flags.DATA_HELP)
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--index", type=int, default=0, help="which item of --data is the query")
    p.add_argument("--code", default=None, help="the query as a binary code in hex (instead of --data)")
    p.add_argument(
        "--device", action="append", default=[], help="search only this device's items (repeatable)"
    )
    p.add_argument("--limit", type=int, default=10, help="how many nearest items")
    flags.add_threads(p)
    p.add_argument("--connect-timeout", type=float, default=10.0)
    p.add_argument("--json", type=Path, default=None, help="also write the hits as JSON here")
    add_connection_arguments(p)


def run(args: argparse.Namespace) -> int:
    if (args.data is None) == (args.code is None):
        raise CodecError("give the query: --data (an item to encode, with --index) or --code (hex)")
    if args.code is not None:
        manifest = load_bundle(args.bundle, need=()).manifest
        bundle_id = manifest.bundle_id
        try:
            code: bytes | None = bytes.fromhex(args.code)
        except ValueError:
            raise CodecError(f"--code {args.code[:40]!r} is not hexadecimal") from None
        payload = None
    else:
        codec = Codec.open_split(args.bundle, need=("encoder",), threads=args.threads)
        ds = datasets.load(args.data, args.split, mode="L" if codec.input.shape[0] == 1 else "RGB")
        if not 0 <= args.index < len(ds.x):
            raise CodecError(f"--index {args.index}: {args.data} has {len(ds.x)} items")
        payload, code = codec.encode(ds.x[args.index : args.index + 1])[0], None
        bundle_id = codec.bundle_id
    t0 = time.perf_counter()
    with CloudClient(args.server, Security.from_args(args), args.connect_timeout) as client:
        hits, searched = client.search(bundle_id, payload, code, args.device, args.limit)
    ms = (time.perf_counter() - t0) * 1000
    print(f"{len(hits)} nearest items ({searched:,} stored codes compared; bundle {bundle_id}, {ms:.0f} ms)")
    print(f"{'rank':>4}  {'distance':>8}  {'device':<20} {'item':<32} captured_at_ms")
    for rank, h in enumerate(hits, 1):
        print(f"{rank:>4}  {h.distance:>8}  {h.device_id[:20]:<20} {h.item_id[:32]:<32} {h.captured_at_ms}")
    if args.json is not None:
        rows = [{k: v for k, v in h.__dict__.items() if k != "payload"} for h in hits]
        args.json.write_text(
            json.dumps({"bundle_id": bundle_id, "searched": searched, "hits": rows}, indent=1) + "\n"
        )
    sys.stdout.flush()
    return 0

"""The edge client.

    python -m edge.cli evaluate --bundle bundles/conv --server 127.0.0.1:50051 --data fashion-mnist

evaluate: encode items with the bundle's encoder (ONNX Runtime), quantise and
pack them per the manifest, send them to the cloud in batches over one
stream, and print what it cost and the quality the cloud measured.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from tqdm import tqdm

from latent_codec import datasets
from latent_codec.errors import CodecError
from latent_codec.tensors import to_tensor
from latent_codec.wire.aecodec.v1 import codec_pb2 as pb

from .client import CloudClient, CloudError, Security, add_connection_arguments
from .encoder import EdgeEncoder
from .report import Report


def load_items(args: argparse.Namespace, encoder: EdgeEncoder) -> datasets.ArrayDataset:
    mode = "L" if encoder.manifest.input.shape[0] == 1 else "RGB"
    ds = datasets.load(args.data, args.split, mode=mode)
    if args.limit:
        ds = datasets.ArrayDataset(ds.x[: args.limit], None, ds.source)
    encoder.check_items(ds.x)
    return ds


def evaluate(args: argparse.Namespace) -> Report:
    encoder = EdgeEncoder(args.bundle, args.threads)
    ds = load_items(args, encoder)
    m = encoder.manifest
    report = Report(encoder.bundle_id, m.payload.format)
    client = CloudClient(args.server, args.connect_timeout, Security.from_args(args))
    t0 = time.perf_counter()
    try:
        client.wait_ready()
        held = client.model_info()
        if encoder.bundle_id not in held:
            raise CloudError(
                f"the cloud at {args.server} does not hold bundle {encoder.bundle_id} "
                f"(it holds: {', '.join(held) or 'none'})"
            )
        n_batches = math.ceil(len(ds) / args.batch_size)
        bar = tqdm(total=len(ds), unit="item", disable=args.no_progress, file=sys.stderr)

        def requests():
            for i in range(n_batches):
                xb = ds.x[i * args.batch_size : (i + 1) * args.batch_size]
                payloads = encoder.encode(xb)
                req = pb.DecodeRequest(
                    codes=encoder.code_batch(payloads),
                    reconstruction_format=pb.RECONSTRUCTION_FORMAT_UINT8
                    if args.keep_reconstructions
                    else pb.RECONSTRUCTION_FORMAT_NONE,
                )
                wire = req.ByteSize()
                if not args.no_evaluate:
                    req.originals.CopyFrom(to_tensor(xb))
                report.items += len(xb)
                report.raw_bytes += int(xb.nbytes)
                report.payload_bytes += sum(len(p) for p in payloads)
                report.wire_bytes += wire
                report.eval_bytes += req.ByteSize() - wire
                yield req

        se = 0.0
        recs = []
        for resp in client.decode_stream(requests(), timeout=args.timeout):
            if resp.HasField("quality"):
                se += sum(resp.quality.mse)
            if args.keep_reconstructions:
                recs.append(resp.reconstructions)
            bar.update(resp.count)
        bar.close()
    finally:
        client.close()
    report.seconds = time.perf_counter() - t0
    if not args.no_evaluate and report.items:
        from latent_codec.metrics import psnr_from_mse

        report.mse = se / report.items
        report.psnr = psnr_from_mse(report.mse)
    if args.keep_reconstructions:
        import numpy as np

        from latent_codec.tensors import from_tensor

        arr = np.concatenate([from_tensor(t, "reconstructions") for t in recs])
        np.save(args.keep_reconstructions, arr)
    return report


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="aecodec-edge", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("evaluate", help="encode items, send them to the cloud, report bytes and quality")
    e.add_argument("--bundle", required=True, type=Path, help="bundle directory (manifest.json + ONNX files)")
    e.add_argument("--server", default="127.0.0.1:50051", help="cloud address host:port")
    e.add_argument(
        "--data",
        default="fashion-mnist",
        help="fashion-mnist | digits | an IDX folder | .npy/.npz | a folder of PNG/JPEG images",
    )
    e.add_argument("--data-dir", dest="data", help="alias of --data")
    e.add_argument("--split", default="test", choices=["train", "test"])
    e.add_argument("--limit", type=int, default=0, help="only the first N items")
    e.add_argument("--batch-size", type=int, default=500)
    e.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (0 = default)")
    e.add_argument("--connect-timeout", type=float, default=10.0)
    e.add_argument("--timeout", type=float, default=None, help="deadline for the whole stream, seconds")
    e.add_argument("--no-evaluate", action="store_true", help="do not send originals; no MSE/PSNR")
    e.add_argument(
        "--keep-reconstructions", type=Path, default=None, help="save reconstructions to this .npy"
    )
    e.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    e.add_argument("--no-progress", action="store_true")
    from .ingest import add_arguments as add_ingest_arguments

    i = sub.add_parser(
        "ingest", help="spool items and upload them durably; resumes after a crash, retries while offline"
    )
    add_ingest_arguments(i)
    for sp in (e, i):
        add_connection_arguments(sp)
    q = sub.add_parser("quarantine", help="list the items the cloud refused for good, or send them again")
    q.add_argument("--spool", type=Path, default=Path("edge-spool.sqlite"), help="the spool file of `ingest`")
    q.add_argument(
        "--requeue",
        action="store_true",
        help="put them back in the send queue (after fixing the cause); the next `ingest` sends them",
    )
    return p.parse_args(argv)


def quarantine(args) -> int:
    """List quarantined items (one line each, with the cloud's reason) or requeue them."""
    from .spool import Spool

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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "evaluate":
            report = evaluate(args)
            print(report.format())
            if args.json:
                args.json.write_text(json.dumps(report.to_dict(), indent=1))
        elif args.command == "ingest":
            from .ingest import main_ingest

            return main_ingest(args)
        elif args.command == "quarantine":
            return quarantine(args)
    except CodecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

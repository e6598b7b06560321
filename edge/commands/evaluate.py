"""evaluate: encode items, send them to the cloud, print what it cost and the quality the cloud measured.

    python -m edge.cli evaluate --bundle bundles/conv --server 127.0.0.1:50051 --data fashion-mnist

Items are encoded with the bundle's codec (latent_codec/codec.py) in batches and sent over one
DecodeStream with their originals, so the cloud reports MSE and PSNR of what it reconstructed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from latent_codec import datasets
from latent_codec.codec import Codec
from latent_codec.container import from_tensor, to_tensor
from latent_codec.metrics import psnr_from_mse
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb

from ..channel import CloudError, Security, add_connection_arguments
from ..client import CloudClient
from . import flags

HELP = "encode items, send them to the cloud, report bytes and quality"


@dataclass
class Report:
    """The numbers a user compares: bytes raw, in payloads and on the wire, and the quality kept."""

    bundle_id: str
    payload_format: str
    items: int = 0
    raw_bytes: int = 0
    payload_bytes: int = 0
    wire_bytes: int = 0  # serialised DecodeRequest messages without the evaluation originals
    eval_bytes: int = 0  # extra bytes of originals sent only to measure quality
    mse: float | None = None
    psnr: float | None = None
    seconds: float = 0.0

    @property
    def ratio_payload(self) -> float:
        return self.raw_bytes / self.payload_bytes if self.payload_bytes else float("inf")

    @property
    def ratio_wire(self) -> float:
        return self.raw_bytes / self.wire_bytes if self.wire_bytes else float("inf")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(ratio_payload=self.ratio_payload, ratio_wire=self.ratio_wire)
        return d

    def format(self) -> str:
        n = max(self.items, 1)
        lines = [
            f"bundle            {self.bundle_id} ({self.payload_format})",
            f"items             {self.items}",
            f"raw bytes         {self.raw_bytes:>12,}  ({self.raw_bytes / n:.1f} per item)",
            f"payload bytes     {self.payload_bytes:>12,}  ({self.payload_bytes / n:.2f} per item)",
            f"wire bytes        {self.wire_bytes:>12,}  ({self.wire_bytes / n:.2f} per item, serialised requests)",
            f"ratio raw/payload {self.ratio_payload:>12.1f}:1",
            f"ratio raw/wire    {self.ratio_wire:>12.1f}:1",
        ]
        if self.mse is not None and self.psnr is not None:
            lines += [
                f"MSE (server)      {self.mse:>12.5f}  (pixels on [0, 1])",
                f"PSNR (server)     {self.psnr:>12.2f} dB",
            ]
        rate = self.items / max(self.seconds, 1e-9)
        lines.append(f"time              {self.seconds:>12.1f} s  ({rate:.0f} items/s)")
        return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    flags.add_bundle(p)
    flags.add_server(p)
    flags.add_source(p)
    p.add_argument("--batch-size", type=int, default=500)
    flags.add_threads(p)
    p.add_argument("--connect-timeout", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=None, help="deadline for the whole stream, seconds")
    p.add_argument("--no-evaluate", action="store_true", help="do not send originals; no MSE/PSNR")
    p.add_argument(
        "--keep-reconstructions", type=Path, default=None, help="save reconstructions to this .npy"
    )
    flags.add_report(p)
    add_connection_arguments(p)


def evaluate(args: argparse.Namespace) -> Report:
    codec = Codec.open(args.bundle, need=("encoder",), threads=args.threads)
    ds = datasets.load(args.data, args.split, mode="L" if codec.input.shape[0] == 1 else "RGB")
    x = ds.x[: args.limit] if args.limit else ds.x
    codec.check_items(x)
    report = Report(codec.bundle_id, codec.format)
    keep = args.keep_reconstructions is not None
    t0 = time.perf_counter()
    with CloudClient(args.server, Security.from_args(args), args.connect_timeout) as client:
        client.wait_ready()
        held = client.model_info()
        if codec.bundle_id not in held:
            raise CloudError(
                f"the cloud at {args.server} does not hold bundle {codec.bundle_id} "
                f"(it holds: {', '.join(held) or 'none'})"
            )
        from tqdm import tqdm

        bar = tqdm(total=len(x), unit="item", disable=args.no_progress, file=sys.stderr)

        def requests() -> Iterator[pb.DecodeRequest]:
            for i in range(math.ceil(len(x) / args.batch_size)):
                xb = x[i * args.batch_size : (i + 1) * args.batch_size]
                payloads = codec.encode(xb)
                req = client.decode_request(codec, payloads, reconstructions=keep)
                wire = req.ByteSize()
                report.items += len(xb)
                report.raw_bytes += int(xb.nbytes)
                report.payload_bytes += sum(len(p) for p in payloads)
                report.wire_bytes += wire
                if not args.no_evaluate:
                    req.originals.CopyFrom(to_tensor(xb))
                    report.eval_bytes += req.ByteSize() - wire
                yield req

        se = 0.0
        recs = []
        for resp in client.decode_stream(requests(), timeout=args.timeout):
            if resp.HasField("quality"):
                se += sum(resp.quality.mse)
            if keep:
                recs.append(from_tensor(resp.reconstructions, "reconstructions"))
            bar.update(resp.count)
        bar.close()
    report.seconds = time.perf_counter() - t0
    if not args.no_evaluate and report.items:
        report.mse = se / report.items
        report.psnr = float(psnr_from_mse(report.mse))
    if keep:
        np.save(args.keep_reconstructions, np.concatenate(recs))
    return report


def run(args: argparse.Namespace) -> int:
    report = evaluate(args)
    print(report.format())
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=1))
    return 0

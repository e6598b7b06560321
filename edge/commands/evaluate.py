"""evaluate: encode items, send them to the cloud, print what it cost and the quality the cloud measured.

    python -m edge.cli evaluate --bundle bundles/conv --server 127.0.0.1:50051 --data fashion-mnist
    python -m edge.cli evaluate --bundle bundles/photo --data photos/ --compare side-by-side/ --json report.json

Items are encoded with the bundle's codec (latent_codec/codec.py) in batches of one size and sent over one
DecodeStream with their originals (requests built by edge/client.py), so the cloud reports MSE and PSNR of
what it reconstructed. The report gives bytes, bits per pixel and quality, and a row per item (its name,
size, bytes, bits per pixel, PSNR); ``--compare DIR`` writes each original beside its reconstruction.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from latent_codec.errors import DataError
from latent_codec.metrics import psnr_from_mse

from ..channel import CloudError, Security, add_connection_arguments
from ..client import CloudClient
from ..images import save_png, side_by_side, targets
from ..source import open_source
from . import flags

MAX_PRINTED_ROWS = 50  # more items: the per-item rows are in --json only

HELP = "encode items, send them to the cloud, report bytes and quality"


@dataclass
class ItemRow:
    """One item of the report: what it cost and the quality kept."""

    name: str
    height: int
    width: int
    channels: int
    payload_bytes: int
    bits_per_pixel: float
    mse: float | None = None
    psnr: float | None = None


@dataclass
class Report:
    """The numbers a user compares: bytes raw, in payloads and on the wire, and the quality kept."""

    bundle_id: str
    payload_format: str
    items: int = 0
    pixels: int = 0  # pixel positions (H x W summed over items; a colour pixel counts once)
    raw_bytes: int = 0
    payload_bytes: int = 0
    wire_bytes: int = 0  # serialised DecodeRequest messages without the evaluation originals
    eval_bytes: int = 0  # extra bytes of originals sent only to measure quality
    mse: float | None = None
    psnr: float | None = None
    seconds: float = 0.0
    rows: list[ItemRow] = field(default_factory=list)

    @property
    def ratio_payload(self) -> float:
        return self.raw_bytes / self.payload_bytes if self.payload_bytes else float("inf")

    @property
    def ratio_wire(self) -> float:
        return self.raw_bytes / self.wire_bytes if self.wire_bytes else float("inf")

    @property
    def bits_per_pixel(self) -> float:
        """Payload bits per pixel position, over all items."""
        return 8 * self.payload_bytes / self.pixels if self.pixels else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(
            ratio_payload=self.ratio_payload, ratio_wire=self.ratio_wire, bits_per_pixel=self.bits_per_pixel
        )
        return d

    def format(self) -> str:
        n = max(self.items, 1)
        lines = [
            f"bundle            {self.bundle_id} ({self.payload_format})",
            f"items             {self.items}",
            f"raw bytes         {self.raw_bytes:>12,}  ({self.raw_bytes / n:.1f} per item)",
            f"payload bytes     {self.payload_bytes:>12,}  ({self.payload_bytes / n:.2f} per item)",
            f"bits per pixel    {self.bits_per_pixel:>12.4f}  (payload bits / {self.pixels:,} pixels)",
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
        if 0 < len(self.rows) <= MAX_PRINTED_ROWS:
            lines += ["", f"{'item':<32} {'size':>11} {'bytes':>9} {'bpp':>8} {'PSNR dB':>8}"]
            for r in self.rows:
                q = f"{r.psnr:8.2f}" if r.psnr is not None else f"{'-':>8}"
                size = f"{r.width}x{r.height}"
                lines.append(
                    f"{r.name[:32]:<32} {size:>11} {r.payload_bytes:>9,} {r.bits_per_pixel:>8.4f} {q}"
                )
        elif self.rows:
            lines.append(f"({len(self.rows)} per-item rows: in --json)")
        return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    flags.add_bundle(p)
    flags.add_server(p)
    flags.add_source(p)
    p.add_argument("--batch-size", type=int, default=500, help="items per request (of one size)")
    flags.add_threads(p)
    flags.add_rounding(p)
    p.add_argument("--connect-timeout", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=None, help="deadline for the whole stream, seconds")
    p.add_argument("--no-evaluate", action="store_true", help="do not send originals; no MSE/PSNR")
    p.add_argument(
        "--keep-reconstructions", type=Path, default=None, help="save reconstructions to this .npy (one size)"
    )
    p.add_argument(
        "--compare",
        type=Path,
        default=None,
        help="write DIR/NAME.png per item: the original beside the cloud's reconstruction",
    )
    flags.add_force(p)
    flags.add_report(p)
    add_connection_arguments(p)


def evaluate(args: argparse.Namespace) -> Report:
    if args.batch_size < 1:
        raise DataError("--batch-size must be at least 1")
    codec, items = open_source(
        args.bundle,
        args.data,
        args.split,
        args.limit,
        args.threads,
        grey=args.grey,
        alpha=args.alpha,
        rounding=args.rounding,
    )
    keep = args.keep_reconstructions is not None
    if keep and not items.uniform:
        raise DataError(
            "--keep-reconstructions writes one .npy, but the items differ in size: use --compare DIR"
        )
    compare_to: list[Path] = []
    if args.compare is not None:
        if items.dtype != np.uint8:
            raise DataError(
                "--compare writes pictures of uint8 items; these are float (use --keep-reconstructions)"
            )
        compare_to = targets(args.compare, items.names, args.force)  # refuse before any work
        args.compare.mkdir(parents=True, exist_ok=True)
    want_recon = keep or args.compare is not None
    report = Report(codec.bundle_id, codec.format)
    groups = items.by_size(list(range(len(items))), args.batch_size)
    recons: dict[int, np.ndarray] = {}
    mse: dict[int, float] = {}
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

        bar = tqdm(total=len(items), unit="item", disable=args.no_progress, file=sys.stderr)
        sizes: dict[int, int] = {}

        def requests() -> Iterator:
            for group in groups:
                xb = items.take(group)
                payloads = codec.encode(xb)
                req = client.decode_request(codec, payloads, reconstructions=want_recon)
                report.wire_bytes += req.ByteSize()
                if not args.no_evaluate:
                    report.eval_bytes += client.attach_originals(req, xb)
                for i, p in zip(group, payloads):
                    sizes[i] = len(p)
                report.items += len(xb)
                report.raw_bytes += int(xb.nbytes)
                report.payload_bytes += sum(len(p) for p in payloads)
                report.pixels += len(xb) * int(xb.shape[2] * xb.shape[3])
                if args.compare is not None:
                    originals[group[0]] = xb  # until its reply is in: in-flight requests only
                yield req

        originals: dict[int, np.ndarray] = {}
        for group, resp in zip(groups, client.decode_stream(requests(), timeout=args.timeout)):
            got = client.decoded(resp)
            if got.mse is not None:
                mse.update(zip(group, got.mse.tolist()))
            if keep and got.items is not None:
                recons.update(zip(group, got.items))
            if args.compare is not None and got.items is not None:
                for i, o, r in zip(group, originals.pop(group[0]), got.items):
                    save_png(side_by_side(o, r), compare_to[i])
            bar.update(resp.count)
        bar.close()
    report.seconds = time.perf_counter() - t0
    for i, name in enumerate(items.names):
        c, h, w = items.shapes[i]
        e = mse.get(i)
        psnr = None if e is None else float(psnr_from_mse(e))
        report.rows.append(ItemRow(name, h, w, c, sizes[i], 8 * sizes[i] / (h * w), e, psnr))
    if not args.no_evaluate and report.items:
        report.mse = sum(mse.values()) / report.items
        report.psnr = float(psnr_from_mse(report.mse))
    if keep:
        np.save(args.keep_reconstructions, np.stack([recons[i] for i in range(len(items))]))
    return report


def run(args: argparse.Namespace) -> int:
    report = evaluate(args)
    print(report.format())
    if args.json:
        args.json.write_text(json.dumps(report.to_dict(), indent=1))
    if args.compare is not None:
        print(f"original | reconstruction pictures -> {args.compare}", file=sys.stderr)
    return 0

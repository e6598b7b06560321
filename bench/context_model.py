"""Mean-and-scale against the checkerboard context, bundle for bundle: real payload bytes, PSNR, and speed.

    python -m bench.context_model --pairs /tmp/ms/spatial-lambda-0.0032:/tmp/cb/spatial-lambda-0.0032 ...

Each pair is two bundles trained with the same transforms, λ and budget, the first ``map+meanscale``, the second
``map+checkerboard`` (docs/context_model.md). Every bundle encodes and decodes the test split through its Codec
(the path edge and cloud run), one thread; the table gives bytes per item, PSNR, the byte change at equal λ, and
the byte change at equal PSNR where the mean-and-scale points bracket the checkerboard's PSNR (log-bytes
interpolated linearly in PSNR between the two nearest mean-and-scale points). A second table splits each
bundle's ideal bits (under its tables) into ẑ, ŷ at the anchor positions (u + v even) and at the others, and,
for the checkerboard, what its non-anchors would cost under the hyper-decoder's parameters alone.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

from latent_codec import datasets, metrics
from latent_codec.codec import Codec
from latent_codec.families.checkerboard import CheckerboardPayload, anchor_mask


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench-context-model", description=__doc__.split("\n")[0])
    p.add_argument("--pairs", nargs="+", required=True, help="MEANSCALE_BUNDLE:CHECKERBOARD_BUNDLE per λ")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--limit", type=int, default=0, help="test items (0 = all)")
    p.add_argument("--batch", type=int, default=1000)
    return p.parse_args(argv)


def measure(bundle: Path, x: np.ndarray, batch: int) -> dict:
    """Bytes per item, PSNR (of the mean MSE) and encode/decode seconds per item, one thread."""
    codec = Codec.open(bundle, threads=1)
    nbytes, se, t_enc, t_dec = 0, 0.0, 0.0, 0.0
    for i in range(0, len(x), batch):
        xb = x[i : i + batch]
        t0 = time.perf_counter()
        payloads = codec.encode(xb)
        t1 = time.perf_counter()
        rec = codec.decode(payloads)
        t2 = time.perf_counter()
        t_enc, t_dec = t_enc + t1 - t0, t_dec + t2 - t1
        nbytes += sum(len(p) for p in payloads)
        se += float(codec.squared_error(xb, rec).sum())
    n = len(x)
    return {
        "format": codec.format,
        "bytes": nbytes / n,
        "psnr": metrics.psnr_from_mse(se / n),
        "enc_ms": 1e3 * t_enc / n,
        "dec_ms": 1e3 * t_dec / n,
    }


def bit_split(bundle: Path, x: np.ndarray) -> dict:
    """Ideal bits per item of ẑ and ŷ, and per element at anchor / non-anchor positions (what the context is for)."""
    codec = Codec.open(bundle, threads=1)
    p = codec.payload
    _, y, z = p.unpack(codec.encode(x))
    logp = p.y_tables.log2_probabilities
    out = {"name": bundle.name, "hyper_only": None}
    if isinstance(p, CheckerboardPayload):
        idx, mu = p.select_all(y, z)
        h_idx, h_mu, _ = p.hyper_pass(y.shape, z)
        half = 1 << (p.grid_bits - 1)
        r = np.clip(np.rint(y.astype(np.float64) - half + mu - h_mu), -half, half - 1) + half  # same ŷ
        out["hyper_only"] = float(-logp[h_idx, r.astype(np.int64)][..., ~anchor_mask(*y.shape[2:])].mean())
    else:
        idx = p.table_indices(y.shape, z)
    bits = -logp[idx, y.astype(np.int64)]
    mask = anchor_mask(*y.shape[2:])
    lz = p.z_tables.log2_probabilities
    z_bits = -lz[np.arange(p.hyper_channels)[None, :, None, None], z.astype(np.int64)]
    out.update(
        y=float(bits.reshape(len(y), -1).sum(1).mean()),
        z=float(z_bits.reshape(len(z), -1).sum(1).mean()),
        anchors=float(bits[..., mask].mean()),
        others=float(bits[..., ~mask].mean()),
    )
    return out


def bytes_at_psnr(points: list[dict], psnr: float) -> float | None:
    """Mean-and-scale's bytes at a PSNR, log-linear between the two points around it; None outside them."""
    pts = sorted(points, key=lambda r: r["psnr"])
    for a, b in zip(pts, pts[1:]):
        if a["psnr"] <= psnr <= b["psnr"] and b["psnr"] > a["psnr"]:
            t = (psnr - a["psnr"]) / (b["psnr"] - a["psnr"])
            return math.exp(math.log(a["bytes"]) + t * (math.log(b["bytes"]) - math.log(a["bytes"])))
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    x = datasets.load(args.data, "test").x
    x = x[: args.limit] if args.limit else x
    rows, splits = [], []
    for pair in args.pairs:
        ms, cb = (Path(s) for s in pair.split(":", 1))
        rows.append((ms.name, measure(ms, x, args.batch), measure(cb, x, args.batch)))
        splits += [bit_split(ms, x), bit_split(cb, x)]
    print(f"{len(x)} test items of {args.data}; one thread; bytes are real payloads")
    print()
    print(
        "| bundle | mean-and-scale B/item | dB | checkerboard B/item | dB | bytes at equal λ "
        "| bytes at equal PSNR | encode ms/item (ms, cb) | decode ms/item (ms, cb) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    ms_points = [r[1] for r in rows]
    for name, a, b in rows:
        same = bytes_at_psnr(ms_points, b["psnr"])
        at_psnr = f"{100 * (b['bytes'] / same - 1):+.1f} %" if same else "outside"
        print(
            f"| {name} | {a['bytes']:.2f} | {a['psnr']:.2f} | {b['bytes']:.2f} | {b['psnr']:.2f} "
            f"| {100 * (b['bytes'] / a['bytes'] - 1):+.1f} % | {at_psnr} "
            f"| {a['enc_ms']:.3f}, {b['enc_ms']:.3f} | {a['dec_ms']:.3f}, {b['dec_ms']:.3f} |"
        )
    print()
    print(
        "| bundle | ẑ bits/item | ŷ bits/item | bits/element, anchors | bits/element, non-anchors "
        "| non-anchors under the hyper-decoder alone |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in splits:
        alone = "" if r["hyper_only"] is None else f"{r['hyper_only']:.3f}"
        print(
            f"| {r['name']} | {r['z']:.1f} | {r['y']:.1f} | {r['anchors']:.3f} | {r['others']:.3f} | {alone} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

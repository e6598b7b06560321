"""Export a trained checkpoint as a model bundle (encoder.onnx, decoder.onnx, manifest.json).

    python -m training.export --checkpoint runs/conv.pt --quant affine8 --out bundles/conv

Fits the code quantiser (and, with --entropy, the factorised prior) on the
training split's codes, checks ONNX Runtime against torch (fails above 1e-4),
measures test quality through the real packing path, and seals the manifest
with the content hash that names the bundle.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from latent_codec import datasets, metrics
from latent_codec.bundle import load_bundle, run_decoder, run_encoder
from latent_codec.entropy import FactorizedPrior
from latent_codec.errors import CodecError
from latent_codec.manifest import DECODER_NAME, ENCODER_NAME, InputSpec, Manifest, write_manifest
from latent_codec.packing import PayloadSpec, SideField
from latent_codec.quantize import Quantizer
from training.data import load_split
from training.onnx_export import export_graphs, parity
from training.train import load_checkpoint

QUANT_CHOICES = ["float32", "float16"] + [f"affine{b}" for b in range(2, 17)] + ["learned", "learned-fit"]


def make_quantizer(name: str, codes: np.ndarray, clip_quantile: float) -> Quantizer:
    if name in ("float16", "float32"):
        return Quantizer(name)
    return Quantizer.fit_affine(codes, int(name.removeprefix("affine")), clip_quantile)


def encode_all(session, x_raw: np.ndarray, side_names: list[str], batch: int = 1000):
    codes, sides = [], {n: [] for n in side_names}
    for i in range(0, len(x_raw), batch):
        c, s = run_encoder(session, datasets.to_unit(x_raw[i : i + batch]), side_names)
        codes.append(c)
        for n in side_names:
            sides[n].append(s[n])
    return np.concatenate(codes), {n: np.concatenate(v) for n, v in sides.items()}


def measure(bundle_dir: Path, x_raw: np.ndarray, batch: int = 1000) -> dict:
    """Quality and bytes of a sealed bundle on items, through load_bundle + packing: the real path."""
    b = load_bundle(bundle_dir)
    m = b.manifest
    side_names = [f.name for f in m.payload.side]
    enc, dec = b.session("encoder"), b.session("decoder")
    se = 0.0
    nbytes = 0
    for i in range(0, len(x_raw), batch):
        xb = x_raw[i : i + batch]
        code, side = run_encoder(enc, datasets.to_unit(xb), side_names)
        payloads = m.payload.pack(code, side)
        nbytes += sum(len(p) for p in payloads)
        z, side2 = m.payload.unpack(payloads)
        rec = np.clip(run_decoder(dec, z, side2, m.code_shape), 0.0, 1.0)
        rec_raw = datasets.from_unit(rec, m.input.dtype)
        se += float(metrics.per_item_mse(datasets.to_unit(xb), datasets.to_unit(rec_raw)).sum())
    mse = se / len(x_raw)
    bpi = nbytes / len(x_raw)
    return {
        "items": int(len(x_raw)),
        "mse": mse,
        "psnr": metrics.psnr_from_mse(mse),
        "bytes_per_item": bpi,
        "raw_bytes_per_item": m.input.raw_bytes,
        "compression_ratio": m.input.raw_bytes / bpi if bpi else float("inf"),
    }


def export_bundle(
    checkpoint: Path,
    out: Path,
    quant: str = "affine8",
    entropy: bool = False,
    fit_items: int = 10000,
    clip_quantile: float = 0.0,
    test_limit: int = 0,
    data: str | None = None,
) -> Manifest:
    model, cfg, record = load_checkpoint(checkpoint)
    data = data or cfg["data"]
    train = load_split(data, "train", fit_items)  # fit_items 0 = the whole training split
    test = load_split(data, "test", test_limit)
    if list(train.item_shape) != list(model.input_shape):
        raise CodecError(
            f"data items are {train.item_shape}, model was trained on {tuple(model.input_shape)}"
        )
    sample = torch.from_numpy(datasets.to_unit(train.x[:8]))
    enc_bytes, dec_bytes = export_graphs(model, sample)
    par = parity(model, enc_bytes, dec_bytes, torch.from_numpy(datasets.to_unit(test.x[:256])))

    # Fit the quantiser (and prior) on training codes as ONNX Runtime computes them.
    import onnxruntime as ort

    side_fields = [SideField.from_dict(f) for f in model.side_fields()]
    side_names = [f.name for f in side_fields]
    sess = ort.InferenceSession(enc_bytes, providers=["CPUExecutionProvider"])
    codes, _ = encode_all(sess, train.x, side_names)
    flat = codes.reshape(len(codes), -1)
    if quant.startswith(
        "learned"
    ):  # rate-distortion checkpoint: integer grid + its learned prior (training/rate.py)
        from training.rate import learned_payload

        if "rate_prior" not in record:
            raise CodecError(f"--quant {quant} needs a checkpoint trained with --rd-lambda > 0")
        q, prior = learned_payload(record["rate_prior"], int(flat.shape[1]))
        if quant == "learned-fit":
            q, prior = learned_payload(record["rate_prior"], int(flat.shape[1]), q.quantize(flat))
    else:
        q = make_quantizer(quant, flat, clip_quantile)
        prior = None
    if entropy and not quant.startswith("learned"):
        if q.kind != "affine" or q.bits > 12:
            raise CodecError("--entropy needs affine quantisation of at most 12 bits")
        prior = FactorizedPrior.fit(q.quantize(flat), q.levels)
    spec = PayloadSpec(q, int(flat.shape[1]), prior, side_fields)
    input_spec = InputSpec(
        shape=list(model.input_shape),
        dtype="uint8" if train.x.dtype == np.uint8 else "float32",
        scale=255.0 if train.x.dtype == np.uint8 else 1.0,
        standardize={"per_pixel": True, "baked_into_graphs": True} if model.standardize else None,
        output=model.output,
        loss=model.loss_name,
    )
    manifest = Manifest(
        model={"name": model.registry_name, "args": model.args},
        input=input_spec,
        code_shape=list(codes.shape[1:]),
        payload=spec,
        training={
            "checkpoint": checkpoint.name,
            "config": cfg,
            "data": record.get("data", {}),
            "final": (record.get("history") or [{}])[-1],
            "quantizer_fit_items": int(len(train)),
            "onnx_parity": par,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    manifest.seal(enc_bytes, dec_bytes)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / ENCODER_NAME).write_bytes(enc_bytes)
    (out / DECODER_NAME).write_bytes(dec_bytes)
    write_manifest(out, manifest)
    # Test metrics through the sealed bundle; metrics are not hashed, so adding them keeps the id.
    manifest.metrics = {"test": {"data": test.source, **measure(out, test.x)}}
    write_manifest(out, manifest)
    return manifest


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="aecodec-export", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="bundle directory to (re)create")
    p.add_argument("--quant", default="affine8", choices=QUANT_CHOICES)
    p.add_argument("--entropy", action="store_true", help="entropy-code the symbols (factorised prior + ANS)")
    p.add_argument(
        "--clip-quantile", type=float, default=0.0, help="ignore this outlier fraction when fitting ranges"
    )
    p.add_argument("--fit-items", type=int, default=10000, help="training items used to fit the quantiser")
    p.add_argument(
        "--test-limit", type=int, default=0, help="measure test metrics on the first N items (0 = all)"
    )
    p.add_argument("--data", default=None, help="override the checkpoint's data spec")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        m = export_bundle(
            args.checkpoint,
            args.out,
            args.quant,
            args.entropy,
            args.fit_items,
            args.clip_quantile,
            args.test_limit,
            args.data,
        )
    except CodecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    t = m.metrics["test"]
    par = m.training["onnx_parity"]
    print(f"bundle {m.bundle_id} -> {args.out}")
    print(
        f"  ONNX parity: encoder {par['encoder_max_abs_diff']:.1e}, decoder {par['decoder_max_abs_diff']:.1e} (<= 1e-4)"
    )
    print(
        f"  test ({t['items']} items): PSNR {t['psnr']:.2f} dB, MSE {t['mse']:.5f}, "
        f"{t['bytes_per_item']:.1f} bytes/item, ratio {t['compression_ratio']:.1f}:1 ({m.payload.format})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

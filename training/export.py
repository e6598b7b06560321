"""Export a trained checkpoint as a model bundle (encoder.onnx, decoder.onnx, manifest.json).

    python -m training.export --checkpoint runs/conv.pt --quant affine8 --out bundles/conv

Fits the code quantiser (and, with --entropy, the factorised prior) on the
training split's codes, checks ONNX Runtime against torch (fails above 1e-4),
measures test quality through the real packing path, and seals the manifest
with the content hash that names the bundle.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from latent_codec import metrics
from latent_codec.binary_code import BinaryCode
from latent_codec.bundle import DECODER_NAME, ENCODER_NAME, MANIFEST_NAME, InputSpec, Manifest, write_manifest
from latent_codec.codec import Codec, OnnxTransforms
from latent_codec.errors import CodecError
from latent_codec.payload import FactorizedPrior, PayloadSpec, Quantizer, SideField
from training.data import load_split
from training.onnx_export import (
    WEIGHT_DTYPES,
    export_graphs,
    parity,
    round_weights_to_float16,
    store_weights_as_float16,
)
from training.train import load_checkpoint

QUANT_CHOICES = ["float32", "float16"] + [f"affine{b}" for b in range(2, 17)] + ["learned", "learned-fit"]


def make_quantizer(name: str, codes: np.ndarray, clip_quantile: float) -> Quantizer:
    if name in ("float16", "float32"):
        return Quantizer(name)
    return Quantizer.fit_affine(codes, int(name.removeprefix("affine")), clip_quantile)


def training_codes(codec: Codec, x_raw: np.ndarray, batch: int = 1000) -> np.ndarray:
    """(N, D) codes of raw items as ONNX Runtime computes them: scale + analyse, the codec's first two steps."""
    return np.concatenate(
        [codec.analyse(codec.scale(x_raw[i : i + batch]))[0] for i in range(0, len(x_raw), batch)]
    )


def measure(bundle_dir: Path, x_raw: np.ndarray, batch: int = 1000) -> dict:
    """Quality and bytes of a sealed bundle on items, through its Codec: the path edge and cloud run."""
    return measure_codec(Codec.open(bundle_dir), x_raw, batch)


def measure_codec(codec: Codec, x_raw: np.ndarray, batch: int = 1000) -> dict:
    """Quality and bytes of any Codec (a bundle's, or FunctionTransforms around e.g. PCA) on raw items."""
    se = 0.0
    nbytes = 0
    for i in range(0, len(x_raw), batch):
        xb = x_raw[i : i + batch]
        payloads = codec.encode(xb)
        nbytes += sum(len(p) for p in payloads)
        se += float(codec.squared_error(xb, codec.decode(payloads)).sum())
    mse = se / len(x_raw)
    bpi = nbytes / len(x_raw)
    raw = codec.input.raw_bytes
    return {
        "items": int(len(x_raw)),
        "mse": mse,
        "psnr": metrics.psnr_from_mse(mse),
        "bytes_per_item": bpi,
        "raw_bytes_per_item": raw,
        "compression_ratio": raw / bpi if bpi else float("inf"),
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
    force: bool = False,
    weights: str = "float32",
    binary_code: bool = False,
) -> Manifest:
    model, cfg, record = load_checkpoint(checkpoint)
    data = data or cfg["data"]
    if weights not in WEIGHT_DTYPES:
        raise CodecError(f"--weights must be one of {WEIGHT_DTYPES}, got {weights!r}")
    if (
        weights == "float16"
    ):  # torch then computes what the float16-weight graphs compute (parity stays exact)
        round_weights_to_float16(model)
    if hasattr(model, "init_priors") and binary_code:
        raise CodecError("--binary-code is for flat codes; a spatial bundle's code map has none")
    if hasattr(
        model, "init_priors"
    ):  # spatial code maps: their own entropy model and payload (export_map.py)
        from training.export_map import export_map_bundle

        return export_map_bundle(
            model, cfg, record, checkpoint, out, data, fit_items, test_limit, force, weights
        )
    train = load_split(data, "train", fit_items)  # fit_items 0 = the whole training split
    test = load_split(data, "test", test_limit)
    if list(train.item_shape) != list(model.input_shape):
        raise CodecError(
            f"data items are {train.item_shape}, model was trained on {tuple(model.input_shape)}"
        )
    check_out(out, force)
    input_spec = InputSpec.of_items(
        train.x,
        standardize={"per_pixel": True, "baked_into_graphs": True} if model.standardize else None,
        output=model.output,
        loss=model.loss_name,
    )
    sample = torch.from_numpy(input_spec.to_unit(train.x[:8]))
    enc_bytes, dec_bytes = export_graphs(model, sample)
    if weights == "float16":
        enc_bytes, dec_bytes = store_weights_as_float16(enc_bytes), store_weights_as_float16(dec_bytes)
    par = parity(model, enc_bytes, dec_bytes, torch.from_numpy(input_spec.to_unit(test.x[:256])))

    # Fit the quantiser (and prior) on training codes as ONNX Runtime computes them, through the codec's own
    # first steps; the payload spec is a placeholder until it is fitted.
    side_fields = [SideField.from_dict(f) for f in model.side_fields()]
    code_shape = list(model.code_shape)
    dims = int(np.prod(code_shape))
    transforms = OnnxTransforms.from_graphs(enc_bytes, None, [f.name for f in side_fields], code_shape)
    fitting = Codec(
        input_spec, code_shape, PayloadSpec(Quantizer("float32"), dims, None, side_fields), transforms
    )
    flat = training_codes(fitting, train.x)
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
    spec = PayloadSpec(q, dims, prior, side_fields)
    manifest = new_manifest(
        model, input_spec, code_shape, spec, checkpoint, cfg, record, len(train), par, weights
    )
    if binary_code:
        manifest.binary_code = binary_thresholds(model, q.dequantize(q.quantize(flat)))
    manifest.seal(enc_bytes, dec_bytes)
    write_bundle(out, manifest, enc_bytes, dec_bytes, test, force)
    return manifest


def binary_thresholds(model, codes: np.ndarray) -> BinaryCode:
    """Semantic hashing's thresholds: 0.5 for a sigmoid code (trained towards 0/1 with code_noise), else each
    dimension's median on the training codes as the payload carries them (one bit per dimension, half the items 1)."""
    if model.args.get("code_activation") == "sigmoid":
        return BinaryCode(tuple(0.5 for _ in range(codes.shape[1])))
    return BinaryCode(tuple(float(v) for v in np.median(codes, axis=0)))


def new_manifest(
    model, input_spec: InputSpec, code_shape, payload, checkpoint: Path, cfg: dict, record: dict, fit_items: int,
    parity_report: dict, weights: str,
) -> Manifest:  # fmt: skip
    """The manifest of an export (flat or map payload), before sealing."""
    return Manifest(
        model={"name": model.registry_name, "args": model.args},
        input=input_spec,
        code_shape=list(code_shape),
        payload=payload,
        training={
            "checkpoint": checkpoint.name,
            "config": cfg,
            "data": record.get("data", {}),
            "final": (record.get("history") or [{}])[-1],
            "quantizer_fit_items": int(fit_items),
            "onnx_parity": parity_report,
            "weights": weights,
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )


def write_bundle(
    out: Path, manifest: Manifest, enc_bytes: bytes, dec_bytes: bytes, test, force: bool
) -> None:
    """Write the sealed bundle beside --out, measure it on the test items through its codec, then move it in."""
    tmp = out.parent / f".{out.name}.exporting-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        (tmp / ENCODER_NAME).write_bytes(enc_bytes)
        (tmp / DECODER_NAME).write_bytes(dec_bytes)
        write_manifest(tmp, manifest)
        # Test metrics through the sealed bundle; metrics are not hashed, so adding them keeps the id.
        manifest.metrics = {"test": {"data": test.source, **measure(tmp, test.x)}}
        write_manifest(tmp, manifest)
        check_out(out, force)  # again: something may have appeared there meanwhile
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


BUNDLE_FILES = {ENCODER_NAME, DECODER_NAME, MANIFEST_NAME}


def check_out(out: Path, force: bool) -> None:
    """Export replaces a bundle (or an empty directory) at --out, never anything else unless forced."""
    if not out.exists() or force:
        if out.exists() and not out.is_dir():
            raise CodecError(f"--out {out} exists and is not a directory")
        return
    if not out.is_dir():
        raise CodecError(f"--out {out} exists and is not a directory; pick another path")
    entries = sorted(p.name for p in out.iterdir())
    if entries and not (MANIFEST_NAME in entries and set(entries) <= BUNDLE_FILES):
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        raise CodecError(
            f"--out {out} is a directory that is not a bundle ({len(entries)} entries: {shown}); "
            f"export replaces only a bundle directory: pick another path, or pass --force to replace it"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="aecodec-export", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        help="bundle directory to create (an existing bundle there is replaced)",
    )
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
    p.add_argument(
        "--weights",
        default="float32",
        choices=WEIGHT_DTYPES,
        help="how the graphs store their weights: float16 halves the bundle (weights rounded to float16 first)",
    )
    p.add_argument(
        "--binary-code",
        action="store_true",
        help="semantic hashing: record per-dimension thresholds (0.5 for sigmoid codes, else the training median) so "
        "the cloud stores each item's binary code and can search by Hamming distance",
    )
    p.add_argument(
        "--force", action="store_true", help="replace --out even when it is a directory that is not a bundle"
    )
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
            force=args.force,
            weights=args.weights,
            binary_code=args.binary_code,
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

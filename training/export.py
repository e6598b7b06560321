"""Export a trained checkpoint as a model bundle (encoder.onnx, decoder.onnx, manifest.json).

    python -m training.export --checkpoint runs/conv.pt --quant affine8 --out bundles/conv

The model's codec family picks the exporter (training/exporters.py: training/export_flat.py for flat
codes, training/export_map.py for code maps). Every exporter checks ONNX Runtime against torch (fails
above 1e-4), fits the payload on the training split, measures test quality through the real codec, and
seals the manifest with the content hash that names the bundle (training/bundle_writer.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latent_codec.bundle import Manifest
from latent_codec.errors import CodecError
from training import export_flat, export_map  # noqa: F401  (register the built-in exporters)
from training.exporters import ExportJob, exporter_for
from training.onnx_export import WEIGHT_DTYPES, round_weights_to_float16
from training.train import load_checkpoint

QUANT_CHOICES = ["float32", "float16"] + [f"affine{b}" for b in range(2, 17)] + ["learned", "learned-fit"]


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
    """Load the checkpoint and hand it to its family's exporter; -> the sealed manifest."""
    model, cfg, record = load_checkpoint(checkpoint)
    if binary_code and getattr(model, "codec_family", "flat") != "flat":
        raise CodecError("--binary-code is for flat codes; a spatial bundle's code map has none")
    if weights not in WEIGHT_DTYPES:
        raise CodecError(f"--weights must be one of {WEIGHT_DTYPES}, got {weights!r}")
    if (
        weights == "float16"
    ):  # torch then computes what the float16-weight graphs compute (parity stays exact)
        round_weights_to_float16(model)
    job = ExportJob(
        model=model,
        cfg=cfg,
        record=record,
        checkpoint=Path(checkpoint),
        out=Path(out),
        data=data or cfg["data"],
        quant=quant,
        entropy=entropy,
        fit_items=fit_items,
        clip_quantile=clip_quantile,
        test_limit=test_limit,
        force=force,
        weights=weights,
        binary_code=binary_code,
    )
    return exporter_for(model)(job)


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

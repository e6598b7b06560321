"""What every exporter shares: the manifest of an export, the atomic write of a sealed bundle, its measurement.

A bundle is written beside --out, measured on the test items through its own codec (the path the edge and
the cloud run), and only then moved into place; --out is replaced only when it holds a bundle.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np

from latent_codec import metrics
from latent_codec.bundle import DECODER_NAME, ENCODER_NAME, MANIFEST_NAME, InputSpec, Manifest, write_manifest
from latent_codec.codec import Codec
from latent_codec.errors import CodecError
from training.exporters import ExportJob


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


def new_manifest(
    job: ExportJob, input_spec: InputSpec, code_shape, payload, fit_items: int, parity_report: dict
) -> Manifest:
    """The manifest of an export (any family's payload), before sealing."""
    return Manifest(
        model={"name": job.model.registry_name, "args": job.model.args},
        input=input_spec,
        code_shape=list(code_shape),
        payload=payload,
        training={
            "checkpoint": job.checkpoint.name,
            "config": job.cfg,
            "data": job.record.get("data", {}),
            "final": (job.record.get("history") or [{}])[-1],
            "quantizer_fit_items": int(fit_items),
            "quant": job.quant,
            "onnx_parity": parity_report,
            "weights": job.weights,
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

"""Export a flat-code checkpoint (dense, conv, linear, vq, ... models): fixed-shape graphs and a fitted quantiser.

Fits the code quantiser (and, with --entropy, the factorised prior; with --quant learned, the integer grid
and prior learned with the rate term) on the training split's codes as ONNX Runtime computes them, through
the codec's own first steps.
"""

from __future__ import annotations

import numpy as np
import torch

from latent_codec.binary_code import BinaryCode
from latent_codec.bundle import InputSpec, Manifest
from latent_codec.errors import CodecError
from latent_codec.factorized_prior import FactorizedPrior
from latent_codec.families.flat import FlatCodec, FlatPayload, SideField
from latent_codec.quantisation import Quantiser
from latent_codec.transforms import OnnxTransforms
from training.bundle_writer import check_out, new_manifest, training_codes, write_bundle
from training.data import load_split
from training.exporters import ExportJob, register_exporter
from training.onnx_export import export_graphs, parity, store_weights_as_float16


def make_quantiser(name: str, codes: np.ndarray, clip_quantile: float) -> Quantiser:
    if name in ("float16", "float32"):
        return Quantiser(name)
    return Quantiser.fit_affine(codes, int(name.removeprefix("affine")), clip_quantile)


def binary_thresholds(model, codes: np.ndarray) -> BinaryCode:
    """Semantic hashing's thresholds: 0.5 for a sigmoid code (trained towards 0/1 with code_noise), else each
    dimension's median on the training codes as the payload carries them (one bit per dimension, half the items 1)."""
    if model.args.get("code_activation") == "sigmoid":
        return BinaryCode(tuple(0.5 for _ in range(codes.shape[1])))
    return BinaryCode(tuple(float(v) for v in np.median(codes, axis=0)))


@register_exporter("flat")
def export_flat(job: ExportJob) -> Manifest:
    model = job.model
    train = load_split(job.data, "train", job.fit_items)  # fit_items 0 = the whole training split
    test = load_split(job.data, "test", job.test_limit)
    if list(train.item_shape) != list(model.input_shape):
        raise CodecError(
            f"data items are {train.item_shape}, model was trained on {tuple(model.input_shape)}"
        )
    check_out(job.out, job.force)
    input_spec = InputSpec.of_items(
        train.x,
        standardize={"per_pixel": True, "baked_into_graphs": True} if model.standardize else None,
        output=model.output,
        loss=model.loss_name,
    )
    sample = torch.from_numpy(input_spec.to_unit(train.x[:8]))
    enc_bytes, dec_bytes = export_graphs(model, sample)
    if job.weights == "float16":
        enc_bytes, dec_bytes = store_weights_as_float16(enc_bytes), store_weights_as_float16(dec_bytes)
    par = parity(model, enc_bytes, dec_bytes, torch.from_numpy(input_spec.to_unit(test.x[:256])))

    # Fit on training codes as ONNX Runtime computes them; the payload is a placeholder until it is fitted.
    side_fields = [SideField.from_dict(f) for f in model.side_fields()]
    code_shape = list(model.code_shape)
    dims = int(np.prod(code_shape))
    transforms = OnnxTransforms.from_graphs(enc_bytes, None, [f.name for f in side_fields], code_shape)
    fitting = FlatCodec(
        input_spec, code_shape, FlatPayload(Quantiser("float32"), dims, None, side_fields), transforms
    )
    flat = training_codes(fitting, train.x)
    quant = job.quant
    prior = None
    if quant.startswith(
        "learned"
    ):  # rate-distortion checkpoint: integer grid + its learned prior (training/rate.py)
        from training.rate import learned_payload

        if "rate_prior" not in job.record:
            raise CodecError(f"--quant {quant} needs a checkpoint trained with --rd-lambda > 0")
        q, prior = learned_payload(job.record["rate_prior"], int(flat.shape[1]))
        if quant == "learned-fit":
            q, prior = learned_payload(job.record["rate_prior"], int(flat.shape[1]), q.quantise(flat))
    else:
        q = make_quantiser(quant, flat, job.clip_quantile)
    if job.entropy and not quant.startswith("learned"):
        if q.kind != "affine" or q.bits > 12:
            raise CodecError("--entropy needs affine quantisation of at most 12 bits")
        prior = FactorizedPrior.fit(q.quantise(flat), q.levels)
    payload = FlatPayload(q, dims, prior, side_fields)
    manifest = new_manifest(job, input_spec, code_shape, payload, len(train), par)
    if job.binary_code:
        manifest.binary_code = binary_thresholds(model, q.dequantise(q.quantise(flat)))
    manifest.seal(enc_bytes, dec_bytes)
    write_bundle(job.out, manifest, enc_bytes, dec_bytes, test, job.force)
    return manifest

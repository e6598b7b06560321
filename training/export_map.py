"""Export a spatial (code-map) checkpoint: dynamic-size ONNX graphs and the map payload's integer tables.

Registered for the "map" codec family (training/exporters.py). The tables:
- ŷ grid: the fewest bits whose integer range holds the rounded training codes (≤ 12);
- "factorized": the learned per-channel prior tabulated on that grid;
- "hyperprior": Gaussian tables for the 64 scales of training/models/spatial.py's scale table, the
  learned per-channel prior of ẑ, and the hyper-decoder h_s as integers (IntegerHyperDecoder);
- "meanscale": the same with h_s's 2M outputs (means, then log σ) as integers, and the grid fitted on the
  residuals y - μ, μ from that integer hyper-decoder (latent_codec/families/mean_scale.py);
- "checkerboard": "meanscale" plus the context of the non-anchors as integers (IntegerContext: the masked 5x5
  convolution and the 1x1 layers, same fixed point), the grid fitted on the residuals of both colours as the
  codec computes them (latent_codec/families/checkerboard.py).
"""

from __future__ import annotations

import numpy as np
import torch

from latent_codec.bundle import InputSpec, Manifest
from latent_codec.errors import CodecError
from latent_codec.factorized_prior import FactorizedPrior
from latent_codec.families.checkerboard import CheckerboardPayload, IntegerContext
from latent_codec.families.code_map import MapCodec, MapPayload
from latent_codec.families.hyper_decoder import IntegerHyperDecoder
from latent_codec.families.mean_scale import MeanScalePayload
from latent_codec.transforms import OnnxTransforms
from training.bundle_writer import check_out, new_manifest, write_bundle
from training.data import load_split
from training.exporters import ExportJob, register_exporter
from training.models.spatial import (
    CONTEXT_FRAC_BITS,
    HYPER_ENTROPY,
    log_scale_thresholds,
    scale_table,
)
from training.onnx_export import export_map_graphs, map_parity, store_weights_as_float16
from training.rate import MAX_GRID_BITS, grid_bits

HYPER_FRAC_BITS = (
    CONTEXT_FRAC_BITS  # the integer hyper-decoder's fixed point (weights x 1024), shared by the context
)


@register_exporter("map")
def export_map(job: ExportJob) -> Manifest:
    model, data, out, force, weights = job.model, job.data, job.out, job.force, job.weights
    train = load_split(data, "train", job.fit_items)
    test = load_split(data, "test", job.test_limit)

    if train.item_shape[0] != model.input_shape[0]:
        raise CodecError(
            f"data items have {train.item_shape[0]} channels, model was trained on {model.input_shape[0]}"
        )
    check_out(out, force)
    input_spec = InputSpec.of_items(train.x, output=model.output, loss=model.loss_name)
    input_spec.any_size = True
    x0 = input_spec.to_unit(train.x[:8])
    codec0 = MapCodec(input_spec, model.code_shape, _placeholder(model), OnnxTransforms(None, None, [], []))
    sample = torch.from_numpy(codec0.pad(x0))
    enc_bytes, dec_bytes = export_map_graphs(model, sample)
    if weights == "float16":  # the weights were rounded to float16 by export_bundle
        enc_bytes, dec_bytes = store_weights_as_float16(enc_bytes), store_weights_as_float16(dec_bytes)
    odd = input_spec.to_unit(test.x[:16])[:, :, :13, :22]  # a size that is not a multiple of the stride
    par = map_parity(
        model,
        enc_bytes,
        dec_bytes,
        [torch.from_numpy(codec0.pad(input_spec.to_unit(test.x[:64]))), torch.from_numpy(codec0.pad(odd))],
    )

    # The grids: rounded training codes as ONNX Runtime computes them.
    hyper = model.entropy in HYPER_ENTROPY
    transforms = OnnxTransforms.from_graphs(enc_bytes, None, ["hyper"] if hyper else [], model.code_shape)
    fitting = MapCodec(input_spec, model.code_shape, _placeholder(model), transforms)
    ys, zs = [], []
    for i in range(0, len(train.x), 1000):
        y, side = fitting.analyse(fitting.scale(train.x[i : i + 1000]))
        ys.append(y)
        if hyper:
            zs.append(side["hyper"])
    m = model.args["code_channels"]
    with torch.no_grad():
        if not hyper:
            yb = grid_bits(torch.from_numpy(np.concatenate(ys)))
            lo, hi = -(1 << (yb - 1)), (1 << (yb - 1)) - 1
            probs = model.y_prior.table(lo, hi).numpy()
            payload = MapPayload("factorized", m, model.stride, yb, FactorizedPrior.from_probabilities(probs))
        else:
            zb = grid_bits(torch.from_numpy(np.concatenate(zs)))
            zlo, zhi = -(1 << (zb - 1)), (1 << (zb - 1)) - 1
            h1, h2 = model.h_s[0], model.h_s[2]
            decoder = IntegerHyperDecoder.from_float(
                h1.weight.numpy(),
                h1.bias.numpy(),
                h2.weight.numpy(),
                h2.bias.numpy(),
                log_scale_thresholds(),
                HYPER_FRAC_BITS,
            )
            cls = {"meanscale": MeanScalePayload, "checkerboard": CheckerboardPayload}.get(
                model.entropy, MapPayload
            )
            z_tables = FactorizedPrior.from_probabilities(model.z_prior.table(zlo, zhi).numpy())
            context = _integer_context(model) if model.entropy == "checkerboard" else None

            def make(yb: int) -> MapPayload:
                tables = FactorizedPrior.gaussian(scale_table(), yb)
                args = (model.entropy, m, model.stride, yb, tables, model.args["hyper_channels"], 2, zb)
                if context is not None:
                    return CheckerboardPayload(*args, z_tables, decoder, context=context)
                return cls(*args, z_tables, decoder)

            if cls is CheckerboardPayload:  # the residuals of both colours, as the codec computes them
                probe_cb = make(MAX_GRID_BITS)
                assert isinstance(probe_cb, CheckerboardPayload)
                residuals = []
                for y, z in zip(ys, zs):
                    z_sym = probe_cb.z_symbols(z)
                    residuals.append(y - probe_cb.means_of(probe_cb.encode_symbols(y, z_sym), z_sym))
                payload = make(grid_bits(torch.from_numpy(np.concatenate(residuals))))
            elif (
                cls is MeanScalePayload
            ):  # the grid holds the residuals y - μ, μ from the integer hyper-decoder
                probe = make(MAX_GRID_BITS)
                assert isinstance(probe, MeanScalePayload)
                residuals = [y - probe.means(y.shape, probe.z_symbols(z)) for y, z in zip(ys, zs)]
                payload = make(grid_bits(torch.from_numpy(np.concatenate(residuals))))
            else:
                payload = make(grid_bits(torch.from_numpy(np.concatenate(ys))))
    payload.nominal_size = (int(input_spec.shape[1]), int(input_spec.shape[2]))  # the one-byte size header
    manifest = new_manifest(job, input_spec, model.code_shape, payload, len(train), par)
    manifest.seal(enc_bytes, dec_bytes)
    write_bundle(out, manifest, enc_bytes, dec_bytes, test, force)
    return manifest


def _integer_context(model) -> IntegerContext:
    """The checkerboard context of a trained model as integers: the masked convolution, then the 1x1 layers."""
    convs = [layer for layer in model.params_net if isinstance(layer, torch.nn.Conv2d)]
    return IntegerContext.from_float(
        model.context_weight().detach().numpy(),
        model.context.bias.detach().numpy(),
        [(c.weight.detach().numpy(), c.bias.detach().numpy()) for c in convs],
        CONTEXT_FRAC_BITS,
    )


def _placeholder(model) -> MapPayload:
    """A payload spec good enough for padding and analysis before the tables exist."""
    return MapPayload(
        "factorized",
        model.args["code_channels"],
        model.stride,
        2,
        FactorizedPrior(np.full((model.args["code_channels"], 4), 1 << 14, np.int64)),
    )

"""torch -> ONNX for the encoder and decoder graphs, and the parity check against ONNX Runtime."""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np
import torch

from latent_codec.errors import CodecError
from training.models.base import Autoencoder, DecoderGraph, EncoderGraph

OPSET = 18
PARITY_TOLERANCE = 1e-4
# Integer side outputs (max-pooling switches) are argmaxes: where two values in a window are equal up
# to float noise, torch's and ORT's convolutions (~1e-7 apart) can pick different positions. Such
# near-ties are rare and harmless (the payload carries ORT's switches, and the decoder is checked on
# identical inputs); a real bug, e.g. a wrong index conversion, mismatches a large fraction.
SIDE_MISMATCH_FRACTION = 1e-4


def _export(
    module: torch.nn.Module,
    args: tuple,
    input_names: list[str],
    output_names: list[str],
    varargs_tail: bool = False,
) -> bytes:
    """Export with a dynamic batch dimension; returns the serialized ModelProto.

    varargs_tail: forward(first, *rest) -- torch.export binds *rest as one tuple argument, so its
    dynamic shapes must be nested the same way (the decoder with side inputs, e.g. switches).
    """
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    dynamic = {name: {0: batch} for name in input_names}
    shapes = tuple(dynamic[n] for n in input_names)
    if varargs_tail:
        shapes = (shapes[0], shapes[1:])
    buf = io.BytesIO()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed" noise
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            module,
            args,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=shapes,
            dynamo=True,
            opset_version=OPSET,
            verbose=False,
            optimize=True,
        )
    prog.save(buf) if hasattr(prog, "save") else None
    data = buf.getvalue()
    if not data:
        data = prog.model_proto.SerializeToString()
    return data


def export_graphs(model: Autoencoder, sample: torch.Tensor) -> tuple[bytes, bytes]:
    """-> (encoder.onnx bytes, decoder.onnx bytes) for a model in eval mode."""
    model.eval()
    side_names = [f["name"] for f in model.side_fields()]
    enc = EncoderGraph(model)
    dec = DecoderGraph(model)
    with torch.no_grad():
        outs = enc(sample)
    outs = outs if isinstance(outs, tuple) else (outs,)
    enc_bytes = _export(enc, (sample,), ["x"], ["code", *side_names])
    dec_bytes = _export(dec, tuple(outs), ["code", *side_names], ["x_hat"], varargs_tail=bool(side_names))
    return enc_bytes, dec_bytes


def parity(model: Autoencoder, enc_bytes: bytes, dec_bytes: bytes, x: torch.Tensor) -> dict:
    """Max |torch - ORT| for code and reconstruction; raises CodecError above tolerance."""
    import onnxruntime as ort

    side_names = [f["name"] for f in model.side_fields()]
    with torch.no_grad():
        t_out = EncoderGraph(model)(x)
        t_out = t_out if isinstance(t_out, tuple) else (t_out,)
        t_rec = DecoderGraph(model)(*t_out)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    es = ort.InferenceSession(enc_bytes, opts, providers=["CPUExecutionProvider"])
    ds = ort.InferenceSession(dec_bytes, opts, providers=["CPUExecutionProvider"])
    o_out = es.run(None, {"x": x.numpy()})
    feeds = {"code": t_out[0].numpy(), **{n: t.numpy() for n, t in zip(side_names, t_out[1:])}}
    o_rec = ds.run(None, feeds)[0]
    code_err = float(np.abs(o_out[0] - t_out[0].numpy()).max())
    side_mismatch = int(sum(int((a != b.numpy()).sum()) for a, b in zip(o_out[1:], t_out[1:])))
    side_values = int(sum(a.size for a in o_out[1:]))
    side_frac = side_mismatch / side_values if side_values else 0.0
    rec_err = float(np.abs(o_rec - t_rec.numpy()).max())
    report = {
        "encoder_max_abs_diff": code_err,
        "decoder_max_abs_diff": rec_err,
        "side_mismatches": side_mismatch,
        "side_values": side_values,
        "side_mismatch_tolerance": SIDE_MISMATCH_FRACTION,
        "tolerance": PARITY_TOLERANCE,
        "items": len(x),
    }
    if code_err > PARITY_TOLERANCE or rec_err > PARITY_TOLERANCE or side_frac > SIDE_MISMATCH_FRACTION:
        raise CodecError(
            f"ONNX Runtime and torch disagree: encoder {code_err:.2e}, decoder {rec_err:.2e}, "
            f"side mismatches {side_mismatch} of {side_values} (tolerance {PARITY_TOLERANCE:g}, "
            f"side fraction {SIDE_MISMATCH_FRACTION:g})"
        )
    return report

"""torch -> ONNX for the encoder and decoder graphs, and the parity check against ONNX Runtime."""

from __future__ import annotations

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
    return _export_dynamic(module, args, input_names, output_names, shapes)


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


class _MapEncoder(torch.nn.Module):
    """encoder.onnx of a spatial model: padded x -> code map (+ hyper map before rounding)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        y, side = self.model.encode(x)
        return (y, side["hyper"]) if "hyper" in side else y


class _MapDecoder(torch.nn.Module):
    """decoder.onnx of a spatial model: code map -> padded reconstruction in [0, 1] pixel space."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, code: torch.Tensor):
        return self.model.activate(self.model.decode_logits(code, {}))


def export_map_graphs(model, sample: torch.Tensor) -> tuple[bytes, bytes]:
    """Spatial models: batch, height and width all dynamic (height and width multiples of the stride)."""
    from training.models.spatial import HYPER_ENTROPY

    model.eval()
    hyper = model.entropy in HYPER_ENTROPY
    n, h, w = (torch.export.Dim(k, min=1, max=1 << 14) for k in ("batch", "h", "w"))
    buf_names = ["code", "hyper"] if hyper else ["code"]
    enc = _export_dynamic(
        _MapEncoder(model), (sample,), ["x"], buf_names, ({0: n, 2: model.stride * h, 3: model.stride * w},)
    )
    with torch.no_grad():
        code = model.encode(sample)[0]
    dec = _export_dynamic(_MapDecoder(model), (code,), ["code"], ["x_hat"], ({0: n, 2: h, 3: w},))
    return enc, dec


def _export_dynamic(module, args: tuple, input_names, output_names, shapes: tuple) -> bytes:
    """torch.onnx's dynamo exporter (the only one that handles MaxUnpool2d) -> the serialized ModelProto."""
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
    return prog.model_proto.SerializeToString()


def map_parity(model, enc_bytes: bytes, dec_bytes: bytes, items: list[torch.Tensor]) -> dict:
    """Max |torch - ORT| over padded batches of several sizes; raises CodecError above tolerance."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    es = ort.InferenceSession(enc_bytes, opts, providers=["CPUExecutionProvider"])
    ds = ort.InferenceSession(dec_bytes, opts, providers=["CPUExecutionProvider"])
    code_err = rec_err = 0.0
    sizes = []
    for x in items:
        with torch.no_grad():
            t = _MapEncoder(model)(x)
            t = t if isinstance(t, tuple) else (t,)
            t_rec = _MapDecoder(model)(t[0])
        o = es.run(None, {"x": x.numpy()})
        o_rec = ds.run(None, {"code": t[0].numpy()})[0]
        code_err = max(code_err, *(float(np.abs(a - b.numpy()).max()) for a, b in zip(o, t)))
        rec_err = max(rec_err, float(np.abs(o_rec - t_rec.numpy()).max()))
        sizes.append(list(x.shape[-2:]))
    report = {
        "encoder_max_abs_diff": code_err,
        "decoder_max_abs_diff": rec_err,
        "tolerance": PARITY_TOLERANCE,
        "sizes": sizes,
    }
    if code_err > PARITY_TOLERANCE or rec_err > PARITY_TOLERANCE:
        raise CodecError(f"ONNX Runtime and torch disagree: encoder {code_err:.2e}, decoder {rec_err:.2e}")
    return report


WEIGHT_DTYPES = ("float32", "float16")


def round_weights_to_float16(model: torch.nn.Module) -> None:
    """Round every float parameter and buffer to float16 precision (in float32), so torch computes exactly what
    a graph with float16 weights does; called before export with --weights float16."""
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.dtype == torch.float32:
                t.copy_(t.half().float())


def store_weights_as_float16(graph: bytes, min_values: int = 16) -> bytes:
    """Store the graph's float32 initializers (of at least min_values values) as float16, each followed by a Cast
    back to float32: half the bytes on disk, the same arithmetic (ONNX Runtime folds the casts at load). Weights
    must have been rounded to float16 (round_weights_to_float16); constants the exporter folded from them are
    not float16-exact and stay float32."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load_from_string(graph)
    g = m.graph
    kept, casts = [], []
    for init in g.initializer:
        arr = numpy_helper.to_array(init)
        if init.data_type != TensorProto.FLOAT or arr.size < min_values:
            kept.append(init)
            continue
        half = arr.astype(np.float16)
        if not np.array_equal(
            half.astype(np.float32), arr
        ):  # a constant folded from weights (GDN's |beta| + eps)
            kept.append(init)
            continue
        kept.append(numpy_helper.from_array(half, init.name + "__f16"))
        casts.append(helper.make_node("Cast", [init.name + "__f16"], [init.name], to=TensorProto.FLOAT))
    g.ClearField("initializer")
    g.initializer.extend(kept)
    nodes = list(g.node)
    g.ClearField("node")
    g.node.extend(casts + nodes)
    onnx.checker.check_model(m)
    return m.SerializeToString()

"""A Triton Inference Server model repository from a bundle: the decoder (and encoder) for GPU fleets.

    python -m training.triton --bundle bundles/conv --out triton-repo
    tritonserver --model-repository triton-repo            # elsewhere: Triton's own image, on a GPU

writes, per graph,

    REPO/<bundle id>-decoder/config.pbtxt            platform onnxruntime_onnx, inputs, outputs, batching
    REPO/<bundle id>-decoder/1/model.onnx            the bundle's decoder.onnx, byte for byte
    REPO/<bundle id>-decoder/aecodec-manifest.json   the bundle's manifest (what the model belongs to)

and the same for the encoder. Names, dtypes and per-item dims come from the
manifest (code "code" float32 [*code.shape], side inputs int64 [*side.shape],
x / x_hat float32 [*input.shape]); the graphs' batch dimension is dynamic, so
Triton batches along it (max_batch_size > 0) and its dynamic batcher merges
concurrent requests. Triton runs only the transforms: the payload's unpacking,
entropy decoding and dequantisation (and on the encoder side scaling,
quantisation, entropy coding and packing) stay in our server, in
latent_codec.codec.Codec (docs/deployment.md).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from latent_codec.bundle import DECODER_NAME, ENCODER_NAME, MANIFEST_NAME, Manifest, load_bundle
from latent_codec.errors import CodecError

PLATFORM = "onnxruntime_onnx"
MANIFEST_COPY = "aecodec-manifest.json"
KINDS = {"gpu": "KIND_GPU", "cpu": "KIND_CPU"}


@dataclass(frozen=True)
class Tensor:
    name: str
    data_type: str  # Triton's DataType name
    dims: list[int]  # per item: Triton adds the batch dimension when max_batch_size > 0


@dataclass
class TritonOptions:
    version: int = 1  # the model version directory
    max_batch_size: int = 0  # 0 = derived from the bundle: items whose tensors fit in batch_mib
    batch_mib: float = 64.0  # one batch's input + output tensors stay under this (the derived max_batch_size)
    batch_cap: int = 10_000  # the cloud's per-request item limit: a request never needs more than one batch
    queue_delay_us: int = 500  # the dynamic batcher waits at most this long to merge requests
    kind: str = "gpu"  # instance_group kind: gpu (one instance per GPU) or cpu
    instances: int = 1  # model instances per GPU (or on the CPU)
    graphs: tuple[str, ...] = ("decoder", "encoder")


def graph_tensors(m: Manifest, graph: str) -> tuple[list[Tensor], list[Tensor]]:
    """(inputs, outputs) of encoder.onnx or decoder.onnx as the manifest describes them (per item)."""
    if m.input.any_size:  # spatial code maps: height and width are dynamic (-1) in both graphs
        c, ch = m.input.shape[0], m.code_shape[0]
        x, x_hat = Tensor("x", "TYPE_FP32", [c, -1, -1]), Tensor("x_hat", "TYPE_FP32", [c, -1, -1])
        code = Tensor("code", "TYPE_FP32", [ch, -1, -1])
        hyper = [Tensor("hyper", "TYPE_FP32", [-1, -1, -1])] if m.payload.format == "map+hyperprior" else []
        if graph == "encoder":
            return [x], [code, *hyper]
        if graph == "decoder":
            return [code], [x_hat]
        raise ValueError(f"graph must be encoder or decoder, got {graph!r}")
    x = Tensor("x", "TYPE_FP32", list(m.input.shape))
    code = Tensor("code", "TYPE_FP32", list(m.code_shape))
    side = [Tensor(f.name, "TYPE_INT64", list(f.shape)) for f in getattr(m.payload, "side", [])]
    if graph == "encoder":
        return [x], [code, *side]
    if graph == "decoder":
        return [code, *side], [Tensor("x_hat", "TYPE_FP32", list(m.input.shape))]
    raise ValueError(f"graph must be encoder or decoder, got {graph!r}")


def derived_max_batch(m: Manifest, opts: TritonOptions) -> int:
    """The largest power of two of items whose input and output tensors (4 bytes a value) fit in batch_mib."""
    if opts.max_batch_size:
        return opts.max_batch_size
    # For items of any size, the training items' size (manifest input.shape) stands for a typical item.
    values = (
        math.prod(m.input.shape) * 2
        + math.prod(m.code_shape)
        + sum(f.numel for f in getattr(m.payload, "side", []))
    )
    fit = int(opts.batch_mib * (1 << 20) // (4 * values))
    return max(1, min(opts.batch_cap, 1 << (fit.bit_length() - 1) if fit else 1))


def _tensor_block(t: Tensor) -> str:
    return f'  {{\n    name: "{t.name}"\n    data_type: {t.data_type}\n    dims: [ {", ".join(map(str, t.dims))} ]\n  }}'


def config_pbtxt(name: str, m: Manifest, graph: str, opts: TritonOptions) -> str:
    """config.pbtxt (protobuf text format of Triton's ModelConfig) for one graph of the bundle."""
    inputs, outputs = graph_tensors(m, graph)
    params = {
        "aecodec_bundle_id": m.bundle_id,
        "aecodec_content_hash": m.content_hash,
        "aecodec_graph": graph,
    }
    lines = [
        f'name: "{name}"',
        f'platform: "{PLATFORM}"',
        f"max_batch_size: {derived_max_batch(m, opts)}",
        "input [\n" + ",\n".join(_tensor_block(t) for t in inputs) + "\n]",
        "output [\n" + ",\n".join(_tensor_block(t) for t in outputs) + "\n]",
        f"dynamic_batching {{\n  max_queue_delay_microseconds: {opts.queue_delay_us}\n}}",
        f"instance_group [\n  {{\n    kind: {KINDS[opts.kind]}\n    count: {opts.instances}\n  }}\n]",
        *(f'parameters {{\n  key: "{k}"\n  value: {{ string_value: "{v}" }}\n}}' for k, v in params.items()),
    ]
    return "\n".join(lines) + "\n"


def write_repository(bundle_dir: Path, out: Path, opts: TritonOptions | None = None) -> list[Path]:
    """Add the bundle's graphs to the model repository at out (created if missing); returns the model dirs.

    A model directory of the same name is replaced (a re-export); other models in the repository are kept.
    """
    opts = opts or TritonOptions()
    if opts.kind not in KINDS:
        raise CodecError(f"--kind must be one of {', '.join(KINDS)}, got {opts.kind!r}")
    checks = [
        ("--version", opts.version >= 1, "at least 1"),
        ("--instances", opts.instances >= 1, "at least 1"),
        ("--max-batch-size", 0 <= opts.max_batch_size <= opts.batch_cap, f"0..{opts.batch_cap}"),
        ("--batch-mib", opts.batch_mib > 0, "positive"),
        ("--queue-delay-us", opts.queue_delay_us >= 0, "at least 0"),
    ]
    for flag, ok, rule in checks:
        if not ok:
            raise CodecError(f"{flag} must be {rule}")
    bundle = load_bundle(bundle_dir)  # verifies the content hash over both graphs and the manifest
    m = bundle.manifest
    files = {"encoder": ENCODER_NAME, "decoder": DECODER_NAME}
    made = []
    for graph in opts.graphs:
        name = f"{m.bundle_id}-{graph}"
        model_dir = out / name
        if model_dir.exists():
            shutil.rmtree(model_dir)
        (model_dir / str(opts.version)).mkdir(parents=True)
        shutil.copyfile(bundle.path / files[graph], model_dir / str(opts.version) / "model.onnx")
        shutil.copyfile(bundle.path / MANIFEST_NAME, model_dir / MANIFEST_COPY)
        (model_dir / "config.pbtxt").write_text(config_pbtxt(name, m, graph, opts))
        made.append(model_dir)
    return made


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = TritonOptions()
    p = argparse.ArgumentParser(prog="aecodec-triton", description=__doc__.split("\n")[0])
    p.add_argument("--bundle", required=True, type=Path, help="bundle directory")
    p.add_argument("--out", required=True, type=Path, help="the model repository (created if missing)")
    p.add_argument("--graphs", default="decoder,encoder", help="decoder, encoder or both (comma-separated)")
    p.add_argument("--version", type=int, default=d.version, help="model version directory")
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=d.max_batch_size,
        help="0 = derived from the bundle (--batch-mib)",
    )
    p.add_argument(
        "--batch-mib", type=float, default=d.batch_mib, help="tensor bytes of the derived max batch"
    )
    p.add_argument("--queue-delay-us", type=int, default=d.queue_delay_us, help="dynamic batcher's delay")
    p.add_argument("--kind", default=d.kind, choices=list(KINDS), help="instance_group kind")
    p.add_argument("--instances", type=int, default=d.instances, help="model instances per GPU (or CPU)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    graphs = tuple(g.strip() for g in args.graphs.split(",") if g.strip())
    try:
        if not graphs or set(graphs) - {"decoder", "encoder"}:
            raise CodecError(f"--graphs must name decoder and/or encoder, got {args.graphs!r}")
        opts = TritonOptions(
            args.version,
            args.max_batch_size,
            args.batch_mib,
            queue_delay_us=args.queue_delay_us,
            kind=args.kind,
            instances=args.instances,
            graphs=graphs,
        )
        made = write_repository(args.bundle, args.out, opts)
    except CodecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for d in made:
        print(f"wrote {d}/config.pbtxt and {d}/{opts.version}/model.onnx")
    return 0


if __name__ == "__main__":
    sys.exit(main())

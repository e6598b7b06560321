"""The Triton model repository export (training/triton.py), checked without a Triton server.

config.pbtxt is parsed with protobuf's text format against the ModelConfig fields Triton documents
(tests/triton_model_config.proto: an unknown field, enum value or type name fails), then compared with
the ONNX graph next to it (onnx: names, element types, dims, a dynamic batch dimension). The models are
then run the way Triton would (ONNX Runtime, feeds named by the config), with our codec's own steps on
either side: unpacking, entropy decoding and dequantisation before the decoder; scaling, quantisation,
entropy coding and packing after the encoder. Together they must give exactly what the bundle gives.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format

from latent_codec import datasets
from latent_codec.bundle import Manifest
from latent_codec.codec import Codec
from tests.helpers import ROOT, tiny_bundle, train_and_export
from training.triton import TritonOptions, derived_max_batch, main, write_repository

ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT64: "TYPE_INT64"}


@pytest.fixture(scope="module")
def model_config(tmp_path_factory):
    """Triton's ModelConfig message (the documented subset), compiled from tests/triton_model_config.proto."""
    from grpc_tools import protoc

    out = tmp_path_factory.mktemp("triton-proto")
    src = ROOT / "tests"
    assert (
        protoc.main(["protoc", f"-I{src}", f"--python_out={out}", str(src / "triton_model_config.proto")])
        == 0
    )
    spec = importlib.util.spec_from_file_location(
        "triton_model_config_pb2", out / "triton_model_config_pb2.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dense_bundle(tmp_path_factory) -> Path:
    return tiny_bundle(tmp_path_factory)


@pytest.fixture(scope="module")
def unpool_bundle(tmp_path_factory) -> Path:
    """A conv model with max-unpooling switches: the decoder takes int64 side inputs next to the code."""
    args = {"code_dim": 8, "channels": [4, 8], "pool": "max", "up": "max"}
    return train_and_export(
        tmp_path_factory.mktemp("unpool"),
        "conv",
        args,
        data="digits",
        epochs=1,
        limit=300,
        quant="affine8",
        entropy=True,
        test_limit=0,
        fit_items=300,
    )


def parse_config(model_config, path: Path):
    return text_format.Parse(path.read_text(), model_config.ModelConfig())


def graph_io(model: onnx.ModelProto, which: str) -> list[tuple[str, str, list]]:
    """(name, Triton type, dims with the batch dimension's symbol) of the graph's inputs or outputs."""
    init = {t.name for t in model.graph.initializer}
    values = [v for v in getattr(model.graph, which) if v.name not in init]
    out = []
    for v in values:
        t = v.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in t.shape.dim]
        out.append((v.name, ONNX_TO_TRITON[t.elem_type], dims))
    return out


def check_against_graph(model_config, model_dir: Path, bundle: Path, graph: str) -> None:
    manifest = Manifest.from_json((bundle / "manifest.json").read_text())
    cfg = parse_config(model_config, model_dir / "config.pbtxt")
    assert cfg.name == model_dir.name == f"{manifest.bundle_id}-{graph}"
    assert cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size >= 1
    assert cfg.HasField("dynamic_batching") and cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert cfg.parameters["aecodec_bundle_id"].string_value == manifest.bundle_id
    assert cfg.parameters["aecodec_content_hash"].string_value == manifest.content_hash
    blob = (model_dir / "1" / "model.onnx").read_bytes()
    assert blob == (bundle / f"{graph}.onnx").read_bytes()  # the bundle's graph, unchanged
    model = onnx.load_from_string(blob)
    onnx.checker.check_model(model)
    for tensors, which in ((cfg.input, "input"), (cfg.output, "output")):
        declared = [(t.name, model_config.DataType.Name(t.data_type), list(t.dims)) for t in tensors]
        actual = graph_io(model, which)
        assert [(n, ty) for n, ty, _ in declared] == [(n, ty) for n, ty, _ in actual], which
        for (name, _, dims), (_, _, shape) in zip(declared, actual):
            # Triton prepends the batch dimension: the graph's first dim must be dynamic, the rest equal
            assert isinstance(shape[0], str) and shape[0], (name, shape)
            assert dims == shape[1:], (name, dims, shape)


def export(bundle: Path, repo: Path, **opts) -> tuple[Manifest, list[Path]]:
    m = Manifest.from_json((bundle / "manifest.json").read_text())
    return m, write_repository(bundle, repo, TritonOptions(**opts))


def run_like_triton(model_config, model_dir: Path, arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Run model.onnx as Triton's ONNX Runtime backend would: inputs and outputs named by config.pbtxt."""
    import onnxruntime as ort

    cfg = parse_config(model_config, model_dir / "config.pbtxt")
    dtypes = {"TYPE_FP32": np.float32, "TYPE_INT64": np.int64}
    feeds = {
        t.name: np.ascontiguousarray(a, dtypes[model_config.DataType.Name(t.data_type)]).reshape(
            len(a), *t.dims
        )
        for t, a in zip(cfg.input, arrays, strict=True)
    }
    assert all(len(a) <= cfg.max_batch_size for a in arrays)
    sess = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    return sess.run([t.name for t in cfg.output], feeds)


def check_split_with_our_server(model_config, bundle: Path, dirs: list[Path]) -> None:
    """Triton's part (the transforms) plus ours (every coding step) gives exactly the bundle's encode/decode."""
    codec = Codec.open(bundle)
    side_names = [f.name for f in codec.payload.side]
    x = datasets.load("digits", "test").x[:40]
    payloads = codec.encode(x)
    dec_dir = next(d for d in dirs if d.name.endswith("-decoder"))
    enc_dir = next(d for d in dirs if d.name.endswith("-encoder"))
    # decode: our server unpacks, entropy-decodes and dequantises; Triton synthesises; our server unscales
    symbols, side = codec.symbols(payloads)
    (x_hat,) = run_like_triton(
        model_config, dec_dir, [codec.dequantise(symbols), *[side[n] for n in side_names]]
    )
    recon = codec.unscale(np.clip(x_hat, 0.0, 1.0))
    assert np.array_equal(recon, codec.decode(payloads))
    # encode: our server scales; Triton analyses; our server quantises, entropy-codes and packs
    code, *side_out = run_like_triton(model_config, enc_dir, [codec.scale(x)])
    s = codec.quantise(code.reshape(len(x), -1))
    assert codec.pack(s, dict(zip(side_names, side_out)), codec.entropy_encode(s)) == payloads


def test_triton_config_matches_the_onnx_graphs_and_the_split_reproduces_the_bundle(
    model_config, dense_bundle, tmp_path
):
    m, dirs = export(dense_bundle, tmp_path / "repo")
    assert sorted(d.name for d in dirs) == sorted(f"{m.bundle_id}-{g}" for g in ("decoder", "encoder"))
    for d in dirs:
        check_against_graph(model_config, d, dense_bundle, d.name.rsplit("-", 1)[1])
        assert Manifest.from_json((d / "aecodec-manifest.json").read_text()).content_hash == m.content_hash
        [group] = parse_config(model_config, d / "config.pbtxt").instance_group
        assert model_config.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_GPU" and group.count == 1
    check_split_with_our_server(model_config, dense_bundle, dirs)


@pytest.mark.slow
def test_side_inputs_are_int64_tensors_in_the_config_and_the_split_still_decodes(
    model_config, unpool_bundle, tmp_path
):
    m, dirs = export(unpool_bundle, tmp_path / "repo", kind="cpu", instances=2)
    assert [f.name for f in m.payload.side] == ["switches0", "switches1"]
    for d in dirs:
        check_against_graph(model_config, d, unpool_bundle, d.name.rsplit("-", 1)[1])
    dec = parse_config(model_config, next(d for d in dirs if d.name.endswith("-decoder")) / "config.pbtxt")
    assert [model_config.DataType.Name(t.data_type) for t in dec.input] == [
        "TYPE_FP32",
        "TYPE_INT64",
        "TYPE_INT64",
    ]
    assert model_config.ModelInstanceGroup.Kind.Name(dec.instance_group[0].kind) == "KIND_CPU"
    assert dec.instance_group[0].count == 2
    check_split_with_our_server(model_config, unpool_bundle, dirs)


def test_max_batch_size_is_the_largest_power_of_two_that_fits_the_budget(dense_bundle):
    m = Manifest.from_json((dense_bundle / "manifest.json").read_text())
    opts = TritonOptions(batch_mib=1.0)
    per_item = 4 * (2 * math.prod(m.input.shape) + math.prod(m.code_shape))
    b = derived_max_batch(m, opts)
    assert b & (b - 1) == 0 and b * per_item <= 1 << 20 < 2 * b * per_item
    m.input.shape = [3, 64, 64]  # bigger items: fewer per batch
    assert derived_max_batch(m, opts) < b
    assert (
        derived_max_batch(m, TritonOptions(batch_mib=1e6)) == opts.batch_cap
    )  # never above the request limit
    assert derived_max_batch(m, TritonOptions(max_batch_size=48)) == 48  # an explicit size wins


def test_cli_writes_a_repository_and_refuses_bad_input_in_one_line(
    model_config, dense_bundle, tmp_path, capsys
):
    repo = tmp_path / "repo"
    (repo / "other-model").mkdir(parents=True)  # another model in the repository is kept
    assert (
        main(
            [
                "--bundle",
                str(dense_bundle),
                "--out",
                str(repo),
                "--graphs",
                "decoder",
                "--max-batch-size",
                "64",
            ]
        )
        == 0
    )
    assert "config.pbtxt" in capsys.readouterr().out
    [dec] = [d for d in repo.iterdir() if d.name.endswith("-decoder")]
    assert parse_config(model_config, dec / "config.pbtxt").max_batch_size == 64
    assert sorted(p.name for p in repo.iterdir()) == sorted([dec.name, "other-model"])
    for bad, message in [
        (["--graphs", "decoder,vae"], "--graphs must name decoder and/or encoder"),
        (["--max-batch-size", "20000"], "--max-batch-size must be 0..10000"),
        (["--instances", "0"], "--instances must be at least 1"),
    ]:
        assert main(["--bundle", str(dense_bundle), "--out", str(repo), *bad]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert main(["--bundle", str(tmp_path / "nothing"), "--out", str(repo)]) == 2
    assert "bundle not found" in capsys.readouterr().err

"""Manifest round trip, content-hash naming and verification, ONNX parity recorded at export."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from latent_codec.bundle import Manifest, load_bundle
from latent_codec.errors import BundleError


def test_manifest_roundtrip(fashion_bundle):
    text = (fashion_bundle / "manifest.json").read_text()
    m = Manifest.from_json(text)
    again = Manifest.from_json(m.to_json())
    assert again.to_dict() == m.to_dict()
    assert m.bundle_id.startswith("dense-") and m.content_hash.split(":")[1].startswith(
        m.bundle_id.split("-")[1]
    )
    assert m.input.shape == [1, 28, 28] and m.input.dtype == "uint8" and m.input.output == "sigmoid"
    assert m.payload.format == "affine8" and m.payload.item_bytes == 32
    assert len(m.payload.quantiser.lo) == 32
    t = m.metrics["test"]
    assert t["items"] == 500 and 10 < t["psnr"] < 40 and t["bytes_per_item"] == 32


def test_export_records_onnx_parity(fashion_bundle):
    par = Manifest.from_json((fashion_bundle / "manifest.json").read_text()).training["onnx_parity"]
    assert par["encoder_max_abs_diff"] <= 1e-4 and par["decoder_max_abs_diff"] <= 1e-4


def test_parity_check_catches_a_wrong_graph(fashion_bundle):
    """parity() must fail when the ONNX graph is not the model's (a different decoder)."""
    import torch

    from latent_codec.errors import CodecError
    from training.onnx_export import export_graphs, parity
    from training.registry import build_model

    m = Manifest.from_json((fashion_bundle / "manifest.json").read_text())
    model = build_model(m.model["name"], m.model["args"]).eval()
    x = torch.rand(16, 1, 28, 28)
    enc, dec = export_graphs(model, x[:4])
    assert parity(model, enc, dec, x)["decoder_max_abs_diff"] <= 1e-4
    other = build_model(m.model["name"], m.model["args"]).eval()  # fresh random weights
    with pytest.raises(CodecError, match="ONNX Runtime and torch disagree"):
        parity(other, enc, dec, x)


def _copy(src, tmp_path):
    dst = tmp_path / "b"
    shutil.copytree(src, dst)
    return dst


def test_tampered_files_fail_hash(fashion_bundle, tmp_path):
    b = _copy(fashion_bundle, tmp_path)
    blob = bytearray((b / "decoder.onnx").read_bytes())
    blob[-10] ^= 0xFF
    (b / "decoder.onnx").write_bytes(bytes(blob))
    with pytest.raises(BundleError, match="content hash mismatch"):
        load_bundle(b)
    b2 = _copy(fashion_bundle, tmp_path / "2")
    d = json.loads((b2 / "manifest.json").read_text())
    d["payload"]["quantization"]["lo"][0] += 0.5  # decoding-relevant field: hashed
    (b2 / "manifest.json").write_text(json.dumps(d))
    with pytest.raises(BundleError, match="content hash mismatch"):
        load_bundle(b2)
    # Metrics are not decoding-relevant: editing them keeps the bundle valid.
    b3 = _copy(fashion_bundle, tmp_path / "3")
    d = json.loads((b3 / "manifest.json").read_text())
    d["metrics"]["note"] = "re-measured"
    (b3 / "manifest.json").write_text(json.dumps(d))
    assert load_bundle(b3).bundle_id == d["bundle_id"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: (b / "encoder.onnx").unlink(), "missing encoder.onnx"),
        (lambda b: (b / "manifest.json").unlink(), "not a bundle"),
        (lambda b: (b / "manifest.json").write_text("{not json"), "not valid JSON"),
        (lambda b: (b / "manifest.json").write_text('{"format_version": 99}'), "format_version 99"),
        (lambda b: (b / "manifest.json").write_text('{"format_version": 1, "model": {}}'), "missing field"),
    ],
)
def test_broken_bundles_are_named(fashion_bundle, tmp_path, mutate, message):
    b = _copy(fashion_bundle, tmp_path)
    mutate(b)
    with pytest.raises(BundleError, match=message):
        load_bundle(b)


def test_codec_transforms_run_on_the_bundle_graphs(fashion_bundle):
    from latent_codec.codec import Codec

    c = Codec.open(fashion_bundle, threads=1)
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    code, side = c.analyse(x)
    assert code.shape == (3, 32) and side == {}
    rec = c.synthesise(code, {})
    assert rec.shape == (3, 1, 28, 28) and 0 <= rec.min() and rec.max() <= 1
    # A codec opened with one side refuses the other with a message, not a crash.
    with pytest.raises(BundleError, match="without its decoder"):
        Codec.open(fashion_bundle, need=("encoder",)).synthesise(code, {})

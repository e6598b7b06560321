"""Rate-distortion training, learned-prior export and cross-process bit-exact entropy decoding."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import unit

ROOT = Path(__file__).resolve().parents[1]

DIGITS_ARGS = {"code_dim": 8, "hidden": [32]}


def _rd_train(rd_lambda: float, epochs: int = 30, proxy: str = "mixed"):
    from training.train import TrainConfig, train

    cfg = TrainConfig(
        model="dense",
        model_args=DIGITS_ARGS,
        data="digits",
        epochs=epochs,
        batch_size=64,
        lr=5e-3,
        rd_lambda=rd_lambda,
        quant_noise=proxy,
        threads=1,
    )
    return cfg, *train(cfg, progress=None)


@pytest.fixture(scope="module")
def rd_bundle(tmp_path_factory) -> Path:
    """A digits model trained with the rate term and exported with its learned prior's tables."""
    from training.export import export_bundle
    from training.train import save_checkpoint

    d = tmp_path_factory.mktemp("rd")
    cfg, model, record = _rd_train(0.05)
    ckpt = save_checkpoint(d / "rd.pt", model, cfg, record)
    export_bundle(ckpt, d / "bundle", quant="learned", fit_items=0, test_limit=0)
    return d / "bundle"


@pytest.mark.slow
def test_higher_lambda_spends_fewer_bits():
    _, _, low = _rd_train(0.005)
    _, _, high = _rd_train(0.2)
    b_low = low["rate_prior"]["train_bits_per_item"]
    b_high = high["rate_prior"]["train_bits_per_item"]
    assert b_high < 0.7 * b_low, (b_low, b_high)
    assert high["history"][-1]["val_psnr"] < low["history"][-1]["val_psnr"]


def test_quant_proxy_is_off_by_default_and_rounds_in_eval():
    from training.registry import build_model

    torch.manual_seed(0)
    m = build_model("dense", {"input_shape": [1, 8, 8], **DIGITS_ARGS}).eval()
    x = torch.rand(5, 1, 8, 8)
    code, side = m.encode(m.normalize(x))
    plain = m(x)["x_hat"]
    assert torch.allclose(plain, m.activate(m.decode_logits(code, side)))
    m.quant_proxy = "ste"
    assert torch.allclose(m(x)["x_hat"], m.activate(m.decode_logits(torch.round(code), side)))
    m.train()
    m.quant_proxy = "noise"
    noisy = m(x)["x_hat"]
    assert not torch.allclose(noisy, plain)


def test_ste_passes_gradients():
    from training.rate import quantize_proxy

    z = torch.tensor([0.3, 1.7, -2.2], requires_grad=True)
    y = quantize_proxy(z, "ste", training=True)
    assert torch.equal(y.detach(), torch.round(z.detach()))
    y.sum().backward()
    assert torch.equal(z.grad, torch.ones(3))


def test_prior_tables_round_trip():
    """Learned float prior -> integer tables -> manifest dict -> coder: same distribution, exact sums."""
    from latent_codec.factorized_prior import FactorizedPrior
    from training.rate import FactorizedLogisticPrior

    torch.manual_seed(1)
    prior = FactorizedLogisticPrior(5)
    with torch.no_grad():
        prior.loc_raw.normal_(0, 2 / prior.GAIN)
        prior.log_scale_raw.normal_(0, 0.5 / prior.GAIN)
    probs = prior.table(-8, 7).numpy()
    assert np.allclose(probs.sum(axis=1), 1.0)
    fp = FactorizedPrior.from_probabilities(probs)
    again = FactorizedPrior.from_dict(fp.to_dict())
    assert np.array_equal(again.tables, fp.tables)
    assert np.all(fp.tables.sum(axis=1) == 1 << fp.precision)
    q = fp.tables / float(1 << fp.precision)
    big = probs > 1e-3
    assert np.allclose(q[big], probs[big], rtol=0.02)
    # The float prior's bits on integer codes agree with the tables' bits.
    # (Interior integers only: the end bins also hold the tails the quantiser clips into them.)
    z = torch.randint(-7, 7, (200, 5)).float()
    sym = (z + 8).numpy().astype(np.int64)
    likely = np.all(probs[np.arange(5)[None, :], sym] > 1e-3, axis=1)
    assert likely.sum() > 20
    float_bits = prior.bits(z).detach().numpy()[likely]
    table_bits = fp.bits(sym)[likely]
    assert np.allclose(float_bits, table_bits, rtol=0.02, atol=0.05)


def test_learned_payload_grid_has_step_one():
    from training.rate import learned_payload

    rp = {"grid_bits": 4, "probs": np.full((3, 16), 1 / 16).tolist()}
    q, prior = learned_payload(rp, 3)
    z = np.array([[-8.0, 0.4, 7.0], [-9.0, -0.6, 2.5]], dtype=np.float32)
    s = q.quantise(z)
    assert np.array_equal(s, np.clip(np.rint(z), -8, 7) + 8)
    assert np.array_equal(q.dequantise(s), np.clip(np.rint(z), -8, 7))
    with pytest.raises(ValueError):
        learned_payload(rp, 4)


@pytest.mark.slow
def test_rd_bundle_manifest_and_measured_rate(rd_bundle):
    from latent_codec.bundle import load_bundle

    m = load_bundle(rd_bundle).manifest
    assert m.payload.format.endswith("+range") and m.payload.quantiser.name.startswith("affine")
    q = m.payload.quantiser
    assert q.lo[0] == -(1 << (q.bits - 1)) and q.hi[0] == (1 << (q.bits - 1)) - 1
    t = m.metrics["test"]
    assert t["bytes_per_item"] < 8  # entropy-coded: below 8 dims at 8 bits, framing included
    assert t["psnr"] > 12.0


def _run(mode: str, bundle: Path, inp: Path, out: Path, threads: int) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "tests" / "rd_xproc_worker.py"),
            mode,
            str(bundle),
            str(inp),
            str(out),
            str(threads),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.slow
def test_cross_process_bit_exact(rd_bundle, tmp_path):
    """Encode in one process (1 thread), decode in two others (2 threads, 1 thread): identical bytes."""
    from latent_codec import datasets

    items = datasets.load("digits", "test").x[:300]
    np.save(tmp_path / "items.npy", items)
    _run("encode", rd_bundle, tmp_path / "items.npy", tmp_path / "enc1.npz", 1)
    _run("encode", rd_bundle, tmp_path / "items.npy", tmp_path / "enc2.npz", 2)
    _run("decode", rd_bundle, tmp_path / "enc1.npz", tmp_path / "dec2.npz", 2)
    _run("decode", rd_bundle, tmp_path / "enc1.npz", tmp_path / "dec1.npz", 1)
    enc1, enc2 = np.load(tmp_path / "enc1.npz"), np.load(tmp_path / "enc2.npz")
    dec1, dec2 = np.load(tmp_path / "dec1.npz"), np.load(tmp_path / "dec2.npz")
    assert len(enc1["sizes"]) == 300 and enc1["data"].size > 0
    # The encoder's codes quantise identically with 1 or 2 ORT threads: identical payload bytes.
    assert np.array_equal(enc1["symbols"], enc2["symbols"])
    assert enc1["data"].tobytes() == enc2["data"].tobytes()
    # Decoding elsewhere gives back exactly the symbols that were coded, and identical codes.
    assert np.array_equal(dec2["symbols"], enc1["symbols"])
    assert dec1["symbols"].tobytes() == dec2["symbols"].tobytes()
    assert dec1["codes"].tobytes() == dec2["codes"].tobytes()
    # Re-packing the decoded codes reproduces the original payloads byte for byte.
    assert dec2["data"].tobytes() == enc1["data"].tobytes()


def test_linres_starts_as_pca_on_the_integer_grid():
    """The PCA-initialised model reconstructs exactly like PCA whose codes are quantised with the given step."""
    from bench.pca import PCA
    from latent_codec import datasets
    from training.registry import build_model

    x = unit(datasets.load("digits", "train").x)
    m = build_model("linres", {"input_shape": [1, 8, 8], "code_dim": 10, "hidden": 16}).eval()
    m.init_pca(x, step=0.5)
    p = PCA.fit(x, 10)
    xt = torch.from_numpy(x[:50])
    with torch.no_grad():
        code = m.encode(m.normalize(xt))[0].numpy()
        m.quant_proxy = "ste"
        rec = m(xt)["x_hat"].numpy().reshape(50, -1)
    ref = p.encode(x[:50], 10) / 0.5
    assert np.allclose(np.abs(code), np.abs(ref), atol=1e-3)  # eigenvectors are defined up to sign
    assert np.allclose(rec, p.decode(np.sign(ref) * np.sign(code) * np.round(code) * 0.5), atol=1e-3)


@pytest.mark.slow
def test_conv_with_hidden_mlp_and_kernel_5_rd_trains_and_exports(tmp_path):
    """The ladder's conv rungs: 5x5 strided convolutions and an MLP to a small global code."""
    from tests.helpers import train_and_export
    from training.registry import build_model

    old = build_model("conv", {"input_shape": [1, 8, 8], "code_dim": 4, "channels": [4, 8], "pool": "stride"})
    assert {k for k in old.state_dict() if k.startswith("to_code")} == {
        "to_code.weight",
        "to_code.bias",
    }  # as before
    args = {
        "code_dim": 6,
        "channels": [8, 8],
        "pool": "stride",
        "kernel": 5,
        "hidden": 16,
        "output": "linear",
    }
    m = build_model("conv", {"input_shape": [1, 8, 8], **args})
    assert m.features[0].kernel_size == (5, 5) and m.to_code[0].out_features == 16 and m.code_shape == [6]
    with pytest.raises(ValueError, match="kernel"):
        build_model("conv", {"input_shape": [1, 8, 8], **args, "kernel": 4})
    bundle = train_and_export(
        tmp_path,
        "conv",
        args,
        data="digits",
        limit=0,
        epochs=3,
        batch_size=64,
        rd_lambda=0.05,
        quant_noise="mixed",
        quant="learned",
        test_limit=100,
        fit_items=600,
    )
    import json

    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model"]["args"]["hidden"] == 16 and manifest["model"]["args"]["kernel"] == 5
    assert manifest["training"]["onnx_parity"]["decoder_max_abs_diff"] <= 1e-4
    assert manifest["payload"]["entropy"] is not None

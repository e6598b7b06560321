"""The vector-quantised autoencoder (one-hot code): nearest-codeword encoding, Lloyd / ECVQ training,
and its bundle through the real edge packing path and a real gRPC server."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.helpers import unit


def _model(codebook, bias=None):
    from training.registry import build_model

    cb = torch.tensor(codebook, dtype=torch.float32)
    m = build_model("vq", {"input_shape": [1, 1, cb.shape[1]], "codewords": cb.shape[0]}).eval()
    m.codebook.copy_(cb)
    if bias is not None:
        m.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return m


def test_encoder_picks_the_nearest_codeword_and_the_decoder_returns_it():
    m = _model([[0, 0], [1, 0], [0, 1], [1, 1]])
    x = torch.tensor([[0.9, 0.2], [0.1, 0.1], [0.4, 0.8], [0.7, 0.6]]).view(4, 1, 1, 2)
    code, _ = m.encode(x)
    # Index k sits at k - K/2 on the symmetric integer grid of log2 K = 2 bits.
    assert code.flatten().tolist() == [1 - 2, 0 - 2, 2 - 2, 3 - 2]
    out = m(x)
    assert torch.equal(out["x_hat"].view(4, 2), torch.tensor([[1.0, 0], [0, 0], [0, 1], [1, 1]]))


def test_rate_bias_moves_items_to_cheaper_codewords():
    # (0.6, 0) is nearer codeword 1, but with codeword 1 costing 1 bit more than codeword 0 at lambda = 0.5
    # the cost is 0.16 + 0.5 > 0.36: entropy-constrained VQ picks codeword 0.
    plain = _model([[0, 0], [1, 0], [0, 1], [1, 1]])
    ecvq = _model([[0, 0], [1, 0], [0, 1], [1, 1]], bias=[0.0, 0.5, 0.5, 0.5])
    x = torch.tensor([[0.6, 0.0]]).view(1, 1, 1, 2)
    assert int(plain.encode(x)[0]) == 1 - 2
    assert int(ecvq.encode(x)[0]) == 0 - 2


def test_codewords_must_fit_the_entropy_tables():
    from training.registry import build_model

    for bad in (3, 6, 8192):
        with pytest.raises(ValueError, match="power of two"):
            build_model("vq", {"input_shape": [1, 8, 8], "codewords": bad})


def _train(rd_lambda: float, epochs: int = 8):
    from training.train import TrainConfig, train

    cfg = TrainConfig(
        model="vq", model_args={"codewords": 64}, data="digits", epochs=epochs, rd_lambda=rd_lambda
    )
    return train(cfg, progress=None)


@pytest.mark.slow
def test_lloyd_iterations_never_increase_the_objective_and_rate_training_spends_fewer_bits():
    _, plain = _train(0.0)
    losses = [h["train_loss"] for h in plain["history"]]
    assert all(b <= a + 1e-6 for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.8 * losses[0]
    _, rd = _train(2.0)
    assert rd["rate_prior"]["train_bits_per_item"] < plain["rate_prior"]["train_bits_per_item"] - 0.3
    assert rd["history"][-1]["val_psnr"] < plain["history"][-1]["val_psnr"]
    probs = np.asarray(rd["rate_prior"]["probs"])
    assert probs.shape == (1, 64) and math.isclose(probs.sum(), 1.0, rel_tol=1e-9)


@pytest.mark.slow
def test_vq_bundle_decodes_through_the_server_to_its_codewords(tmp_path):
    from latent_codec import datasets
    from latent_codec.codec import Codec
    from latent_codec.container import from_tensor
    from tests.helpers import decode_through_server, train_and_export
    from training.train import load_checkpoint

    torch.set_num_threads(1)
    bundle = train_and_export(
        tmp_path,
        "vq",
        {"codewords": 64},
        data="digits",
        limit=0,
        epochs=8,
        quant="learned",
        test_limit=100,
        fit_items=600,
    )
    enc = Codec.open(bundle)
    x = datasets.load("digits", "test").x[:40]
    payloads = enc.encode(x)
    assert max(len(p) for p in payloads) <= 4  # one 6-bit index in the ANS coder's few bytes
    resp = decode_through_server(bundle.parent, enc, payloads, x)
    rec = from_tensor(resp.reconstructions).reshape(40, -1)
    # The cloud returns, for each item, the codeword torch picks for it (the nearest one).
    model, _, _ = load_checkpoint(tmp_path / "vq.pt")
    x01 = torch.from_numpy(unit(x))
    idx = torch.argmin(model.costs(x01.flatten(1)), dim=1)
    expected = np.clip(model.codebook[idx].numpy(), 0, 1)
    assert np.abs(rec - expected).max() <= 1e-5
    assert resp.quality.batch_mse < 0.5 * float((x01**2).mean())


def test_subspace_codewords_cost_a_fraction_of_the_numbers_and_report_their_true_error():
    """Codewords in the top-k PCA subspace: K x k numbers instead of K x pixels, the assignment's error is the
    true reconstruction error (the part outside the subspace included), and quality stays near full-space VQ."""
    import torch

    from training.train import TrainConfig, train
    from training.vq_lloyd import assign

    common = dict(model="vq", data="digits", limit=0, epochs=6, threads=1)
    full, _ = train(TrainConfig(model_args={"codewords": 64}, **common), progress=None)
    sub, rec = train(TrainConfig(model_args={"codewords": 64, "subspace": 16}, **common), progress=None)
    assert tuple(sub.codebook.shape) == (64, 16) and tuple(full.codebook.shape) == (64, 64)
    from latent_codec.datasets import load

    x = torch.from_numpy(load("digits", "test").x.astype("float32") / 255)
    idx, err = assign(sub, x)
    with torch.no_grad():
        rec_x = sub(x)["x_hat"]
        code = sub.encode(x)[0]
    assert torch.equal(code[:, 0].long() + 32, idx)
    assert torch.allclose(err, ((rec_x - x) ** 2).flatten(1).sum(1), rtol=1e-3, atol=1e-3)
    full_err = assign(full, x)[1].mean()
    assert err.mean() < 1.3 * full_err

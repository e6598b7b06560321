"""Training-level theory from the notes: noise processes, sparsity and contractive penalties, the 8-3-8
one-hot autoencoder, linear AE = PCA, denoising, stacked pre-training, and the overcomplete guard.

Each training test is small (digits or a Fashion-MNIST subset, one torch thread, fixed seeds) and
compares against a margin that is far from what chance or a broken implementation would give.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.helpers import need_fashion
from training.noise import Corruption, gaussian_noise, mask_noise
from training.regularizers import Regularizers, jacobian_frobenius_sq, kl_sparsity, l1_activity
from training.train import TrainConfig, config_from_args, evaluate, parse_args, train


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is fastest, and the machine is shared
    yield
    torch.set_num_threads(old)


# ---- noise -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("q", [0.1, 0.25, 0.5])
def test_masking_noise_zeroes_a_fraction_q(q):
    n = 200_000
    x = torch.rand(n) * 0.9 + 0.1  # no zeros before masking
    out = mask_noise(x, q, torch.Generator().manual_seed(1))
    frac = float((out == 0).float().mean())
    bound = 5 * math.sqrt(q * (1 - q) / n)  # 5 binomial standard deviations (~0.005 at q = 0.5)
    assert abs(frac - q) < bound
    kept = out != 0
    assert torch.equal(out[kept], x[kept])  # the rest is retained as it is


def test_gaussian_noise_is_additive_with_sigma():
    x = torch.full((100_000,), 0.5)
    out = gaussian_noise(x, 0.3, torch.Generator().manual_seed(2))
    d = out - x
    assert abs(float(d.mean())) < 0.005 and abs(float(d.std()) - 0.3) < 0.005


def test_corruption_is_reproducible_and_validated():
    x = torch.rand(64, 1, 8, 8)
    a = Corruption(0.3, 0.1, seed=4)(x)
    b = Corruption(0.3, 0.1, seed=4)(x)
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert Corruption()(x) is x
    with pytest.raises(ValueError):
        Corruption(mask_q=1.0)


# ---- penalties ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rho", [0.005, 0.05, 0.3])
def test_kl_sparsity_is_zero_at_target_and_positive_elsewhere(rho):
    at = torch.full((10,), rho)
    assert abs(float(kl_sparsity(at, rho))) < 1e-6
    for other in (rho / 3, rho * 2, 0.5, 0.9):
        assert float(kl_sparsity(torch.full((10,), other), rho)) > 0
    # ... and rho_hat = rho is its minimum: zero gradient there.
    r = torch.full((4,), rho, requires_grad=True)
    kl_sparsity(r, rho).backward()
    assert float(r.grad.abs().max()) < 1e-4


def test_l1_activity_sums_absolute_code_values_per_item():
    code = torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.5, -1.0]])
    assert float(l1_activity(code)) == pytest.approx((3.0 + 2.0) / 2)


def test_contractive_penalty_matches_closed_form_for_a_sigmoid_layer():
    # h = sigmoid(Wx + b): ||J||_F^2 = sum_j (h_j (1 - h_j))^2 sum_i W_ji^2.
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 4)
    x = torch.randn(5, 6, requires_grad=True)
    h = torch.sigmoid(lin(x))
    got = jacobian_frobenius_sq(h, x)
    want = ((h * (1 - h)) ** 2 * (lin.weight**2).sum(1)).sum(1)
    assert torch.allclose(got, want.detach(), atol=1e-6)
    got.sum().backward()  # differentiable: the penalty can be trained
    assert lin.weight.grad is not None and float(lin.weight.grad.abs().sum()) > 0


def test_kl_needs_sigmoid_codes():
    from training.registry import build_model

    m = build_model("dense", {"input_shape": [1, 8, 8], "code_dim": 4})
    with pytest.raises(ValueError, match="sigmoid"):
        Regularizers.from_config(TrainConfig(kl_sparsity=1.0), m)


def test_cli_flags_reach_the_config():
    cfg = config_from_args(
        parse_args(
            [
                "--model",
                "dense",
                "--out",
                "x.pt",
                "--mask-noise",
                "0.25",
                "--gauss-noise",
                "0.1",
                "--l1",
                "0.01",
                "--kl-sparsity",
                "0.5",
                "--sparsity-target",
                "0.1",
                "--contractive",
                "0.02",
                "--pretrain-epochs",
                "3",
                "--weight-decay",
                "1e-4",
            ]
        )
    )
    assert (
        cfg.mask_noise,
        cfg.gauss_noise,
        cfg.l1,
        cfg.kl_sparsity,
        cfg.sparsity_target,
        cfg.contractive,
        cfg.pretrain_epochs,
        cfg.weight_decay,
    ) == (0.25, 0.1, 0.01, 0.5, 0.1, 0.02, 3, 1e-4)


# ---- overcomplete ------------------------------------------------------------------------------------------
def test_overcomplete_without_regulariser_refuses_with_the_reason(capsys):
    cfg = TrainConfig(model="dense", model_args={"code_dim": 100}, data="digits", epochs=1)
    with pytest.raises(ValueError, match="identity"):
        train(cfg, progress=None)
    from training.train import main

    assert (
        main(
            [
                "--model",
                "dense",
                "--arg",
                "code_dim=64",
                "--data",
                "digits",
                "--epochs",
                "1",
                "--out",
                "/nonexistent/never.pt",
                "--no-progress",
            ]
        )
        == 2
    )  # complete (= input) refuses too
    assert "identity" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("reg", [{"mask_noise": 0.3}, {"l1": 0.01}, {"contractive": 0.01}])
def test_overcomplete_with_a_regulariser_trains(reg):
    cfg = TrainConfig(model="dense", model_args={"code_dim": 100}, data="digits", epochs=1, limit=300, **reg)
    model, record = train(cfg, progress=None)
    assert model.code_shape == [100] and math.isfinite(record["history"][-1]["train_loss"])


# ---- sparse ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_kl_sparse_training_reports_rho_hat_per_unit_and_approaches_target():
    base = dict(
        model="dense",
        data="digits",
        epochs=12,
        batch_size=64,
        seed=0,
        model_args={"code_dim": 16, "hidden": [32], "code_activation": "sigmoid"},
    )
    _, plain = train(TrainConfig(**base), progress=None)
    _, sparse = train(TrainConfig(kl_sparsity=2.0, sparsity_target=0.05, **base), progress=None)
    last = sparse["history"][-1]
    assert len(last["rho_hat"]) == 16 and all(0 < r < 1 for r in last["rho_hat"])
    assert "rho_hat" not in plain["history"][-1]  # only reported when training sparse
    # The penalty drives mean activations towards rho = 0.05, far below the unpenalised code's.
    assert last["rho_hat_mean"] < 0.15


# ---- 8-3-8 -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_one_hot_8_3_8_autoencoder_reconstructs_all_eight_inputs():
    from training.registry import build_model

    torch.manual_seed(0)
    m = build_model("dense", {"input_shape": [1, 1, 8], "code_dim": 3, "code_activation": "sigmoid"})
    x = torch.eye(8).view(8, 1, 1, 8)
    opt = torch.optim.Adam(m.parameters(), lr=0.05)
    for _ in range(1500):
        out = m(x)
        loss = m.reconstruction_loss(out, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        out = m(x)
    rec = out["x_hat"].view(8, 8)
    assert torch.equal(rec.argmax(1), torch.arange(8))
    assert torch.equal((rec > 0.5).float(), torch.eye(8))  # every unit right, not just the largest
    codes = out["code"]
    assert len({tuple(c) for c in codes.round(decimals=2).tolist()}) == 8  # 8 distinct 3-unit codes


# ---- linear AE = PCA ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_linear_autoencoder_learns_the_pca_subspace():
    from scipy.linalg import subspace_angles
    from sklearn.decomposition import PCA

    from training.data import load_split, to_tensor

    k = 8
    cfg = TrainConfig(
        model="linear",
        model_args={"code_dim": k},
        data="digits",
        epochs=30,
        lr=2e-2,
        batch_size=64,
        val_fraction=0,
    )
    m, _ = train(cfg, progress=None)
    x = to_tensor(load_split("digits", "train")).flatten(1).numpy().astype(np.float64)
    pca = PCA(k).fit(x)
    with torch.no_grad():
        rec = m(torch.from_numpy(x).float().view(-1, *m.input_shape))["x_hat"].flatten(1).numpy()
    err_ae = ((rec - x) ** 2).sum(1).mean()
    err_pca = ((pca.inverse_transform(pca.transform(x)) - x) ** 2).sum(1).mean()
    angles = subspace_angles(m.decoder_basis().numpy().astype(np.float64), pca.components_.T)
    # The notes' criterion: the same subspace (largest principal angle < 0.05 rad) or, since the last
    # eigen-directions can be nearly degenerate, reconstruction error within 2% of PCA's.
    assert angles.max() < 0.05 or err_ae <= 1.02 * err_pca, (angles, err_ae, err_pca)
    # PCA is optimal among rank-k linear maps: the AE can't beat it (beyond float noise).
    assert err_ae >= err_pca * 0.999
    # A random 8-dimensional subspace is far worse, so the criterion has teeth.
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(64, k)))
    xc = x - x.mean(0)
    assert ((xc - xc @ q @ q.T) ** 2).sum(1).mean() > 1.5 * err_pca


# ---- denoising ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_denoising_beats_plain_on_masked_inputs():
    need_fashion()
    from training.data import load_split, to_tensor

    base = dict(
        model="dense",
        data="fashion-mnist",
        limit=5000,
        epochs=4,
        batch_size=64,
        model_args={"code_dim": 32, "hidden": [128]},
    )
    plain, _ = train(TrainConfig(**base), progress=None)
    dae, _ = train(TrainConfig(mask_noise=0.5, **base), progress=None)
    clean = to_tensor(load_split("fashion-mnist", "test", 1000))
    noisy = mask_noise(clean, 0.5, torch.Generator().manual_seed(9))

    def mse_vs_clean(m):
        with torch.no_grad():
            return float(((m(noisy)["x_hat"] - clean) ** 2).mean())

    e_plain, e_dae = mse_vs_clean(plain), mse_vs_clean(dae)
    assert e_dae < 0.8 * e_plain, (e_dae, e_plain)


# ---- stacked -----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_stacked_pretraining_then_finetuning_at_least_matches_scratch():
    need_fashion()
    from training.data import load_split, to_tensor

    hidden = [128, 64]
    layers = len(hidden) + 1
    p, f = 2, 3  # pre-training epochs per layer, fine-tuning epochs
    base = dict(
        model="dense",
        data="fashion-mnist",
        limit=4000,
        batch_size=64,
        seed=0,
        model_args={"code_dim": 16, "hidden": hidden, "activation": "sigmoid"},
    )
    stacked, rec = train(TrainConfig(epochs=f, pretrain_epochs=p, **base), progress=None)
    scratch, _ = train(TrainConfig(epochs=layers * p + f, **base), progress=None)  # same total epochs
    assert [layer["layer"] for layer in rec["pretraining"]["layers"]] == [0, 1, 2]
    test = to_tensor(load_split("fashion-mnist", "test", 1000))
    e_stacked, e_scratch = evaluate(stacked, test)["mse"], evaluate(scratch, test)["mse"]
    assert e_stacked <= e_scratch, (e_stacked, e_scratch)


def test_stacked_refuses_models_without_layers():
    with pytest.raises(ValueError, match="hidden"):
        train(
            TrainConfig(
                model="dense", model_args={"code_dim": 4}, data="digits", epochs=1, pretrain_epochs=1
            ),
            progress=None,
        )


def test_contractive_hutchinson_estimate_is_unbiased():
    torch.manual_seed(1)
    lin = torch.nn.Linear(10, 6)
    x = torch.randn(3, 10, requires_grad=True)
    h = torch.tanh(lin(x))
    exact = jacobian_frobenius_sq(h, x)
    est = jacobian_frobenius_sq(h, x, samples=4000, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(est, exact.detach(), rtol=0.1)

"""The rate terms of training (training/rate.py, training/models/spatial.py) checked on toy inputs (issue 25).

Each test names the idea it guards: the hyper-latent's bits are part of the rate, the noise proxy (not rounding)
gives the rate its gradients in training, the likelihood floor keeps the rate finite far in the tails. Exact
values come from an independent float64 computation (Gaussian and logistic CDFs), not from the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import tiny_spatial_model
from training.models.spatial import LIKELIHOOD_FLOOR, gaussian_likelihood
from training.rate import FactorizedLogisticPrior, ModelRate, RateDistortion

torch.set_num_threads(1)


def _spatial(entropy: str = "hyperprior"):
    m = tiny_spatial_model(entropy, seed=0)
    m.quant_proxy = "mixed"  # what the ladders train with
    return m


def _x() -> torch.Tensor:
    return torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(1))


def _logistic_mixture_bits(prior: FactorizedLogisticPrior, v: torch.Tensor) -> torch.Tensor:
    """-log2 P(unit bin around v) under the prior's mixture of logistics, in float64, per row of v (N, D)."""
    loc, s = prior.loc.double(), torch.exp(prior.log_scale.double())
    w = torch.softmax(prior.logit_weight_raw.double() * prior.GAIN, dim=-1)
    v = v.double().unsqueeze(-1)
    mass = torch.sigmoid((v + 0.5 - loc) / s) - torch.sigmoid((v - 0.5 - loc) / s)
    p = (mass * w).sum(-1).clamp_min(LIKELIHOOD_FLOOR)
    return -torch.log2(p).sum(1)


def _gaussian_bits(r: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """-log2 P(unit bin around r) under N(0, scale²), in float64, per item."""
    n = torch.distributions.Normal(torch.zeros_like(scale.double()), scale.double())
    p = (n.cdf(r.double() + 0.5) - n.cdf(r.double() - 0.5)).clamp_min(LIKELIHOOD_FLOOR)
    return -torch.log2(p).flatten(1).sum(1)


@pytest.mark.parametrize("entropy", ["hyperprior", "meanscale", "checkerboard"])
def test_the_map_rate_is_the_codes_bits_plus_the_hyper_latents_bits(entropy):
    """Eval mode (rounding): out["bits"] = -log2 of ŷ's Gaussian bins + -log2 of ẑ's factorised bins, exactly."""
    m = _spatial(entropy).eval()
    with torch.no_grad():
        out = m(_x())
        y, z = out["code"], torch.round(out["side"]["hyper"])
        mean, scale = m.entropy_params(y, z)
        y_bits = _gaussian_bits(torch.round(y - mean), scale)
        z_rows = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        z_bits = _logistic_mixture_bits(m.z_prior, z_rows).reshape(len(z), -1).sum(1)
    assert float(z_bits.min()) > 4.0  # the side information costs bits: dropping it would show
    torch.testing.assert_close(out["bits"].double(), y_bits + z_bits, rtol=1e-4, atol=1e-3)


def test_the_factorized_map_rate_is_its_codes_bits():
    m = _spatial("factorized").eval()
    with torch.no_grad():
        out = m(_x())
        y = torch.round(out["code"])
        rows = y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])
        want = _logistic_mixture_bits(m.y_prior, rows).reshape(len(y), -1).sum(1)
    torch.testing.assert_close(out["bits"].double(), want, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("entropy", ["hyperprior", "meanscale", "checkerboard", "factorized"])
def test_in_mixed_mode_the_rate_sees_noise_so_its_gradients_reach_the_codes(entropy):
    """Training with quant proxy "mixed": the decoder sees rounded codes, the rate sees y + U(-1/2, 1/2). Rounding
    for the rate would have zero gradient with respect to the codes themselves (only the scales would learn)."""
    m = _spatial(entropy).train()
    x = _x()
    with torch.no_grad():
        y0, side0 = m.encode(x)
    y = y0.clone().requires_grad_(True)
    side = {k: v.clone().requires_grad_(True) for k, v in side0.items()}
    params = None
    if entropy != "factorized":  # hold ẑ's parameters fixed: only the codes' own proxy can carry a gradient
        with torch.no_grad():
            params = m.entropy_params(y0, torch.round(side0["hyper"]))
    bits = m.bits(y, side, None, params)
    bits.sum().backward()
    assert y.grad is not None and float(y.grad.abs().mean()) > 1e-3, "no rate gradient reaches ŷ"
    if entropy != "factorized":
        g = side["hyper"].grad
        assert g is not None and float(g.abs().mean()) > 1e-3, "no rate gradient reaches ẑ"
    # and the rate differs from the rounded one: noise was drawn
    with torch.no_grad():
        m.eval()
        rounded = m.bits(y0, side0)
        m.train()
    assert not torch.allclose(bits.detach(), rounded)


def test_a_training_forward_gives_the_hyper_analysis_a_rate_gradient():
    """forward() hands bits() its noisy ẑ; rounding it would cut h_a off from the rate entirely."""
    m = _spatial("hyperprior").train()
    out = m(_x())
    out["bits"].mean().backward()
    g = m.h_a[-1].weight.grad
    assert g is not None and torch.isfinite(g).all() and float(g.abs().max()) > 1e-4


def test_the_global_code_rate_uses_noise_in_training_and_rounding_in_eval():
    """training/rate.py RateDistortion (non-map models): the same proxy rule for the factorised prior."""
    rd = RateDistortion(code_dims=3, rd_lambda=0.1)
    code = torch.tensor([[0.2, -1.3, 2.6], [0.0, 0.4, -0.7]], requires_grad=True)
    rd.train()
    bits = rd.prior.bits(rd.noisy(code)).sum()
    bits.backward()
    assert code.grad is not None and float(code.grad.abs().min()) > 0, "rate gradient lost"
    rd.eval()
    torch.testing.assert_close(rd.noisy(code.detach()), torch.round(code.detach()))


def test_the_model_rate_objective_is_distortion_plus_lambda_times_bits():
    m = _spatial("hyperprior").eval()
    rate = ModelRate(0.25)
    x = _x()
    with torch.no_grad():
        out = m(x)
        dist, bits = rate.terms(m, out, x)
        want_dist = ((out["x_hat"] - x) ** 2).flatten(1).sum(1).mean()
        torch.testing.assert_close(dist, want_dist)
        torch.testing.assert_close(bits, out["bits"].mean())
        torch.testing.assert_close(rate.loss(m, out, x), want_dist + 0.25 * out["bits"].mean())


def test_gaussian_bin_likelihood_exact_values_and_a_finite_floor_far_in_the_tails():
    phi = lambda v: 0.5 * math.erfc(-v / math.sqrt(2))  # noqa: E731
    y = torch.tensor([0.0, 1.0, -1.0, 3.0, 60.0, -1e4], requires_grad=True)
    scale = torch.tensor([1.0, 1.0, 1.0, 0.5, 0.11, 0.11])
    lik = gaussian_likelihood(y, scale)
    want = [phi(0.5) - phi(-0.5), phi(1.5) - phi(0.5), phi(1.5) - phi(0.5), phi(7.0) - phi(5.0)]
    torch.testing.assert_close(
        lik[:4].double(), torch.tensor(want, dtype=torch.float64), rtol=1e-5, atol=1e-9
    )
    assert lik[4:].tolist() == pytest.approx([LIKELIHOOD_FLOOR] * 2, rel=1e-6)  # the floor, not 0
    bits = -torch.log2(lik).sum()
    bits.backward()
    assert math.isfinite(float(bits.detach())) and torch.isfinite(y.grad).all()


def test_the_factorised_prior_stays_finite_far_in_the_tails():
    prior = FactorizedLogisticPrior(2)
    y = torch.tensor([[1e4, -1e4], [0.0, 0.0]], requires_grad=True)
    lik = prior.likelihood(y)
    assert float(lik.min().detach()) >= LIKELIHOOD_FLOOR * (1 - 1e-6)
    bits = prior.bits(y).sum()
    bits.backward()
    assert math.isfinite(float(bits.detach())) and torch.isfinite(y.grad).all()
    assert (
        float(bits.detach()) < 2 * -math.log2(LIKELIHOOD_FLOOR) + 10
    )  # the tail costs at most the floor's bits

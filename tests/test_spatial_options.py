"""Spatial-model options for photographs: 3x3 or 5x5 kernels, and the mean-and-scale hyperprior (its rate codes
y - μ, its decoder gets round(y - μ) + μ); training.export writes it as a map-meanscale bundle."""

from __future__ import annotations

import math

import pytest
import torch

from training.models.spatial import SpatialAutoencoder, gaussian_likelihood
from training.train import TrainConfig, save_checkpoint

SMALL = {"channels": 8, "code_channels": 4, "hyper_channels": 4}


def test_kernel_option_sets_the_strided_convolutions_and_is_recorded_only_when_not_the_default():
    k3 = SpatialAutoencoder((3, 32, 32), **SMALL, kernel=3)
    k5 = SpatialAutoencoder((3, 32, 32), **SMALL)
    assert (
        k3.g_a[0].kernel_size == (3, 3)
        and k3.g_a[2].kernel_size == (3, 3)
        and k3.g_s[2].kernel_size == (3, 3)
    )
    assert k5.g_a[0].kernel_size == (5, 5) and k5.g_s[4].kernel_size == (5, 5)
    assert k3.args["kernel"] == 3 and "kernel" not in k5.args  # earlier checkpoints' args are unchanged
    for m in (k3, k5):
        assert m.eval()(torch.rand(2, 3, 30, 22))["x_hat"].shape == (2, 3, 30, 22)
    with pytest.raises(ValueError, match="kernel must be one of"):
        SpatialAutoencoder((3, 32, 32), **SMALL, kernel=7)


def _meanscale() -> SpatialAutoencoder:
    torch.manual_seed(0)
    m = SpatialAutoencoder((3, 32, 32), **SMALL, entropy="meanscale")
    with torch.no_grad():  # a hyper-decoder that predicts clearly non-zero means
        m.h_s[2].bias[:4] = torch.tensor([3.3, -2.6, 0.4, 7.8])
    m.quant_proxy = "mixed"
    return m.eval()


def test_meanscale_codes_y_minus_the_mean_and_decodes_symbol_plus_mean():
    m = _meanscale()
    assert m.h_s[2].out_channels == 2 * SMALL["code_channels"]
    seen = {}
    m.g_s.register_forward_pre_hook(lambda mod, inp: seen.update(y_hat=inp[0].clone()))
    x = torch.rand(3, 3, 32, 32)
    out = m(x)
    y, z_hat = out["code"], torch.round(out["side"]["hyper"])
    mean, scale = m.gaussian_params(z_hat, tuple(y.shape[-2:]))
    assert mean.abs().mean() > 0.5  # the test means are not zero
    symbols = torch.round(y - mean)
    torch.testing.assert_close(seen["y_hat"], symbols + mean)
    z_bits = -torch.log2(m.z_prior.likelihood(m._channel_rows(z_hat))).reshape(3, -1).sum(1)
    y_bits = -torch.log2(gaussian_likelihood(symbols, scale)).flatten(1).sum(1)
    torch.testing.assert_close(out["bits"], y_bits + z_bits)  # the rate of y - μ, not of y


def test_hyperprior_means_are_zero_and_scales_come_from_the_same_channels():
    torch.manual_seed(0)
    m = SpatialAutoencoder((1, 16, 16), **SMALL).eval()
    z = torch.round(3 * torch.randn(2, 4, 2, 2))
    mean, scale = m.gaussian_params(z, (4, 4))
    assert (mean == 0).all()
    lo, hi = math.log(0.11), math.log(256.0)
    torch.testing.assert_close(scale, torch.exp(m.log_scales(z, (4, 4)).clamp(lo, hi)))


def test_meanscale_trains_and_exports_a_mean_scale_bundle(tmp_path):
    from latent_codec.codec import Codec
    from latent_codec.families.mean_scale import MeanScaleCodec
    from training.export import main as export_main
    from training.train import train

    cfg = TrainConfig(
        model="spatial",
        model_args={**SMALL, "entropy": "meanscale"},
        data="digits",
        epochs=1,
        limit=300,
        batch_size=32,
        rd_lambda=0.01,
        quant_noise="mixed",
        threads=1,
    )
    model, record = train(cfg, progress=None)
    assert (
        math.isfinite(record["history"][-1]["val_psnr"]) and record["rate_prior"]["train_bits_per_item"] > 0
    )
    ckpt = save_checkpoint(tmp_path / "ms.pt", model, cfg, record)
    out = tmp_path / "bundle"
    assert export_main(["--checkpoint", str(ckpt), "--quant", "learned", "--out", str(out)]) == 0
    codec = Codec.open(out)
    assert isinstance(codec, MeanScaleCodec) and codec.format == "map+meanscale"


def test_checkerboard_non_anchors_see_only_the_anchors_and_anchors_only_the_hyper_latent():
    """The context is causal as the codec decodes it: a non-anchor's (μ, σ) moves with the anchors' rounded
    values, never with the non-anchors; an anchor's (μ, σ) is the hyper-decoder's alone. Untrained, the
    non-anchors' correction is zero: mean-and-scale's parameters everywhere."""
    from training.models.spatial import anchor_mask

    untrained = SpatialAutoencoder((1, 32, 32), **SMALL, entropy="checkerboard").eval()
    y0, z0 = 4 * torch.randn(2, 4, 8, 8), torch.round(2 * torch.randn(2, 4, 4, 4))
    with torch.no_grad():
        for a, b in zip(untrained.checkerboard_params(y0, z0), untrained.gaussian_params(z0, (8, 8))):
            torch.testing.assert_close(a, b, atol=2e-3, rtol=1e-3)

    torch.manual_seed(0)
    m = SpatialAutoencoder((1, 32, 32), **SMALL, entropy="checkerboard").eval()
    with torch.no_grad():
        m.context.weight.normal_(0.0, 0.5)  # a context that clearly matters (the correction starts at zero)
        m.params_net[-1].weight.normal_(0.0, 0.5)
    y = 4 * torch.randn(2, 4, 8, 8)
    z = torch.round(2 * torch.randn(2, 4, 4, 4))
    anchors = anchor_mask(8, 8)
    with torch.no_grad():
        mean, scale = m.checkerboard_params(y, z)
        mu_h, s_h = m.gaussian_params(z, (8, 8))
        torch.testing.assert_close(mean[..., anchors], mu_h[..., anchors])
        torch.testing.assert_close(scale[..., anchors], s_h[..., anchors])
        other = y + 3.0 * torch.where(anchors, 0.0, 1.0)  # the non-anchors moved
        torch.testing.assert_close(m.checkerboard_params(other, z)[0], mean, rtol=0, atol=0)
        moved = y + 3.0 * anchors.float()  # the anchors moved by whole units
        assert (m.checkerboard_params(moved, z)[0][..., ~anchors] - mean[..., ~anchors]).abs().max() > 0.01


def test_checkerboard_from_mean_and_scale_codes_as_it_did_and_keeps_its_trained_prior(tmp_path):
    """Mean-and-scale -> checkerboard takes the transforms and the whole hyperprior (the context starts at zero, so
    the rate and the reconstruction are the start's), and training from any start whose entropy model
    came along keeps that prior: the first batch's data-dependent fit is for a prior nobody trained."""
    from training.train import train

    start = _meanscale()
    with torch.no_grad():  # a trained prior looks nothing like the first batch's fit
        start.z_prior.loc_raw.add_(0.7)
        start.z_prior.log_scale_raw.sub_(0.2)
    cb = SpatialAutoencoder((3, 32, 32), **SMALL, entropy="checkerboard")
    assert cb.init_from(start) is True
    for name in ("g_a", "g_s", "h_a", "h_s", "z_prior"):
        for a, b in zip(getattr(start, name).parameters(), getattr(cb, name).parameters()):
            assert torch.equal(a, b), name
    x = torch.rand(2, 3, 32, 32)
    cb.quant_proxy = "mixed"
    a, b = start.eval()(x), cb.eval()(x)
    # the same to the float rounding of the non-anchors' means (the context's 2^-10 grid)
    torch.testing.assert_close(b["bits"], a["bits"], rtol=1e-4, atol=0.0)
    torch.testing.assert_close(b["x_hat"], a["x_hat"], rtol=0.0, atol=1e-3)
    fact = SpatialAutoencoder((3, 32, 32), **{**SMALL, "entropy": "factorized"})
    assert fact.init_from(start) is False  # its prior is its own: fitted to the first batch as ever
    narrow = SpatialAutoencoder((3, 32, 32), **{**SMALL, "hyper_channels": 2, "entropy": "checkerboard"})
    assert narrow.init_from(start) is False  # other hyper widths: transforms only
    bigger = SpatialAutoencoder((3, 64, 64), **SMALL, entropy="meanscale")  # larger crops from here
    assert bigger.init_from(start) is True and torch.equal(bigger.h_s[2].bias, start.h_s[2].bias)

    # Through training.train: a fine-tune (lr 0: nothing moves but what the start would do) keeps the start's prior.
    cfg = TrainConfig(
        model="spatial",
        model_args={**SMALL, "entropy": "meanscale"},
        data="digits",
        steps=1,
        limit=64,
        batch_size=16,
        rd_lambda=0.01,
        quant_noise="mixed",
        threads=1,
    )
    base = SpatialAutoencoder((1, 8, 8), **SMALL, entropy="meanscale")
    with torch.no_grad():
        base.z_prior.loc_raw.fill_(0.9)
    path = save_checkpoint(tmp_path / "start.pt", base, cfg, {"history": []})
    for entropy in ("meanscale", "checkerboard"):
        tuned = train(
            TrainConfig(
                **{
                    **cfg.__dict__,
                    "model_args": {**SMALL, "entropy": entropy},
                    "init_checkpoint": str(path),
                    "lr": 0.0,
                }
            ),
            progress=None,
        )[0]
        torch.testing.assert_close(tuned.z_prior.loc_raw, base.z_prior.loc_raw)

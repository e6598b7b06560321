"""Rate-distortion training: a learned factorised prior over integer-quantised codes.

The code is quantised on the integer grid (step 1) at export, so the prior is
one discrete distribution per code dimension over integers: a per-dimension
mixture of logistics integrated over unit bins, P(k) = CDF(k + 1/2) - CDF(k - 1/2).
During training the bins are evaluated at noisy codes (y + U(-1/2, 1/2)), the
differentiable proxy of rounding, so the rate term has useful gradients; the
decoder sees straight-through rounded codes ("mixed") or the noisy ones.

At the end of training the prior is tabulated on the integer grid that covers
the training codes and stored in the checkpoint record (plain JSON), from
which export builds the manifest's integer frequency tables; nothing of this
module runs on the edge or in the cloud.
"""

from __future__ import annotations

import math

import torch
from torch import nn

PROXIES = ("none", "noise", "ste", "mixed")
LIKELIHOOD_FLOOR = 1e-9  # keeps log2 finite for codes far in a tail
MAX_GRID_BITS = 12  # export's entropy tables support up to 12-bit symbols


def quantize_proxy(code: torch.Tensor, proxy: str, training: bool) -> torch.Tensor:
    """What the decoder sees: a differentiable stand-in for rounding in training, rounding in eval."""
    if proxy == "none":
        return code
    if proxy not in PROXIES:
        raise ValueError(f"quant proxy must be one of {PROXIES}, got {proxy!r}")
    if not training:
        return torch.round(code)
    if proxy == "noise":
        return code + torch.empty_like(code).uniform_(-0.5, 0.5)
    return code + (torch.round(code) - code).detach()  # ste and mixed: straight-through rounding


class FactorizedLogisticPrior(nn.Module):
    """Per-dimension mixture of K logistics; likelihoods of unit-width bins around the code values."""

    # Parameters are stored divided by GAIN: Adam's step is ~lr in the stored value, so the prior
    # adapts GAIN times faster than the autoencoder's weights and keeps up with the moving codes.
    GAIN = 5.0

    def __init__(self, dims: int, components: int = 3, init_scale: float = 4.0):
        super().__init__()
        self.dims = int(dims)
        spread = torch.linspace(-1.0, 1.0, components) if components > 1 else torch.zeros(1)
        self.loc_raw = nn.Parameter(spread.repeat(self.dims, 1).clone() / self.GAIN)
        self.log_scale_raw = nn.Parameter(
            torch.full((self.dims, components), math.log(init_scale) / self.GAIN)
        )
        self.logit_weight_raw = nn.Parameter(torch.zeros(self.dims, components))

    @torch.no_grad()
    def init_from(self, codes: torch.Tensor) -> None:
        """Data-dependent start: centre the mixture on each dimension's codes, logistic scale ~ their spread."""
        mean, std = codes.mean(0), codes.std(0).clamp_min(0.5)
        k = self.loc_raw.shape[1]
        spread = torch.linspace(-0.5, 0.5, k) if k > 1 else torch.zeros(1)
        self.loc_raw.copy_((mean[:, None] + spread[None, :] * std[:, None]) / self.GAIN)
        self.log_scale_raw.copy_(torch.log(0.55 * std)[:, None].expand(-1, k) / self.GAIN)

    @property
    def loc(self) -> torch.Tensor:
        return self.loc_raw * self.GAIN

    @property
    def log_scale(self) -> torch.Tensor:
        return self.log_scale_raw * self.GAIN

    def _cdf_mass(self, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
        """Mass in [lower, upper] per (N, D), with the sign trick so tails do not cancel to zero."""
        lo = lower.unsqueeze(-1)
        up = upper.unsqueeze(-1)
        loc = self.loc
        inv = torch.exp(-self.log_scale)
        a = (lo - loc) * inv
        b = (up - loc) * inv
        sign = -torch.sign(a + b).detach()
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        mass = torch.abs(torch.sigmoid(sign * b) - torch.sigmoid(sign * a))
        w = torch.softmax(self.logit_weight_raw * self.GAIN, dim=-1)
        return (mass * w).sum(-1)

    def likelihood(self, y: torch.Tensor) -> torch.Tensor:
        """P(bin of width 1 centred on y), (N, D); y is noisy in training, integer in eval."""
        return self._cdf_mass(y - 0.5, y + 0.5).clamp_min(LIKELIHOOD_FLOOR)

    def bits(self, y: torch.Tensor) -> torch.Tensor:
        """Code length in bits per item, (N,)."""
        return -torch.log2(self.likelihood(y)).sum(dim=1)

    @torch.no_grad()
    def table(self, lo: int, hi: int) -> torch.Tensor:
        """(D, hi - lo + 1) probabilities of the integers lo..hi; the end bins absorb the tails (clipping)."""
        k = torch.arange(lo, hi + 1, dtype=torch.float32)
        edges = torch.cat([k - 0.5, k[-1:] + 0.5])  # bin edges, (levels + 1,)
        big = torch.full((1,), 1e6)
        edges[0], edges[-1] = -big, big
        e = edges.unsqueeze(1).expand(-1, self.dims)  # (levels + 1, D): rows are "items" for _cdf_mass
        mass = self._cdf_mass(e[:-1], e[1:]).t().double()
        return mass.clamp_min(0) / mass.sum(dim=1, keepdim=True)


def grid_bits(codes: torch.Tensor) -> int:
    """Fewest bits b whose integer grid [-2^(b-1), 2^(b-1) - 1] holds every rounded training code."""
    r = torch.round(codes)
    need = max(int(r.max()), int(-r.min()) - 1, 1)
    b = 2
    while (1 << (b - 1)) - 1 < need and b < MAX_GRID_BITS:
        b += 1
    return b


class RateDistortion(nn.Module):
    """loss = distortion + lambda * rate, per item, averaged over the batch.

    distortion "mse" is the squared error summed over pixels in [0, 1] space (what
    PSNR measures); "model" is the model's own reconstruction loss (BCE or MSE).
    """

    def __init__(self, code_dims: int, rd_lambda: float, distortion: str = "mse", components: int = 3):
        super().__init__()
        if distortion not in ("mse", "model"):
            raise ValueError(f"rd distortion must be 'mse' or 'model', got {distortion!r}")
        self.prior = FactorizedLogisticPrior(code_dims, components)
        self.rd_lambda = float(rd_lambda)
        self.distortion = distortion
        self._started = False  # the prior is fitted to the first batch's codes

    def noisy(self, code: torch.Tensor) -> torch.Tensor:
        return code + torch.empty_like(code).uniform_(-0.5, 0.5) if self.training else torch.round(code)

    def terms(self, model, out: dict, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(distortion, bits) per item averaged over the batch."""
        if self.distortion == "mse":
            dist = ((out["x_hat"] - x01) ** 2).flatten(1).sum(1).mean()
        else:
            dist = model.reconstruction_loss(out, x01)
        code = out["code"].flatten(1)
        if not self._started and self.training:
            self.prior.init_from(code.detach())
            self._started = True
        bits = self.prior.bits(self.noisy(code)).mean()
        return dist, bits

    def loss(self, model, out: dict, x01: torch.Tensor) -> torch.Tensor:
        dist, bits = self.terms(model, out, x01)
        return dist + self.rd_lambda * bits

    @torch.no_grad()
    def export_record(self, model, x01: torch.Tensor, batch_size: int = 1000) -> dict:
        """The tabulated prior and the measured rate on x01, for the checkpoint record (JSON)."""
        was = model.training, self.training
        model.eval()
        self.eval()
        codes = []
        for i in range(0, len(x01), batch_size):
            codes.append(model(x01[i : i + batch_size])["code"].flatten(1))
        z = torch.cat(codes)
        b = grid_bits(z)
        lo, hi = -(1 << (b - 1)), (1 << (b - 1)) - 1
        probs = self.prior.table(lo, hi)
        model.train(was[0])
        self.train(was[1])
        return {
            "grid_bits": b,
            "lo": lo,
            "hi": hi,
            "components": int(self.prior.loc.shape[1]),
            "rd_lambda": self.rd_lambda,
            "train_bits_per_item": float(self.prior.bits(torch.round(z)).mean()),
            "probs": [[float(v) for v in row] for row in probs],
        }


class ModelRate(nn.Module):
    """loss = squared error + lambda * bits, for models that carry their own entropy model (out["bits"]).

    Spatial code maps (training/models/spatial.py) rate their codes with a per-channel prior or a
    hyperprior inside the model; the export reads the tables from the model's own parameters.
    """

    def __init__(self, rd_lambda: float, distortion: str = "mse", prior_trained: bool = False):
        super().__init__()
        if distortion != "mse":
            raise ValueError("models with their own entropy model train with rd distortion 'mse'")
        self.rd_lambda = float(rd_lambda)
        # the priors start from the first batch's codes, unless the model's own were trained (a fine-tune)
        self._started = bool(prior_trained)

    def terms(self, model, out: dict, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self._started:
            model.init_priors(x01)
            self._started = True
        dist = ((out["x_hat"] - x01) ** 2).flatten(1).sum(1).mean()
        return dist, out["bits"].mean()

    def loss(self, model, out: dict, x01: torch.Tensor) -> torch.Tensor:
        dist, bits = self.terms(model, out, x01)
        return dist + self.rd_lambda * bits

    @torch.no_grad()
    def export_record(self, model, x01: torch.Tensor, batch_size: int = 500, items: int = 5000) -> dict:
        was = model.training
        model.eval()
        bits = [model(x01[i : i + batch_size])["bits"] for i in range(0, min(len(x01), items), batch_size)]
        model.train(was)
        return {
            "kind": "model",
            "rd_lambda": self.rd_lambda,
            "train_bits_per_item": float(torch.cat(bits).mean()),
        }


def build_rate(
    model, rd_lambda: float, distortion: str = "mse", prior_trained: bool = False
) -> RateDistortion | ModelRate:
    """A rate-distortion objective: the model's own entropy model if it has one, else a factorised prior.
    prior_trained: the model's entropy model came trained from a start (kept, not refitted to one batch)."""
    if hasattr(model, "init_priors"):
        return ModelRate(rd_lambda, distortion, prior_trained)
    return RateDistortion(math.prod(model.code_shape), rd_lambda, distortion)


def learned_payload(rate_prior: dict, code_dims: int, refit_symbols=None):
    """Checkpoint record's prior -> (integer-grid Quantiser, integer-table FactorizedPrior) for the manifest.

    The affine quantiser with lo = -2^(b-1), hi = 2^(b-1) - 1 has step exactly 1,
    so its symbols are the rounded codes the prior was trained on. With
    refit_symbols (training codes quantised on that grid) the tables are
    counted instead of learned: a check on how well the learned prior fits.
    """
    import numpy as np

    from latent_codec.factorized_prior import FactorizedPrior
    from latent_codec.quantisation import Quantiser

    b = int(rate_prior["grid_bits"])
    lo, hi = -(1 << (b - 1)), (1 << (b - 1)) - 1
    q = Quantiser("affine", b, [float(lo)] * code_dims, [float(hi)] * code_dims)
    if refit_symbols is not None:
        return q, FactorizedPrior.fit(refit_symbols, q.levels)
    probs = np.asarray(rate_prior["probs"], dtype=np.float64)
    if probs.shape != (code_dims, q.levels):
        raise ValueError(f"learned prior is {probs.shape}, code needs ({code_dims}, {q.levels})")
    return q, FactorizedPrior.from_probabilities(probs)

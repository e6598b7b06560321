"""Penalties added to the reconstruction loss: sparse (L1 on codes, KL towards a target activation rho),
contractive (squared Frobenius norm of the encoder Jacobian), and the overcomplete-code guard.

L2 weight decay is the optimiser's ``weight_decay`` (TrainConfig.weight_decay); denoising is
training/noise.py. All penalties are per item, averaged over the batch, like the reconstruction loss,
so their weights mean the same thing at any batch size.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import torch

OVERCOMPLETE_MESSAGE = (
    "the code ({code} values) is at least as wide as the input ({inp} values): an {kind} autoencoder "
    "can learn the identity map (copy x into the code and back) and reach zero reconstruction error "
    "without learning anything about the data. Add a regulariser that makes copying fail: denoising "
    "(--mask-noise Q or --gauss-noise SIGMA), sparsity (--l1 LAMBDA or --kl-sparsity BETA) or "
    "contractive (--contractive LAMBDA); or use a smaller code_dim."
)


def kl_sparsity(rho_hat: torch.Tensor, rho: float) -> torch.Tensor:
    """sum_l rho log(rho / rho_hat_l) + (1 - rho) log((1 - rho) / (1 - rho_hat_l)): zero iff rho_hat = rho."""
    if not 0.0 < rho < 1.0:
        raise ValueError(f"sparsity target rho must be in (0, 1), got {rho}")
    r = rho_hat.clamp(1e-6, 1 - 1e-6)
    return (rho * torch.log(rho / r) + (1 - rho) * torch.log((1 - rho) / (1 - r))).sum()


def l1_activity(code: torch.Tensor) -> torch.Tensor:
    """lambda-free L1 of code activations: sum_i |a_i| per item, mean over the batch."""
    return code.flatten(1).abs().sum(1).mean()


def jacobian_frobenius_sq(
    code: torch.Tensor, x: torch.Tensor, samples: int = 0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-item ||d code / d x||_F^2, differentiable.

    samples=0: exact, one vector-Jacobian product per code unit (k of them). samples=m > 0: the
    unbiased Hutchinson estimate mean_m ||J^T e_m||^2 with e_m ~ N(0, I_k) (E[e e^T] = I, so
    E||J^T e||^2 = tr(J J^T) = ||J||_F^2): m products instead of k, for wide codes or big encoders.

    Items are independent, so d(sum_n code[n, j]) / d x[n] is row j of item n's Jacobian: k products
    cover the whole batch. Tries one batched call first and falls back to a loop over units.
    """
    c = code.flatten(1)
    k = c.shape[1]
    if samples > 0:
        total = torch.zeros(c.shape[0], dtype=c.dtype)
        for _ in range(samples):
            e = torch.randn(c.shape, generator=generator, dtype=c.dtype)
            (g,) = torch.autograd.grad(c, x, grad_outputs=e, create_graph=True)
            total = total + g.pow(2).flatten(1).sum(1)
        return total / samples
    try:
        eye = torch.eye(k, dtype=c.dtype).unsqueeze(1).expand(k, c.shape[0], k)
        (g,) = torch.autograd.grad(c, x, grad_outputs=eye, is_grads_batched=True, create_graph=True)
        return g.pow(2).flatten(2).sum(2).sum(0)
    except RuntimeError:
        total = torch.zeros(c.shape[0], dtype=c.dtype)
        for j in range(k):
            (g,) = torch.autograd.grad(c[:, j].sum(), x, create_graph=True)
            total = total + g.pow(2).flatten(1).sum(1)
        return total


def has_sigmoid_code(model) -> bool:
    return model.args.get("code_activation") == "sigmoid"


def check_overcomplete(model, regularised: bool) -> None:
    """Refuse codes at least as wide as the input unless something stops the identity solution."""
    code = math.prod(model.code_shape)
    inp = math.prod(model.input_shape)
    if code >= inp and not regularised:
        kind = "overcomplete" if code > inp else "complete"
        raise ValueError(OVERCOMPLETE_MESSAGE.format(code=code, inp=inp, kind=kind))


@dataclass
class Regularizers:
    l1: float = 0.0  # lambda of the L1 activity penalty
    kl: float = 0.0  # beta, weight of the KL sparsity penalty (sigmoid codes)
    rho: float = 0.05  # target mean activation for KL
    contractive: float = 0.0  # lambda of ||J_f(x)||_F^2
    contractive_samples: int = 0  # 0 = exact Jacobian norm; m = Hutchinson estimate with m projections
    seed: int = 0  # the Hutchinson projections' own generator: reproducible, global RNG untouched
    _sum: torch.Tensor | None = field(default=None, repr=False)
    _count: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator().manual_seed(self.seed + 104729)

    @classmethod
    def from_config(cls, cfg, model, denoising: bool = False) -> Regularizers:
        """Build from TrainConfig fields and validate them against the model (before any training)."""
        reg = cls(
            getattr(cfg, "l1", 0.0),
            getattr(cfg, "kl_sparsity", 0.0),
            getattr(cfg, "sparsity_target", 0.05),
            getattr(cfg, "contractive", 0.0),
            getattr(cfg, "contractive_samples", 0),
            getattr(cfg, "seed", 0),
        )
        for name in ("l1", "kl", "contractive"):
            if getattr(reg, name) < 0:
                raise ValueError(f"{name} weight must be >= 0")
        if reg.kl > 0:
            kl_sparsity(torch.zeros(1), reg.rho)  # validates rho
            if not has_sigmoid_code(model):
                raise ValueError(
                    "the KL sparsity penalty needs code activations in (0, 1), read as firing "
                    "probabilities: use --arg code_activation='sigmoid' (or the L1 penalty --l1)"
                )
        # A rate penalty bounds the code's information too: wide spatial code maps train under it.
        rate = getattr(cfg, "rd_lambda", 0.0) > 0
        check_overcomplete(model, regularised=denoising or reg.active or rate)
        return reg

    @property
    def sparse(self) -> bool:
        return self.l1 > 0 or self.kl > 0

    @property
    def active(self) -> bool:
        return self.sparse or self.contractive > 0

    def __call__(self, model, x_in: torch.Tensor, out: dict) -> torch.Tensor | float:
        """The penalty for one batch; x_in is what the model was fed (corrupted or not), out its forward()."""
        if not self.active:
            return 0.0
        penalty = torch.zeros(())
        code = out["code"].flatten(1)
        if self.sparse:
            rho_hat = code.mean(0)
            self._sum = rho_hat.detach() * len(code) + (0 if self._sum is None else self._sum)
            self._count += len(code)
            if self.l1 > 0:
                penalty = penalty + self.l1 * l1_activity(code)
            if self.kl > 0:
                penalty = penalty + self.kl * kl_sparsity(rho_hat, self.rho)
        if self.contractive > 0:
            xn = model.normalize(x_in).detach().requires_grad_(True)
            c, _ = model.encode(xn)
            jf = jacobian_frobenius_sq(c, xn, self.contractive_samples, self.generator)
            penalty = penalty + self.contractive * jf.mean()
        return penalty

    def epoch_report(self, progress: bool | None = None) -> dict:
        """Mean activation rho_hat per code unit over the epoch (sparse training only); resets the sums."""
        if not self.sparse or self._sum is None:
            return {}
        rho_hat = (self._sum / max(self._count, 1)).tolist()
        self._sum, self._count = None, 0
        rep = {"rho_hat": [round(r, 5) for r in rho_hat], "rho_hat_mean": sum(rho_hat) / len(rho_hat)}
        if progress is not None:
            target = f" (target rho {self.rho:g})" if self.kl > 0 else ""
            print(
                f"  mean code activation rho_hat per unit: mean {rep['rho_hat_mean']:.4f}, "
                f"min {min(rho_hat):.4f}, max {max(rho_hat):.4f}{target}",
                file=sys.stderr,
            )
        return rep

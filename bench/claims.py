"""What each regulariser of the notes claims, measured on a trained model (float torch reconstructions), and
the calibration that makes each penalty matter.

Calibration (``strength``): a penalty's weight is set from the variant's *plain twin* (same architecture,
same budget, no penalty) so that, at the twin's solution, the penalty would be ``factor`` times the twin's
excess reconstruction loss: lambda = factor * E / Omega. E is the reconstruction loss minus its floor (for
binary cross-entropy on grey pixels the floor is the targets' own entropy, sum_j H(x_j), which no model can
go below and which carries no gradient; for squared error it is 0), Omega the penalty's value on the twin.
factor 1 means "as large as what is left to learn"; the benchmark sweeps a decade either side.
"""

from __future__ import annotations

import torch

from latent_codec.metrics import psnr_from_mse
from training.noise import gaussian_noise, mask_noise
from training.regularizers import jacobian_frobenius_sq, kl_sparsity

NEAR_ZERO = 0.01  # a code value below this (in magnitude) counts as "not firing"

PENALTIES = ("l1", "kl_sparsity", "contractive", "weight_decay")


def excess_loss(model, x: torch.Tensor) -> float:
    """Mean per-item reconstruction loss above its floor (what the model can still learn)."""
    with torch.no_grad():
        loss = float(model.reconstruction_loss(model(x), x))
    if model.loss_name != "bce":
        return loss
    entropy = -(torch.special.xlogy(x, x) + torch.special.xlogy(1 - x, 1 - x))
    return loss - float(entropy.flatten(1).sum(1).mean())


def code_values(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)["code"].flatten(1)


def jacobian_sq(model, x: torch.Tensor, batch: int = 250) -> float:
    """Mean exact ||d code / d x||_F^2 per item (the contractive penalty's quantity)."""
    total = 0.0
    for i in range(0, len(x), batch):
        xn = model.normalize(x[i : i + batch]).detach().requires_grad_(True)
        c, _ = model.encode(xn)
        total += float(jacobian_frobenius_sq(c, xn).detach().sum())
    return total / len(x)


def weight_sq(model) -> float:
    """sum theta^2 over every parameter (Adam's weight_decay acts on all of them)."""
    return float(sum(float((p.detach() ** 2).sum()) for p in model.parameters()))


def penalty_value(kind: str, model, x: torch.Tensor, rho: float) -> float:
    """Omega of a penalty on the (plain) model, as training would add it per item."""
    if kind == "l1":
        return float(code_values(model, x).abs().sum(1).mean())
    if kind == "kl_sparsity":
        return float(kl_sparsity(code_values(model, x).mean(0), rho))
    if kind == "contractive":
        return jacobian_sq(model, x)
    if (
        kind == "weight_decay"
    ):  # Adam adds lambda * theta to the gradient: d/dtheta of (lambda / 2) ||theta||^2
        return 0.5 * weight_sq(model)
    raise ValueError(f"unknown penalty {kind!r}; known: {', '.join(PENALTIES)}")


def strength(kind: str, factor: float, twin, x_val: torch.Tensor, rho: float = 0.05) -> float:
    """lambda such that lambda * Omega(twin) = factor * excess loss(twin) (module docstring)."""
    omega = penalty_value(kind, twin, x_val, rho)
    if not omega > 0:
        raise ValueError(f"the plain twin's {kind} penalty is {omega}: nothing to calibrate against")
    return factor * excess_loss(twin, x_val) / omega


def float_mse(model, x: torch.Tensor, x_in: torch.Tensor | None = None, batch: int = 1000) -> float:
    """Pixel MSE of the model's float reconstructions of x_in (default x) against x, on [0, 1]."""
    x_in = x if x_in is None else x_in
    se = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            se += float(((model(x_in[i : i + batch])["x_hat"].clamp(0, 1) - x[i : i + batch]) ** 2).sum())
    return se / x.numel()


def corrupted_psnr(model, x: torch.Tensor, mask_q: float = 0.0, sigma: float = 0.0, seed: int = 0) -> float:
    """PSNR of the reconstruction of corrupted inputs against the clean items (the denoising claim)."""
    g = torch.Generator().manual_seed(seed)
    x_in = gaussian_noise(mask_noise(x, mask_q, g), sigma, g)
    return psnr_from_mse(float_mse(model, x, x_in))


def code_stats(model, x: torch.Tensor) -> dict:
    c = code_values(model, x)
    rho_hat = c.mean(0)
    return {
        "near_zero_codes": float((c.abs() < NEAR_ZERO).float().mean()),
        "code_l1": float(c.abs().sum(1).mean()),
        "rho_hat_mean": float(rho_hat.mean()),
        "rho_hat_max": float(rho_hat.max()),
    }


def generalisation(model, x_train: torch.Tensor, x_test: torch.Tensor) -> dict:
    """Float MSE on training and test items and the gap (test - train): what weight decay and tying claim."""
    train, test = float_mse(model, x_train), float_mse(model, x_test)
    return {"train_mse": train, "test_mse_float": test, "gap_mse": test - train}

"""Input corruption for denoising autoencoders: the network sees x~ and is trained to give back the clean x.

Applied in [0, 1] pixel space, before any standardisation, so "set to 0" means a black pixel
whatever the model's input normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def mask_noise(x: torch.Tensor, q: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Masking noise: each input independently set to 0 with probability q, kept with 1 - q."""
    if not 0.0 <= q < 1.0:
        raise ValueError(f"masking probability q must be in [0, 1), got {q}")
    if q == 0.0:
        return x
    keep = torch.rand(x.shape, generator=generator, dtype=x.dtype) >= q
    return x * keep


def gaussian_noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Additive isotropic Gaussian noise x + N(0, sigma^2); not clipped (the encoder accepts any real input)."""
    if sigma < 0:
        raise ValueError(f"Gaussian noise sigma must be >= 0, got {sigma}")
    if sigma == 0.0:
        return x
    return x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)


@dataclass
class Corruption:
    """The training-time corruption q_D(x~ | x): masking, then additive Gaussian (either may be off)."""

    mask_q: float = 0.0
    gauss_sigma: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        mask_noise(torch.zeros(0), self.mask_q)  # validate early, with the message
        gaussian_noise(torch.zeros(0), self.gauss_sigma)
        # A dedicated generator: the corruption is reproducible and does not shift the batch order.
        self.generator = torch.Generator().manual_seed(self.seed + 7919)

    @classmethod
    def from_config(cls, cfg) -> Corruption:
        return cls(getattr(cfg, "mask_noise", 0.0), getattr(cfg, "gauss_noise", 0.0), getattr(cfg, "seed", 0))

    @property
    def active(self) -> bool:
        return self.mask_q > 0 or self.gauss_sigma > 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        return gaussian_noise(mask_noise(x, self.mask_q, self.generator), self.gauss_sigma, self.generator)

"""Input corruption for denoising autoencoders: the network sees x~ and is trained to give back the clean x.

Applied in [0, 1] pixel space, before any standardisation, so "set to 0" means a black pixel
whatever the model's input normalisation. Three kinds: masking (pixels dropped independently),
additive Gaussian, and block masks (a square hole at a random place: inpainting). By default the
active kinds compose (mask, then hole, then noise); ``mix`` instead gives each item exactly one of
them, chosen uniformly, so one bundle learns to serve every kind. ``clip`` keeps the corrupted input
in [0, 1]: what a device sends is pixels, so a bundle that serves noisy items should train on clipped ones.
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


def block_holes(shape: tuple[int, ...], size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Boolean (N, 1, H, W) masks, True inside one size x size square per item at a uniformly random place."""
    n, h, w = shape[0], shape[-2], shape[-1]
    if not 0 < size <= min(h, w):
        raise ValueError(f"block size must be in 1..{min(h, w)} for {h}x{w} items, got {size}")
    top = torch.randint(0, h - size + 1, (n,), generator=generator)
    left = torch.randint(0, w - size + 1, (n,), generator=generator)
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    inside = (rows >= top.view(n, 1, 1)) & (rows < (top + size).view(n, 1, 1))
    inside = inside & (cols >= left.view(n, 1, 1)) & (cols < (left + size).view(n, 1, 1))
    return inside.unsqueeze(1)


def block_noise(x: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Block masks (inpainting): one size x size square per item, at a random place, set to 0 in every channel."""
    if size == 0:
        return x
    if x.dim() != 4:
        raise ValueError(f"block masks need items (N, C, H, W), got shape {tuple(x.shape)}")
    return x.masked_fill(block_holes(tuple(x.shape), size, generator), 0.0)


@dataclass
class Corruption:
    """The training-time corruption q_D(x~ | x): masking, block holes, additive Gaussian (any may be off)."""

    mask_q: float = 0.0
    gauss_sigma: float = 0.0
    seed: int = 0
    block: int = 0  # side of the square hole (0 = off)
    mix: bool = False  # each item gets one active kind, chosen uniformly, instead of all of them
    clip: bool = False  # corrupted inputs clipped to [0, 1] (pixels, as a device sends them)

    def __post_init__(self) -> None:
        mask_noise(torch.zeros(0), self.mask_q)  # validate early, with the message
        gaussian_noise(torch.zeros(0), self.gauss_sigma)
        if self.block < 0:
            raise ValueError(f"block size must be >= 0, got {self.block}")
        if self.mix and len(self.kinds) < 2:
            raise ValueError(
                "mixing corruptions needs at least two kinds on (--mask-noise, --gauss-noise, --block-noise)"
            )
        # A dedicated generator: the corruption is reproducible and does not shift the batch order.
        self.generator = torch.Generator().manual_seed(self.seed + 7919)

    @classmethod
    def from_config(cls, cfg) -> Corruption:
        return cls(
            getattr(cfg, "mask_noise", 0.0),
            getattr(cfg, "gauss_noise", 0.0),
            getattr(cfg, "seed", 0),
            getattr(cfg, "block_noise", 0),
            getattr(cfg, "noise_mix", False),
            getattr(cfg, "noise_clip", False),
        )

    @property
    def kinds(self) -> list[str]:
        return [
            k
            for k, on in (
                ("mask", self.mask_q > 0),
                ("block", self.block > 0),
                ("gauss", self.gauss_sigma > 0),
            )
            if on
        ]

    @property
    def active(self) -> bool:
        return bool(self.kinds)

    def _one(self, kind: str, x: torch.Tensor) -> torch.Tensor:
        if kind == "mask":
            return mask_noise(x, self.mask_q, self.generator)
        if kind == "block":
            return block_noise(x, self.block, self.generator)
        return gaussian_noise(x, self.gauss_sigma, self.generator)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return x
        if self.mix:
            kinds = self.kinds
            pick = torch.randint(0, len(kinds), (len(x),), generator=self.generator)
            out = x.clone()
            for i, kind in enumerate(kinds):
                sel = pick == i
                if bool(sel.any()):
                    out[sel] = self._one(kind, x[sel])
        else:
            out = x
            for kind in self.kinds:
                out = self._one(kind, out)
        return out.clamp(0.0, 1.0) if self.clip else out

"""Convolutional autoencoder: conv + pooling encoder, transposed-convolution decoder."""
from __future__ import annotations

import torch
from torch import nn

from ..registry import register_model
from .base import Autoencoder


@register_model("conv")
class ConvAutoencoder(Autoencoder):
    """Conv blocks each halving H and W, a linear bottleneck to code_dim, and the mirror.

    pool: "max" | "avg" (pooling layers) or "stride" (strided convolution).
    up: "deconv" (transposed convolution, kernel = stride = 2: u x v -> 2u x 2v).
    """

    def __init__(
        self,
        input_shape=(1, 28, 28),
        code_dim: int = 32,
        channels: tuple[int, ...] | list[int] = (32, 64),
        pool: str = "max",
        up: str = "deconv",
        output: str = "sigmoid",
        standardize: bool = False,
    ):
        super().__init__(input_shape, output, standardize)
        c_in, h, w = self.input_shape
        factor = 2 ** len(channels)
        if h % factor or w % factor:
            raise ValueError(f"input {h}x{w} must be divisible by {factor} for {len(channels)} pooling stages")
        if pool not in ("max", "avg", "stride"):
            raise ValueError(f"pool must be max, avg or stride, got {pool!r}")
        if up not in ("deconv",):
            raise ValueError(f"up must be 'deconv', got {up!r}")
        enc: list[nn.Module] = []
        prev = c_in
        for c in channels:
            if pool == "stride":
                enc += [nn.Conv2d(prev, c, 3, stride=2, padding=1), nn.ReLU()]
            else:
                enc += [nn.Conv2d(prev, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2)]
            prev = c
        self.features = nn.Sequential(*enc)
        self.bottom = (prev, h // factor, w // factor)
        flat = prev * (h // factor) * (w // factor)
        self.to_code = nn.Linear(flat, code_dim)
        self.from_code = nn.Linear(code_dim, flat)
        dec: list[nn.Module] = []
        rev = list(channels)[::-1]
        for i, c in enumerate(rev):
            nxt = rev[i + 1] if i + 1 < len(rev) else c
            dec += [nn.ConvTranspose2d(c, nxt, 2, stride=2), nn.ReLU()]
        dec.append(nn.Conv2d(rev[-1], c_in, 3, padding=1))  # mix the last upsampled features to pixels
        self.upsample = nn.Sequential(*dec)
        self.args.update(code_dim=code_dim, channels=list(channels), pool=pool, up=up)

    def encode(self, x):
        return self.to_code(self.features(x).flatten(1)), {}

    def decode_logits(self, code, side):
        h = torch.relu(self.from_code(code)).view(-1, *self.bottom)
        return self.upsample(h)

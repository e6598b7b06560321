"""Unpooling layers that mirror 2x2 pooling, and the conversion of max-pool switches to/from 2-bit form.

Why local switches: MaxPool2d records the argmax as a *global* flat index into
each H x W plane (0..H*W-1, ~10+ bits). The decoder only needs the position
inside each 2x2 window (0..3, 2 bits), so that is what the encoder emits and
what the payload carries; the decoder rebuilds the global indices that
MaxUnpool2d wants. Both conversions are plain tensor arithmetic, so they are
part of the exported ONNX graphs.
"""

from __future__ import annotations

import torch
from torch import nn

PATCH = 2  # the mirrored pooling layers are 2x2, stride 2
SWITCH_BITS = 2  # log2(PATCH * PATCH)


def avg_unpool(x: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """Average unpooling: copy each value into its whole patch x patch block ((u, v) -> (u*p, v*p))."""
    return x.repeat_interleave(patch, dim=-2).repeat_interleave(patch, dim=-1)


def global_to_local(indices: torch.Tensor, width: int, patch: int = PATCH) -> torch.Tensor:
    """MaxPool2d indices (flat r*W + c in the input plane) -> position in the window, (r%p)*p + c%p."""
    r = torch.div(indices, width, rounding_mode="floor")
    c = indices - r * width
    return torch.remainder(r, patch) * patch + torch.remainder(c, patch)


def local_to_global(local: torch.Tensor, width: int, patch: int = PATCH) -> torch.Tensor:
    """Inverse of global_to_local for windows tiling the plane: window (i, j) starts at (p*i, p*j)."""
    local = local.to(torch.int64)
    h, w = local.shape[-2], local.shape[-1]
    i = torch.arange(h, dtype=torch.int64, device=local.device).view(h, 1)
    j = torch.arange(w, dtype=torch.int64, device=local.device).view(1, w)
    dr = torch.div(local, patch, rounding_mode="floor")
    dc = local - dr * patch
    return (patch * i + dr) * width + (patch * j + dc)


class MaxPoolSwitches(nn.Module):
    """2x2 max pooling that also returns the local switches (int64, 0..3)."""

    def __init__(self, patch: int = PATCH):
        super().__init__()
        self.patch = patch
        self.pool = nn.MaxPool2d(patch, return_indices=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, idx = self.pool(x)
        return y, global_to_local(idx, x.shape[-1], self.patch)


class MaxUnpoolSwitches(nn.Module):
    """Max unpooling: each value goes back to the recorded argmax of its window; zeros elsewhere."""

    def __init__(self, patch: int = PATCH):
        super().__init__()
        self.patch = patch
        self.unpool = nn.MaxUnpool2d(patch)

    def forward(self, x: torch.Tensor, local: torch.Tensor) -> torch.Tensor:
        out_w = x.shape[-1] * self.patch
        return self.unpool(x, local_to_global(local, out_w, self.patch))


class RandomLocationUnpool(nn.Module):
    """The notes' other approximate inverse of pooling: each value goes to one location of its window
    picked at random, zeros elsewhere (no switches needed).

    The locations are drawn once per channel and window from ``seed`` and kept as a buffer (saved with
    the weights, a constant in the ONNX graph): decoding is deterministic, identical in torch and ONNX
    Runtime, and nothing travels with the code. shape = (C, H, W) of the pooled map.
    """

    def __init__(self, shape: tuple[int, int, int], generator: torch.Generator, patch: int = PATCH):
        super().__init__()
        self.patch = patch
        self.register_buffer("local", torch.randint(0, patch * patch, tuple(shape), generator=generator))
        self.unpool = MaxUnpoolSwitches(patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unpool(x, self.local.expand(x.shape[0], *self.local.shape))

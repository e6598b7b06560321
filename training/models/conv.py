"""Convolutional autoencoder: conv + pooling (or strided conv) encoder; the decoder mirrors it with
transposed convolution, average unpooling or max unpooling with switches."""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_model
from .base import Autoencoder
from .dense import ACTIVATIONS
from .unpool import SWITCH_BITS, MaxPoolSwitches, MaxUnpoolSwitches, avg_unpool

UPSAMPLING = ("deconv", "avg", "max")


@register_model("conv")
class ConvAutoencoder(Autoencoder):
    """Conv blocks each halving H and W, a linear bottleneck to code_dim, and the mirror.

    pool: "max" | "avg" (2x2 pooling layers) or "stride" (strided convolution).
    up:   "deconv" transposed convolution, kernel = stride = 2 (u x v -> 2u x 2v), then a 3x3 conv to pixels;
          "avg"    average unpooling (copy each value into its 2x2 patch) + 3x3 conv per block;
          "max"    max unpooling with switches (needs pool="max"): the encoder emits, per pooling layer,
                   the 2-bit position of each window's maximum as a side tensor ("switchesK"), sent
                   inside the payload, and the decoder puts each value back there (zeros elsewhere).
    code_activation: applied to the code ("sigmoid" for the KL sparsity penalty).
    kernel: encoder convolution size (3; 5 gives each stride-2 stage overlapping support, as in
          learned image codecs).
    hidden: 0 = one linear layer between features and code (and back); > 0 = an MLP with one hidden
          layer of this width on each side, so a small global code can be a nonlinear function of the
          features: what rate-distortion training at a few bytes per item needs (docs/rd.md).
    """

    def __init__(
        self,
        input_shape=(1, 28, 28),
        code_dim: int = 32,
        channels: tuple[int, ...] | list[int] = (32, 64),
        pool: str = "max",
        up: str = "deconv",
        code_activation: str = "linear",
        output: str = "sigmoid",
        standardize: bool = False,
        deconv_kernel: int = 4,
        kernel: int = 3,
        hidden: int = 0,
    ):
        super().__init__(input_shape, output, standardize)
        c_in, h, w = self.input_shape
        if deconv_kernel not in (2, 4):
            raise ValueError(
                f"deconv_kernel must be 2 (kernel = stride, no overlap) or 4 (overlapping), got {deconv_kernel}"
            )
        factor = 2 ** len(channels)
        if h % factor or w % factor:
            raise ValueError(
                f"input {h}x{w} must be divisible by {factor} for {len(channels)} pooling stages"
            )
        if pool not in ("max", "avg", "stride"):
            raise ValueError(f"pool must be max, avg or stride, got {pool!r}")
        if up not in UPSAMPLING:
            raise ValueError(f"up must be one of {', '.join(UPSAMPLING)}, got {up!r}")
        if up == "max" and pool != "max":
            raise ValueError(
                "up='max' (max unpooling) needs the switches of max pooling layers: use pool='max'"
            )
        if kernel not in (3, 5):
            raise ValueError(f"kernel must be 3 or 5, got {kernel}")
        if hidden < 0:
            raise ValueError(f"hidden must be >= 0 (0 = linear bottleneck), got {hidden}")
        if code_activation not in ACTIVATIONS:
            raise ValueError(f"code_activation must be one of {sorted(ACTIVATIONS)}, got {code_activation!r}")
        enc: list[nn.Module] = []
        prev = c_in
        for c in channels:
            if pool == "stride":
                enc += [nn.Conv2d(prev, c, kernel, stride=2, padding=kernel // 2), nn.ReLU()]
            else:
                p = (
                    (MaxPoolSwitches() if up == "max" else nn.MaxPool2d(2))
                    if pool == "max"
                    else nn.AvgPool2d(2)
                )
                enc += [nn.Conv2d(prev, c, kernel, padding=kernel // 2), nn.ReLU(), p]
            prev = c
        self.features = nn.Sequential(*enc)
        self.bottom = (prev, h // factor, w // factor)
        flat = prev * (h // factor) * (w // factor)
        if hidden:
            self.to_code = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, code_dim))
            self.from_code = nn.Sequential(nn.Linear(code_dim, hidden), nn.ReLU(), nn.Linear(hidden, flat))
        else:
            self.to_code = nn.Linear(flat, code_dim)
            self.from_code = nn.Linear(code_dim, flat)
        self.code_act = ACTIVATIONS[code_activation]()
        rev = list(channels)[::-1]
        self.up = up
        if up == "deconv":
            dec: list[nn.Module] = []
            for i, c in enumerate(rev):
                nxt = rev[i + 1] if i + 1 < len(rev) else c
                # kernel 4, stride 2, padding 1 also doubles u x v but overlaps neighbouring patches:
                # measured +0.4 dB over kernel 2 at equal epochs on Fashion-MNIST (no blocky 2x2 seams).
                k = deconv_kernel
                dec += [nn.ConvTranspose2d(c, nxt, k, stride=2, padding=(k - 2) // 2), nn.ReLU()]
            dec.append(nn.Conv2d(rev[-1], c_in, 3, padding=1))  # mix the last upsampled features to pixels
            self.upsample = nn.Sequential(*dec)
        else:
            # Mirror of each encoder block (conv, relu, pool): unpool, then a 3x3 conv back to the
            # block's input channels (ReLU except on the last, which gives pixel logits).
            self.unconvs = nn.ModuleList(
                nn.Conv2d(c, rev[i + 1] if i + 1 < len(rev) else c_in, 3, padding=1)
                for i, c in enumerate(rev)
            )
            self.unpool = MaxUnpoolSwitches() if up == "max" else None
        # Switch side tensors, outermost pooling layer first: switchesK is [C_K, H / 2^(K+1), W / 2^(K+1)].
        self._switch_shapes = (
            [[c, h // 2 ** (k + 1), w // 2 ** (k + 1)] for k, c in enumerate(channels)] if up == "max" else []
        )
        self.args.update(
            code_dim=code_dim,
            channels=list(channels),
            pool=pool,
            up=up,
            code_activation=code_activation,
            deconv_kernel=deconv_kernel,
            kernel=kernel,
            hidden=hidden,
        )

    def side_fields(self) -> list[dict]:
        return [
            {"name": f"switches{k}", "shape": s, "bits": SWITCH_BITS}
            for k, s in enumerate(self._switch_shapes)
        ]

    def encode(self, x):
        side: dict[str, torch.Tensor] = {}
        h = x
        for m in self.features:
            if isinstance(m, MaxPoolSwitches):
                h, s = m(h)
                side[f"switches{len(side)}"] = s
            else:
                h = m(h)
        return self.code_act(self.to_code(h.flatten(1))), side

    def decode_logits(self, code, side):
        h = torch.relu(self.from_code(code)).view(-1, *self.bottom)
        if self.up == "deconv":
            return self.upsample(h)
        n = len(self.unconvs)
        for i, conv in enumerate(self.unconvs):
            level = n - 1 - i  # the encoder pooling layer this block mirrors
            h = self.unpool(h, side[f"switches{level}"]) if self.up == "max" else avg_unpool(h)
            h = conv(h)
            if i < n - 1:
                h = torch.relu(h)
        return h

"""Convolutional autoencoder: conv + pooling (or strided conv) encoder; the decoder mirrors it with
transposed convolution, average unpooling, max unpooling with switches or random-location unpooling."""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_model
from .base import Autoencoder
from .dense import ACTIVATIONS
from .unpool import SWITCH_BITS, MaxPoolSwitches, MaxUnpoolSwitches, RandomLocationUnpool, avg_unpool

UPSAMPLING = ("deconv", "avg", "max", "random")
MAX_DECONV_KERNEL = 7


def deconv_output_size(u: int, s: int) -> int:
    """The notes' output size of a transposed convolution with stride s: u + u(s - 1)."""
    return u + u * (s - 1)


def transposed_conv(c_in: int, c_out: int, kernel: int, stride: int = 2) -> nn.ConvTranspose2d:
    """A transposed convolution that maps u x v to [u + u(s-1)] x [v + v(s-1)] for any kernel size.

    torch's output is (u - 1)s - 2p + K + o; padding p = ceil((K - s) / 2) (0 when K <= s) and output
    padding o = s + 2p - K make it us. kernel = stride: the notes' worked example (patches tile, no
    overlap); kernel = 2k + 1: the notes' (2k+1) x (2k+1) kernel (p = k, o = 1 at stride 2); kernel 4 at
    stride 2: overlapping patches (p = 1).
    """
    if kernel < 1 or stride < 1:
        raise ValueError(f"kernel and stride must be >= 1, got kernel {kernel}, stride {stride}")
    pad = max(0, -(-(kernel - stride) // 2))
    out_pad = stride + 2 * pad - kernel
    if not 0 <= out_pad < stride:
        raise ValueError(f"a kernel of {kernel} at stride {stride} cannot give u + u(s-1) outputs")
    return nn.ConvTranspose2d(c_in, c_out, kernel, stride=stride, padding=pad, output_padding=out_pad)


@register_model("conv")
class ConvAutoencoder(Autoencoder):
    """Conv blocks each halving H and W, a linear bottleneck to code_dim, and the mirror.

    pool: "max" | "avg" (2x2 pooling layers) or "stride" (strided convolution).
    up:   "deconv" transposed convolution, stride 2 (u x v -> 2u x 2v, transposed_conv), then a 3x3 conv to
                   pixels; deconv_kernel 2 (= stride), 4 (overlapping) or 2k+1 (the notes' odd kernel);
          "avg"    average unpooling (copy each value into its 2x2 patch) + 3x3 conv per block;
          "max"    max unpooling with switches (needs pool="max"): the encoder emits, per pooling layer,
                   the 2-bit position of each window's maximum as a side tensor ("switchesK"), sent
                   inside the payload, and the decoder puts each value back there (zeros elsewhere);
          "random" the notes' random-location inverse of pooling (pool "max" or "avg"): each value goes to
                   one location of its window drawn once from unpool_seed (RandomLocationUnpool), zeros
                   elsewhere, + 3x3 conv per block; no side information.
    Inputs whose height or width is not a multiple of 2^blocks (28 x 28 with three blocks) are zero-padded
    to the next multiple (28 -> 32, centred) before the first block, and the decoder's output is cropped
    back: the notes' three-block network on 28 x 28 is channels=(16, 8, 8).
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
        loss: str | None = None,
        unpool_seed: int = 0,
    ):
        super().__init__(input_shape, output, standardize, loss)
        c_in, h0, w0 = self.input_shape
        if not 1 <= deconv_kernel <= MAX_DECONV_KERNEL:
            raise ValueError(
                f"deconv_kernel must be 2 (kernel = stride, no overlap), 4 (overlapping) or an odd 2k+1 "
                f"up to {MAX_DECONV_KERNEL}, got {deconv_kernel}"
            )
        factor = 2 ** len(channels)
        h, w = -(-h0 // factor) * factor, -(-w0 // factor) * factor  # padded to a multiple of 2^blocks
        top, left = (h - h0) // 2, (w - w0) // 2
        self.pad = (left, w - w0 - left, top, h - h0 - top)  # F.pad order: left, right, top, bottom
        if pool not in ("max", "avg", "stride"):
            raise ValueError(f"pool must be max, avg or stride, got {pool!r}")
        if up not in UPSAMPLING:
            raise ValueError(f"up must be one of {', '.join(UPSAMPLING)}, got {up!r}")
        if up == "max" and pool != "max":
            raise ValueError(
                "up='max' (max unpooling) needs the switches of max pooling layers: use pool='max'"
            )
        if up == "random" and pool == "stride":
            raise ValueError("up='random' inverts pooling layers: use pool='max' or pool='avg'")
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
                dec += [transposed_conv(c, nxt, deconv_kernel, 2), nn.ReLU()]
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
            if up == "random":  # one fixed random location per channel and window, per pooling layer
                g = torch.Generator().manual_seed(unpool_seed)
                self.random_unpool = nn.ModuleList(
                    RandomLocationUnpool((c, h // 2 ** (k + 1), w // 2 ** (k + 1)), g)
                    for k, c in enumerate(channels)
                )
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
        if up == "random":  # recorded only where it matters: other conv manifests (and ids) are unchanged
            self.args["unpool_seed"] = unpool_seed

    def side_fields(self) -> list[dict]:
        return [
            {"name": f"switches{k}", "shape": s, "bits": SWITCH_BITS}
            for k, s in enumerate(self._switch_shapes)
        ]

    def encode(self, x):
        side: dict[str, torch.Tensor] = {}
        h = nn.functional.pad(x, self.pad) if any(self.pad) else x
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
            return self._crop(self.upsample(h))
        n = len(self.unconvs)
        for i, conv in enumerate(self.unconvs):
            level = n - 1 - i  # the encoder pooling layer this block mirrors
            if self.up == "max":
                h = self.unpool(h, side[f"switches{level}"])
            elif self.up == "random":
                h = self.random_unpool[level](h)
            else:
                h = avg_unpool(h)
            h = conv(h)
            if i < n - 1:
                h = torch.relu(h)
        return self._crop(h)

    def _crop(self, h: torch.Tensor) -> torch.Tensor:
        """Undo the input padding: the central input_shape window of the padded output."""
        if not any(self.pad):
            return h
        left, _, top, _ = self.pad
        return h[..., top : top + self.input_shape[1], left : left + self.input_shape[2]]

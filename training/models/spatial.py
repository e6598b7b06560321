"""Spatial code maps: a fully convolutional autoencoder whose code is a feature map (seed 000's z_u x z_v x l).

    x (C, H, W) ─g_a─► y (M, H/4, W/4) ─round─► ŷ ─g_s─► x̃ (C, H, W)
                        └─h_a─► z (Nh, ⌈H/8⌉, ⌈W/8⌉) ─round─► ẑ ─h_s─► log σ of every element of y

The same weights encode items of any height and width: the codec pads an item to a multiple of
STRIDE (edge replication) and crops the reconstruction back to the size carried in its payload.
g_a and g_s use GDN / IGDN (Ballé et al. 2017) between strided convolutions.

The entropy model of ŷ is one of
- "factorized": one learned distribution per channel of y (Ballé et al. 2017),
- "hyperprior": a zero-mean Gaussian per element whose scale comes from side information ẑ
  (Ballé et al. 2018), ẑ itself under a per-channel factorised prior,
- "meanscale": the same, but h_s predicts a mean μ and a scale σ per element (Minnen et al. 2018, without
  the autoregressive context): h_s has 2M output channels, [0, M) the means and [M, 2M) log σ; the symbol is
  round(y - μ), coded with the zero-mean Gaussian table of σ, and the decoder gets ŷ = symbol + μ.
- "checkerboard": mean-and-scale plus a checkerboard context (He et al. 2021). The anchors (positions with
  u + v even) take (μ, σ) from h_s as "meanscale" does; the other positions take h_s's (μ, log σ) plus a
  correction from a small network of 1x1 convolutions over h_s's output and a 5x5 convolution of the decoded
  anchors, masked to the anchor taps. Everything the context sees is on the codec's integer grid (see ``checkerboard_params``).

What the codec side computes for "meanscale" (latent_codec/families/mean_scale.py, exported by
training/export_map.py):
the integer hyper-decoder as for "hyperprior" with w2 of shape (2M, Nh, 3, 3) and b2 of shape (2M,), giving
units U (N, 2M, h, w) = value x 2^2F in int64, cropped to y's size; μ = U[:, :M] / 2^2F, evaluated in float64
(exact: an integer times a power of two) then cast to float32; table index = searchsorted(thresholds,
U[:, M:], side="right") as today. Encoder: symbol = rint(float32 y - μ) on the grid of the training symbols
(the grid is fitted on round(y - μ), not on round(y)). Decoder: ŷ = float32(symbol + μ) into g_s. Every table
choice and every ŷ is then a function of decoded integers only, as the scale hyperprior's rule requires.

kernel: the size of g_a's strided convolutions and g_s's transposed ones (5, as Ballé et al.; 3 is cheaper); the
convolutions next to the code are 3x3 either way.

downsamples: g_a's strided convolutions, 2 (the default: y at 1/4 of the item's side, as drawn above), 3 or 4 (y
at 1/8 or 1/16; g_s mirrors them). A deeper map's code elements each see a wider neighbourhood of pixels: on
whole photographs the stride-8 photo ladder needs about a third fewer bytes than the stride-4 one
(docs/photo_training.md). The codec side reads the stride from the bundle's payload.

h_s is trained in floating point here but shipped as integers (latent_codec/families/hyper_decoder.py's
IntegerHyperDecoder: weights times 2^F, int64 arithmetic, integer thresholds on log σ), so the
choice of probability table for each element depends only on integer arithmetic over the decoded
ẑ and cannot differ between machines, thread counts or batch sizes. Nothing of this module runs on
the edge or in the cloud: the exported graphs are g_a + h_a (encoder.onnx) and g_s (decoder.onnx).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..rate import FactorizedLogisticPrior, quantize_proxy
from ..registry import register_model
from .base import Autoencoder

STRIDE = 4  # g_a's total downsampling by default (``downsamples`` = 2): items are padded to a multiple of it
HYPER_STRIDE = 2  # h_a's further downsampling of y
SCALE_MIN, SCALE_MAX, SCALE_LEVELS = 0.11, 256.0, 64  # the Gaussian scale table (CompressAI's values)
LIKELIHOOD_FLOOR = 1e-9
ENTROPY_MODELS = ("hyperprior", "factorized", "meanscale", "checkerboard")
HYPER_ENTROPY = ("hyperprior", "meanscale", "checkerboard")  # the entropy models with side information ẑ
MEAN_ENTROPY = ("meanscale", "checkerboard")  # h_s predicts 2M channels: means, then log σ
CONTEXT_FRAC_BITS = 10  # the checkerboard context's fixed point (= training/export_map.py's HYPER_FRAC_BITS)
CONTEXT_KERNEL = 5  # the masked convolution over the anchors (He et al. 2021)
KERNELS = (3, 5)
DOWNSAMPLES = (2, 3, 4)  # g_a's strided convolutions: code maps at 1/4, 1/8 or 1/16 of the item's side


def scale_table() -> list[float]:
    """The scales σ_k whose integer frequency tables a hyperprior bundle ships, log-spaced."""
    lo, hi = math.log(SCALE_MIN), math.log(SCALE_MAX)
    return [math.exp(lo + (hi - lo) * k / (SCALE_LEVELS - 1)) for k in range(SCALE_LEVELS)]


def log_scale_thresholds() -> list[float]:
    """Boundaries between neighbouring table scales in log σ (geometric midpoints): index = #thresholds below."""
    s = [math.log(v) for v in scale_table()]
    return [(a + b) / 2 for a, b in zip(s, s[1:])]


class GDN(nn.Module):
    """Generalised divisive normalisation: x_i / sqrt(β_i + Σ_j γ_ij x_j²); inverse: times instead of over."""

    def __init__(self, channels: int, inverse: bool = False):
        super().__init__()
        self.inverse = inverse
        self.beta = nn.Parameter(torch.ones(channels))
        self.gamma = nn.Parameter(0.1 * torch.eye(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beta = self.beta.abs() + 1e-6
        gamma = self.gamma.abs()
        norm = torch.sqrt(F.conv2d(x * x, gamma[:, :, None, None], beta))
        return x * norm if self.inverse else x / norm


def _conv(c_in: int, c_out: int, k: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2)


def _deconv(c_in: int, c_out: int, k: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(c_in, c_out, k, stride=2, padding=k // 2, output_padding=1)


def gaussian_likelihood(y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """P(unit bin around y) under N(0, σ²), with the tail-safe form (CompressAI's)."""
    v = y.abs()
    upper = 0.5 * torch.erfc(-(0.5 - v) / (scale * math.sqrt(2)))
    lower = 0.5 * torch.erfc(-(-0.5 - v) / (scale * math.sqrt(2)))
    return (upper - lower).clamp_min(LIKELIHOOD_FLOOR)


def anchor_mask(h: int, w: int) -> torch.Tensor:
    """(h, w) bool: the anchors of the checkerboard, positions (u, v) with u + v even (decoded first)."""
    u, v = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (u + v) % 2 == 0


def context_taps(k: int) -> torch.Tensor:
    """(k, k) float: 1 at the taps (i, j) of a k x k window with i + j odd (k odd), i.e. the positions of the
    other colour; seen from a non-anchor, exactly the anchors."""
    i, j = torch.meshgrid(torch.arange(k), torch.arange(k), indexing="ij")
    return ((i + j) % 2 == 1).float()


def _ste_round(v: torch.Tensor) -> torch.Tensor:
    return v + (torch.round(v) - v).detach()


def _on_grid(v: torch.Tensor, frac_bits: int = CONTEXT_FRAC_BITS) -> torch.Tensor:
    """v rounded to the multiples of 2^-F in the forward pass, gradient straight through."""
    f = float(1 << frac_bits)
    return v + (torch.round(v * f) / f - v).detach()


@register_model("spatial")
class SpatialAutoencoder(Autoencoder):
    """channels N in g_a/g_s, code_channels M in y, hyper_channels Nh in z; gdn off = ReLU."""

    codec_family = "map"

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        channels: int = 64,
        code_channels: int = 32,
        hyper_channels: int = 24,
        entropy: str = "hyperprior",
        gdn: bool = True,
        output: str = "linear",
        standardize: bool = False,
        loss: str | None = None,
        kernel: int = 5,
        downsamples: int = 2,
    ):
        super().__init__(input_shape, output, standardize, loss)
        if entropy not in ENTROPY_MODELS:
            raise ValueError(f"entropy must be one of {ENTROPY_MODELS}, got {entropy!r}")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if standardize:
            raise ValueError("spatial models take any item size: per-pixel standardisation does not apply")
        if int(downsamples) not in DOWNSAMPLES:
            raise ValueError(f"downsamples must be one of {DOWNSAMPLES}, got {downsamples!r}")
        c, n, m, nh = int(input_shape[0]), int(channels), int(code_channels), int(hyper_channels)
        self.args.update(
            {"channels": n, "code_channels": m, "hyper_channels": nh, "entropy": entropy, "gdn": bool(gdn)}
        )
        if kernel != 5:  # recorded only when not the default: earlier checkpoints and bundle ids unchanged
            self.args["kernel"] = int(kernel)
        d = int(downsamples)
        if d != 2:  # likewise
            self.args["downsamples"] = d
        self.entropy = entropy
        self.stride = 1 << d  # pixels per code element along each side
        k = int(kernel)

        def act(ch: int, inverse: bool = False) -> nn.Module:
            return GDN(ch, inverse) if gdn else nn.ReLU()

        analysis: list[nn.Module] = [_conv(c, n, k, 2), act(n)]
        for _ in range(d - 1):
            analysis += [_conv(n, n, k, 2), act(n)]
        self.g_a = nn.Sequential(*analysis, _conv(n, m, 3))
        synthesis: list[nn.Module] = [_conv(m, n, 3), act(n, True)]
        for _ in range(d - 1):
            synthesis += [_deconv(n, n, k), act(n, True)]
        self.g_s = nn.Sequential(*synthesis, _deconv(n, c, k))
        if entropy in HYPER_ENTROPY:
            self.h_a = nn.Sequential(_conv(m, nh, 3), nn.ReLU(), _conv(nh, nh, 5, HYPER_STRIDE))
            # Nearest-neighbour upsampling + two 3x3 convolutions: simple to run exactly in integers.
            # meanscale and checkerboard: 2M outputs, the means first, then log σ.
            out = 2 * m if entropy in MEAN_ENTROPY else m
            self.h_s = nn.Sequential(_conv(nh, nh, 3), nn.ReLU(), _conv(nh, out, 3))
            self.z_prior = FactorizedLogisticPrior(nh)
        else:
            self.y_prior = FactorizedLogisticPrior(m)
        if entropy == "checkerboard":
            # the context of the anchors (its weights masked to the anchor taps in use and at export), and the
            # entropy-parameter network: 1x1 convolutions over [h_s output, context] (CompressAI's widths)
            self.context = nn.Conv2d(m, 2 * m, CONTEXT_KERNEL, padding=CONTEXT_KERNEL // 2)
            widths = [4 * m, 10 * m // 3, 8 * m // 3, 2 * m]
            layers: list[nn.Module] = []
            for a, b in zip(widths, widths[1:]):
                layers += [nn.Conv2d(a, b, 1), nn.ReLU()]
            self.params_net = nn.Sequential(*layers[:-1])
            # The network corrects h_s's own (μ, log σ) (a residual): its last layer starts at zero, so an
            # untrained context codes the non-anchors as mean-and-scale does and training starts from there.
            last = self.params_net[-1]
            assert isinstance(last, nn.Conv2d) and last.bias is not None
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    # ---- the two exported graphs ------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Padded input (H, W multiples of the stride) -> (y, {"hyper": z before rounding} with a hyperprior)."""
        y = self.g_a(x)
        return y, ({"hyper": self.h_a(y)} if self.entropy in HYPER_ENTROPY else {})

    def decode_logits(self, code: torch.Tensor, side: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.g_s(code)

    # ---- the hyper-decoder, as training sees it --------------------------------------------------------
    def hyper_decode(self, z_hat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """h_s's raw output for every element of y from ẑ (float; the bundle ships its integer twin)."""
        up = F.interpolate(z_hat, scale_factor=HYPER_STRIDE, mode="nearest")
        return self.h_s(up)[..., : size[0], : size[1]]

    def log_scales(self, z_hat: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """log σ for every element of y (the last M channels of h_s's output)."""
        out = self.hyper_decode(z_hat, size)
        return out[:, -self.args["code_channels"] :]

    def gaussian_params(
        self, z_hat: torch.Tensor, size: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, σ) of every element of y: μ = 0 without "meanscale"; σ clamped to the table's range."""
        out = self.hyper_decode(z_hat, size)
        m = self.args["code_channels"]
        lo, hi = math.log(SCALE_MIN), math.log(SCALE_MAX)
        scale = torch.exp(out[:, -m:].clamp(lo, hi))
        mean = out[:, :m] if self.entropy in MEAN_ENTROPY else torch.zeros_like(scale)
        return mean, scale

    # ---- the checkerboard context, as the codec computes it ------------------------------------------------
    def context_weight(self) -> torch.Tensor:
        """The context convolution's weights with every tap that is not an anchor's set to zero."""
        return self.context.weight * context_taps(CONTEXT_KERNEL).to(self.context.weight)

    def checkerboard_params(self, y: torch.Tensor, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, σ) of every element of y: anchors from h_s alone, the others from h_s and the decoded anchors.

        What enters the context is what the codec holds as integers (latent_codec/families/checkerboard.py):
        each anchor as round(y - μ) + μ with μ on the 2^-F grid (straight-through rounding, so the forward
        value is the codec's), h_s's output and every hidden activation on the 2^-F grid. The codec's results
        differ from these only by the rounding of the weights to multiples of 2^-F.
        """
        m = self.args["code_channels"]
        out = self.hyper_decode(z_hat, tuple(y.shape[-2:]))
        anchors = anchor_mask(y.shape[-2], y.shape[-1]).to(y)[None, None]
        mu_h = out[:, :m]
        q = (_ste_round(y - mu_h) + _on_grid(mu_h)) * anchors
        ctx = F.conv2d(q, self.context_weight(), self.context.bias, padding=CONTEXT_KERNEL // 2)
        hyper = _on_grid(out)
        h = torch.cat([hyper, _on_grid(ctx)], dim=1)
        for layer in self.params_net:
            h = layer(h)
            if isinstance(layer, nn.ReLU):
                h = _on_grid(h)
        h = hyper + h  # the correction of h_s's output on the 2^-F grid
        is_anchor = anchors.bool()
        mean = torch.where(is_anchor, mu_h, h[:, :m])
        log_scale = torch.where(is_anchor, out[:, m:], h[:, m:])
        lo, hi = math.log(SCALE_MIN), math.log(SCALE_MAX)
        return mean, torch.exp(log_scale.clamp(lo, hi))

    def entropy_params(self, y: torch.Tensor, z_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, σ) of every element of y given ẑ (and, with the checkerboard context, y's anchors)."""
        if self.entropy == "checkerboard":
            return self.checkerboard_params(y, z_hat)
        return self.gaussian_params(z_hat, tuple(y.shape[-2:]))

    # ---- training ---------------------------------------------------------------------------------------
    def init_from(self, other: nn.Module) -> bool:
        """Start from another spatial model: all of it when the entropy models match, else its transforms
        (g_a, g_s), so the two entropy models can be compared on the same transforms. Mean-and-scale to
        checkerboard also takes the hyperprior (h_a, h_s and ẑ's prior: the same modules); the context starts
        at zero, so the new model codes exactly as the old one until it learns. Returns whether the entropy
        model came along trained (then the prior must not be fitted again to the first batch)."""
        if getattr(other, "entropy", None) == self.entropy:
            # the input statistics are per pixel of the crop size (unused: spatial models do not standardise), so
            # a start trained on other crop sizes keeps this model's
            state = other.state_dict()
            for k in ("input_mean", "input_std"):
                if k in state:
                    state[k] = getattr(self, k)
            self.load_state_dict(state)
            return True
        if {k: v for k, v in other.args.items() if k not in ("entropy", "hyper_channels")} != {
            k: v for k, v in self.args.items() if k not in ("entropy", "hyper_channels")
        }:
            raise ValueError(f"cannot start from a spatial model with other transforms ({other.args})")
        self.g_a.load_state_dict(other.g_a.state_dict())
        self.g_s.load_state_dict(other.g_s.state_dict())
        hyper = ("h_a", "h_s", "z_prior")
        if (
            getattr(other, "entropy", None) in MEAN_ENTROPY
            and self.entropy in MEAN_ENTROPY
            and other.args.get("hyper_channels") == self.args["hyper_channels"]
        ):
            for name in hyper:
                getattr(self, name).load_state_dict(getattr(other, name).state_dict())
            return True
        return False

    def pad_amounts(self, h: int, w: int) -> tuple[int, int]:
        return (-h) % self.stride, (-w) % self.stride

    def forward(self, x01: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = x01.shape[-2:]
        ph, pw = self.pad_amounts(h, w)
        x = F.pad(x01, (0, pw, 0, ph), mode="replicate") if ph or pw else x01
        y, side = self.encode(x)
        proxy = self.quant_proxy if self.quant_proxy != "none" else "none"
        z_t = self._noisy(side["hyper"]) if proxy != "none" and self.entropy in HYPER_ENTROPY else None
        params = self.entropy_params(y, z_t) if z_t is not None else None
        if proxy == "none":
            y_dec = y
        elif self.entropy in MEAN_ENTROPY:  # the symbol is round(y - μ); the decoder gets symbol + μ
            assert params is not None
            mean = params[0]
            y_dec = quantize_proxy(y - mean, proxy, self.training) + mean
        else:
            y_dec = quantize_proxy(y, proxy, self.training)
        logits = self.decode_logits(y_dec, side)[..., :h, :w]
        out = {"code": y, "side": side, "logits": logits, "x_hat": self.activate(logits)}
        if proxy != "none":
            out["bits"] = self.bits(y, side, z_t, params)
        return out

    def _noisy(self, v: torch.Tensor) -> torch.Tensor:
        return v + torch.empty_like(v).uniform_(-0.5, 0.5) if self.training else torch.round(v)

    @staticmethod
    def _channel_rows(v: torch.Tensor) -> torch.Tensor:
        return v.permute(0, 2, 3, 1).reshape(-1, v.shape[1])

    def bits(
        self,
        y: torch.Tensor,
        side: dict[str, torch.Tensor],
        z_t: torch.Tensor | None = None,
        params: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Bits per item (N,) of ŷ (and ẑ) under the entropy model, with noise as rounding's proxy.

        z_t and params: the noisy ẑ and its (μ, σ), when forward already computed them."""
        n = y.shape[0]
        if self.entropy == "factorized":
            y_t = self._noisy(y)
            return -torch.log2(self.y_prior.likelihood(self._channel_rows(y_t))).reshape(n, -1).sum(1)
        if z_t is None:
            z_t = self._noisy(side["hyper"])
        z_bits = -torch.log2(self.z_prior.likelihood(self._channel_rows(z_t))).reshape(n, -1).sum(1)
        mean, scale = params if params is not None else self.entropy_params(y, z_t)
        r_t = self._noisy(y - mean)  # the symbol's proxy: y - μ plus noise (rounded in eval)
        y_bits = -torch.log2(gaussian_likelihood(r_t, scale)).flatten(1).sum(1)
        return y_bits + z_bits

    @torch.no_grad()
    def init_priors(self, x01: torch.Tensor) -> None:
        """Data-dependent start of the factorised priors on one batch's codes."""
        y, side = self.encode(x01)
        if self.entropy == "factorized":
            self.y_prior.init_from(self._channel_rows(y))
        else:
            self.z_prior.init_from(self._channel_rows(side["hyper"]))

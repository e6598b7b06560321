"""Linear-plus-residual autoencoder for rate-distortion: a PCA-initialisable linear path and MLP corrections.

    code  = P (x - mean) / step + f(x)
    x_hat = mean + step * Q code + g(code)

With f = g = 0 (their last layers start at zero) this *is* PCA with a uniform
quantiser of the given step on the integer grid, so rate-distortion training
starts from the linear baseline's operating point and only has to learn what
the nonlinear corrections buy; a short training budget cannot end up worse
than the linear code it started from. Outputs are linear (squared error).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..registry import register_model
from .base import Autoencoder


@register_model("linres")
class LinearResidualAutoencoder(Autoencoder):
    # The linear path's weights are stored divided by LINEAR_GAIN: Adam moves a stored value by ~lr per
    # step, so the PCA start drifts LINEAR_GAIN times slower than the MLPs learn their corrections.
    LINEAR_GAIN = 0.1

    def __init__(
        self,
        input_shape=(1, 28, 28),
        code_dim: int = 128,
        hidden: int = 512,
        output: str = "linear",
        standardize: bool = False,
    ):
        super().__init__(input_shape, output, standardize)
        d = math.prod(self.input_shape)
        self.lin_enc = nn.Linear(d, code_dim)
        self.lin_dec = nn.Linear(code_dim, d)
        self.enc_mlp = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, code_dim))
        self.dec_mlp = nn.Sequential(nn.Linear(code_dim, hidden), nn.ReLU(), nn.Linear(hidden, d))
        for last in (self.enc_mlp[-1], self.dec_mlp[-1]):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.args.update(code_dim=code_dim, hidden=hidden)

    def _linear(self, layer: nn.Linear, h: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(h, layer.weight * self.LINEAR_GAIN, layer.bias * self.LINEAR_GAIN)

    def encode(self, x):
        h = x.flatten(1)
        return self._linear(self.lin_enc, h) + self.enc_mlp(h), {}

    def decode_logits(self, code, side):
        return (self._linear(self.lin_dec, code) + self.dec_mlp(code)).view(-1, *self.input_shape)

    @torch.no_grad()
    def init_pca(self, x_unit: np.ndarray, step: float) -> None:
        """Set the linear path to PCA of x_unit (N, ...) with its codes in units of `step`."""
        x = x_unit.reshape(len(x_unit), -1).astype(np.float64)
        mean = x.mean(axis=0)
        xc = x - mean
        vals, vecs = np.linalg.eigh(xc.T @ xc / len(x))
        comps = vecs[:, np.argsort(vals)[::-1][: self.lin_enc.out_features]]  # (d, k)
        m = torch.from_numpy(mean).float()
        c = torch.from_numpy(comps).float()
        g = self.LINEAR_GAIN
        self.lin_enc.weight.copy_(c.t() / step / g)
        self.lin_enc.bias.copy_(-(c.t() @ m) / step / g)
        self.lin_dec.weight.copy_(c * step / g)
        self.lin_dec.bias.copy_(m / g)

"""Dense autoencoders: undercomplete (one hidden layer) and deep, optionally with tied weights."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..registry import register_model
from .base import Autoencoder

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "linear": nn.Identity}


@register_model("dense")
class DenseAutoencoder(Autoencoder):
    """x -> [hidden...] -> code -> [hidden reversed...] -> x_hat.

    hidden=() gives the notes' one-layer autoencoder y = phi(Wx + b), z = phi(W'y + b').
    tied=True uses W' = W^T for every layer (only biases are separate).
    loss: None = the output's default (sigmoid: "bce"; linear: "mse"); "mse" with output="sigmoid" is
    the notes' sigmoid output layer trained with squared error.
    code_noise=sigma > 0 (semantic hashing, Salakhutdinov & Hinton): N(0, sigma^2) is added to the code's
    pre-activation while training, so a sigmoid code can carry information only by saturating near 0 or 1;
    thresholded at 0.5 it is then a binary code that loses little. Exported graphs are noise-free.
    """

    def __init__(
        self,
        input_shape=(1, 28, 28),
        code_dim: int = 32,
        hidden: tuple[int, ...] | list[int] = (),
        activation: str = "relu",
        code_activation: str = "linear",
        tied: bool = False,
        output: str = "sigmoid",
        standardize: bool = False,
        loss: str | None = None,
        code_noise: float = 0.0,
    ):
        super().__init__(input_shape, output, standardize, loss)
        if code_noise < 0:
            raise ValueError(f"code_noise must be >= 0, got {code_noise}")
        d = math.prod(self.input_shape)
        sizes = [d, *hidden, code_dim]
        self.enc_w = nn.ParameterList()
        self.enc_b = nn.ParameterList()
        self.dec_w = nn.ParameterList()
        self.dec_b = nn.ParameterList()
        for a, b in zip(sizes[:-1], sizes[1:]):
            layer = nn.Linear(a, b)
            self.enc_w.append(layer.weight)
            self.enc_b.append(layer.bias)
        for a, b in zip(reversed(sizes[1:]), reversed(sizes[:-1])):
            layer = nn.Linear(a, b)
            if not tied:
                self.dec_w.append(layer.weight)
            self.dec_b.append(layer.bias)
        self.act = ACTIVATIONS[activation]()
        self.code_act = ACTIVATIONS[code_activation]()
        self.tied = tied
        self.code_noise = float(code_noise)
        if code_noise:  # recorded only when on: other checkpoints' args unchanged
            self.args["code_noise"] = float(code_noise)
        self.args.update(
            code_dim=code_dim,
            hidden=list(hidden),
            activation=activation,
            code_activation=code_activation,
            tied=tied,
        )

    def encode(self, x):
        h = x.flatten(1)
        n = len(self.enc_w)
        for i, (w, b) in enumerate(zip(self.enc_w, self.enc_b)):
            h = nn.functional.linear(h, w, b)
            if i == n - 1 and self.code_noise and self.training:
                h = h + self.code_noise * torch.randn_like(h)
            h = self.code_act(h) if i == n - 1 else self.act(h)
        return h, {}

    def decode_logits(self, code, side):
        h = code
        n = len(self.dec_b)
        for i in range(n):
            w = self.enc_w[n - 1 - i].t() if self.tied else self.dec_w[i]
            h = nn.functional.linear(h, w, self.dec_b[i])
            if i < n - 1:
                h = self.act(h)
        return h.view(-1, *self.input_shape)

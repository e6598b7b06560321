"""Vector-quantised autoencoder: a one-hot code, i.e. the index of the nearest of K codewords.

    encode: k* = argmin_k ||x - c_k||^2 + b_k      code = k* - K/2   (one integer)
    decode: x_hat = c_k

The notes' one-hot autoencoder (8-3-8) taken to its end: the code is which of
K reconstructions to use. For a single index the best decoder is the mean of
the items it receives, and the best encoder picks the reconstruction that
costs least, so the model is trained by Lloyd iterations (training/vq_lloyd.py)
instead of gradient steps. With rate-distortion training the bias
b_k = lambda * (-log2 P(k)) makes the encoder weigh each index's code length
(entropy-constrained VQ). The code sits on the symmetric integer grid of
log2 K bits, so `--quant learned` exports it with the same quantiser and
entropy-coding tables as every rate-distortion model; the edge and cloud need
nothing new.

Why it is in the family: at a few bytes per item one index of up to 12 bits is
a much better use of the bytes than a few scalar dimensions (docs/rd.md).
"""

from __future__ import annotations

import math

import torch

from ..registry import register_model
from .base import Autoencoder

MAX_CODEWORDS = 4096  # 12-bit symbols: the largest alphabet the entropy tables support


@register_model("vq")
class VectorQuantizedAutoencoder(Autoencoder):
    def __init__(
        self,
        input_shape=(1, 28, 28),
        codewords: int = 1024,
        output: str = "linear",
        standardize: bool = False,
        subspace: int = 0,
    ):
        super().__init__(input_shape, output, standardize)
        if output != "linear":
            raise ValueError("vq reconstructs codewords directly: use output='linear'")
        if codewords < 4 or codewords > MAX_CODEWORDS or codewords & (codewords - 1):
            raise ValueError(f"codewords must be a power of two from 4 to {MAX_CODEWORDS}, got {codewords}")
        d = math.prod(self.input_shape)
        if not 0 <= subspace <= d:
            raise ValueError(f"subspace must be 0 (pixel space) to {d}, got {subspace}")
        self.codewords = int(codewords)
        self.subspace = int(subspace)
        # subspace k > 0: codewords live in the training data's top-k PCA subspace (mean + basis, set from the
        # data by training/vq_lloyd.py), so a bundle holds K x k numbers instead of K x pixels.
        self.register_buffer("mean", torch.zeros(d if subspace else 0))
        self.register_buffer("basis", torch.zeros(d, subspace) if subspace else torch.zeros(0, 0))
        self.register_buffer("codebook", torch.zeros(codewords, subspace or d))
        self.register_buffer("bias", torch.zeros(codewords))  # lambda * code length per index; 0 = plain VQ
        self.args.update(codewords=codewords)
        if subspace:  # recorded only when used: older checkpoints and ids unchanged
            self.args["subspace"] = int(subspace)

    @property
    def grid_bits(self) -> int:
        return self.codewords.bit_length() - 1

    def costs(self, h: torch.Tensor) -> torch.Tensor:
        """(N, K) squared distance to each codeword, up to the per-item constant ||x||^2, plus the bias."""
        return (self.codebook**2).sum(1) - 2 * h @ self.codebook.t() + self.bias

    def features(self, flat: torch.Tensor) -> torch.Tensor:
        """Pixels -> the space the codewords live in (PCA coordinates with a subspace, else the pixels)."""
        return (flat - self.mean) @ self.basis if self.subspace else flat

    def encode(self, x):
        idx = torch.argmin(self.costs(self.features(x.flatten(1))), dim=1)
        return (idx.to(x.dtype) - self.codewords // 2).unsqueeze(1), {}

    def decode_logits(self, code, side):
        idx = (torch.round(code[:, 0]) + self.codewords // 2).clamp(0, self.codewords - 1).long()
        c = self.codebook[idx]
        if self.subspace:
            c = c @ self.basis.t() + self.mean
        return c.view(-1, *self.input_shape)

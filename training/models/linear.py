"""The linear autoencoder: with squared error on centred inputs it learns the PCA subspace.

z = W x_c + b, x_hat_c = W' z + b' with x_c = x - mean (per pixel, baked into the ONNX graphs).
At the optimum the columns of W' span the top-k principal subspace (Baldi & Hornik 1989); they
need not be orthonormal or equal to the eigenvectors themselves, so compare subspaces, not weights.
"""

from __future__ import annotations

import torch

from ..registry import register_model
from .dense import DenseAutoencoder


@register_model("linear")
class LinearAutoencoder(DenseAutoencoder):
    """Dense, no hidden layers, identity activations, linear output + squared error, centred inputs."""

    def __init__(self, input_shape=(1, 28, 28), code_dim: int = 16, tied: bool = False, **_fixed):
        fixed = {"output", "standardize", "hidden", "activation", "code_activation"}
        if set(_fixed) - fixed:
            raise TypeError(f"linear autoencoder: unknown arguments {sorted(set(_fixed) - fixed)}")
        for k, want in (
            ("output", "linear"),
            ("standardize", True),
            ("hidden", []),
            ("activation", "linear"),
            ("code_activation", "linear"),
        ):
            if k in _fixed and _fixed[k] != want and not (k == "hidden" and list(_fixed[k]) == want):
                raise ValueError(f"the linear autoencoder fixes {k}={want!r} (it is what makes it PCA)")
        # standardize=True routes the per-pixel mean through normalize/activate and the exported
        # graphs; set_input_stats keeps std = 1, so inputs are centred, not scaled.
        super().__init__(input_shape, code_dim, (), "linear", "linear", tied, "linear", True)
        self.args = {"input_shape": list(self.input_shape), "code_dim": code_dim, "tied": tied}

    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.input_mean.copy_(mean)
        self.input_std.fill_(1.0)

    def decoder_basis(self) -> torch.Tensor:
        """Columns spanning the learned subspace in input space: W' ([d, k])."""
        return (self.enc_w[0].t() if self.tied else self.dec_w[0]).detach()

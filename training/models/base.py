"""What every autoencoder in the registry provides.

Models return pre-activation outputs from ``decode_logits``; the output
activation (sigmoid for [0, 1] data, identity for standardised data with
squared error) is applied here, once, so training can use the numerically
stable BCE-with-logits and export can bake the activation and the input
standardisation into the ONNX graphs. A sigmoid output is trained with binary
cross-entropy by default or with squared error (``loss="mse"``, the
configuration of the notes' Keras examples: sigmoid output, loss 'mse').
"""

from __future__ import annotations

import torch
from torch import nn

OUTPUTS = {"sigmoid": "bce", "linear": "mse"}  # each output's default loss
LOSSES = {"sigmoid": ("bce", "mse"), "linear": ("mse",)}  # the losses each output can be trained with


class Autoencoder(nn.Module):
    registry_name = "base"
    codec_family = "flat"  # the codec family its bundles belong to (training/exporters.py picks the exporter)

    def __init__(
        self,
        input_shape: tuple[int, int, int],
        output: str = "sigmoid",
        standardize: bool = False,
        loss: str | None = None,
    ):
        super().__init__()
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {sorted(OUTPUTS)}, got {output!r}")
        if standardize and output != "linear":
            raise ValueError("standardised inputs are real-valued: use output='linear' (squared error)")
        loss = loss or OUTPUTS[output]
        if loss not in LOSSES[output]:
            raise ValueError(f"output={output!r} trains with loss in {LOSSES[output]}, got loss={loss!r}")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.output = output
        self.standardize = bool(standardize)
        self.loss = loss
        # Per-pixel statistics of the training data; identity until set_input_stats.
        self.register_buffer("input_mean", torch.zeros(self.input_shape))
        self.register_buffer("input_std", torch.ones(self.input_shape))
        self.args: dict = {
            "input_shape": list(self.input_shape),
            "output": output,
            "standardize": standardize,
        }
        if loss != OUTPUTS[output]:  # recorded only when not the default: older checkpoints and ids unchanged
            self.args["loss"] = loss
        # Training-only stand-in for code rounding (training.rate.PROXIES); "none" keeps forward unchanged.
        # Not a constructor argument: exported graphs never quantise, the payload quantiser does.
        self.quant_proxy = "none"

    # -- to implement -----------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Normalised input -> (code [N, *code_shape], side tensors sent with the code)."""
        raise NotImplementedError

    def decode_logits(self, code: torch.Tensor, side: dict[str, torch.Tensor]) -> torch.Tensor:
        """Code (+ side) -> pre-activation reconstruction in normalised space."""
        raise NotImplementedError

    def side_fields(self) -> list[dict]:
        """Manifest descriptions of side tensors: [{"name", "shape", "bits"}]."""
        return []

    @property
    def code_shape(self) -> list[int]:
        with torch.no_grad():
            code, _ = self.encode(torch.zeros(1, *self.input_shape))
        return list(code.shape[1:])

    # -- shared ---------------------------------------------------------------
    @property
    def loss_name(self) -> str:
        return self.loss

    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        if self.standardize:
            self.input_mean.copy_(mean)
            self.input_std.copy_(std.clamp_min(1e-3))

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        return (x01 - self.input_mean) / self.input_std if self.standardize else x01

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Pre-activation -> reconstruction in [0, 1] pixel space (linear outputs are un-standardised)."""
        if self.output == "sigmoid":
            return torch.sigmoid(logits)
        return logits * self.input_std + self.input_mean if self.standardize else logits

    def forward(self, x01: torch.Tensor) -> dict[str, torch.Tensor]:
        code, side = self.encode(self.normalize(x01))
        if self.quant_proxy != "none":  # quantisation-aware / rate-distortion training
            from training.rate import quantize_proxy

            logits = self.decode_logits(quantize_proxy(code, self.quant_proxy, self.training), side)
        else:
            logits = self.decode_logits(code, side)
        return {"code": code, "side": side, "logits": logits, "x_hat": self.activate(logits)}

    def reconstruction_loss(self, out: dict, x01: torch.Tensor) -> torch.Tensor:
        """Per-item loss summed over pixels, averaged over the batch (the notes' ||z - x||^2, without the 1/2).

        bce: -sum x log x_hat + (1 - x) log(1 - x_hat), from the logits (its gradient in the logits is
        x_hat - x); mse with a sigmoid output: sum (sigmoid(logits) - x)^2 (gradient 2 (x_hat - x) x_hat
        (1 - x_hat), which vanishes where the sigmoid saturates); mse with a linear output: squared error in
        the normalised space.
        """
        logits = out["logits"]
        if self.loss == "bce":
            per = nn.functional.binary_cross_entropy_with_logits(logits, x01, reduction="none")
        elif self.output == "sigmoid":
            per = (torch.sigmoid(logits) - x01) ** 2
        else:
            target = self.normalize(x01)
            per = (logits - target) ** 2
        return per.flatten(1).sum(1).mean()


class EncoderGraph(nn.Module):
    """What encoder.onnx computes: [0, 1] input -> code (+ side outputs)."""

    def __init__(self, model: Autoencoder):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        code, side = self.model.encode(self.model.normalize(x))
        names = [f["name"] for f in self.model.side_fields()]
        return (code, *[side[n] for n in names]) if names else code


class DecoderGraph(nn.Module):
    """What decoder.onnx computes: code (+ side inputs) -> reconstruction in [0, 1] pixel space."""

    def __init__(self, model: Autoencoder):
        super().__init__()
        self.model = model
        self.names = [f["name"] for f in model.side_fields()]

    def forward(self, code: torch.Tensor, *side: torch.Tensor):
        return self.model.activate(self.model.decode_logits(code, dict(zip(self.names, side))))

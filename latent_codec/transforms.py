"""The learned part of a codec: analysis (encoder) and synthesis (decoder) on [0, 1] items.

``OnnxTransforms`` runs a bundle's encoder.onnx / decoder.onnx in ONNX Runtime; ``FunctionTransforms``
wraps two plain functions (bench/pca.py's PCA), so any transform pair gets the same codec steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from .decode_cost import release_arena
from .errors import BundleError

Side = dict[str, np.ndarray]


class Transforms(Protocol):
    def analysis(self, x_unit: np.ndarray) -> tuple[np.ndarray, Side]: ...

    def synthesis(self, codes: np.ndarray, side: Side) -> np.ndarray: ...


def ort_session(blob: bytes, threads: int = 0, where: str = "ONNX graph"):
    """An ONNX Runtime CPU session over a serialised graph; BundleError when ORT cannot load it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # ORT's pool threads spin after each run by default: on a server that CPU is taken from the event loop and
    # the other decode threads (docs/serving.md), on a device from its battery.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(blob, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for bad graphs
        raise BundleError(f"{where}: ONNX Runtime cannot load it ({exc})") from None


class OnnxTransforms:
    """encoder.onnx / decoder.onnx in ONNX Runtime (either may be absent: a device holds no decoder session).

    The encoder's outputs are ``code`` then the side fields named; the decoder's inputs are ``code`` (reshaped
    to ``code_shape`` when it arrives flat) and the same side fields, as int64.
    """

    def __init__(
        self, encoder, decoder, side_names: Sequence[str], code_shape: Sequence[int], where: str = "bundle"
    ):
        self.encoder, self.decoder = encoder, decoder  # onnxruntime.InferenceSession or None
        self._side_names = list(side_names)
        self._code_shape = list(code_shape)
        self._where = where

    @classmethod
    def from_graphs(
        cls,
        encoder: bytes | None,
        decoder: bytes | None,
        side_names: Sequence[str],
        code_shape: Sequence[int],
        threads: int = 0,
        where: str = "bundle",
    ) -> OnnxTransforms:
        """From serialised graphs (a bundle's, or an export's before the bundle exists)."""
        enc = ort_session(encoder, threads, f"{where}/encoder.onnx") if encoder is not None else None
        dec = ort_session(decoder, threads, f"{where}/decoder.onnx") if decoder is not None else None
        return cls(enc, dec, side_names, code_shape, where)

    def analysis(self, x_unit: np.ndarray) -> tuple[np.ndarray, Side]:
        if self.encoder is None:
            raise BundleError(f"{self._where}: codec was opened without its encoder")
        outputs = self.encoder.run(
            ["code", *self._side_names], {"x": np.ascontiguousarray(x_unit, np.float32)}
        )
        return outputs[0], dict(zip(self._side_names, outputs[1:]))

    def synthesis(self, codes: np.ndarray, side: Side) -> np.ndarray:
        if self.decoder is None:
            raise BundleError(f"{self._where}: codec was opened without its decoder")
        shaped = codes if codes.ndim > 2 else codes.reshape(len(codes), *self._code_shape)  # maps come shaped
        feeds = {"code": np.ascontiguousarray(shaped, np.float32)}
        for name, value in side.items():
            feeds[name] = np.ascontiguousarray(value, dtype=np.int64)
        return self.decoder.run(["x_hat"], feeds)[0]

    def release(self) -> None:
        """Give back the memory ONNX Runtime keeps after a large decoder run."""
        if self.decoder is not None:
            release_arena(self.decoder)

    def release_encoder(self) -> None:
        """Give back the memory ONNX Runtime keeps after large encoder runs (a photo's tiles, several at once)."""
        if self.encoder is not None:
            release_arena(self.encoder)


class FunctionTransforms:
    """Transforms from two plain functions (e.g. PCA's projection and reconstruction), no side fields."""

    def __init__(
        self, analysis: Callable[[np.ndarray], np.ndarray], synthesis: Callable[[np.ndarray], np.ndarray]
    ):
        self._analysis, self._synthesis = analysis, synthesis

    def analysis(self, x_unit: np.ndarray) -> tuple[np.ndarray, Side]:
        return self._analysis(x_unit), {}

    def synthesis(self, codes: np.ndarray, side: Side) -> np.ndarray:
        return self._synthesis(codes)

"""The bundle manifest: the single source of truth for a bundle's shapes, scaling and code format.

A bundle is a directory:

    encoder.onnx   x [N, *input.shape] float32 in [0, 1]  ->  code [N, *code.shape] (+ side outputs)
    decoder.onnx   code [N, *code.shape] (+ side inputs)   ->  x_hat [N, *input.shape] float32
    manifest.json  this file's schema, FORMAT_VERSION

The content hash covers both ONNX files and every manifest field a decoder
depends on (input, code, payload); it names the bundle and is verified on load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BundleError
from .packing import PayloadSpec

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
ENCODER_NAME = "encoder.onnx"
DECODER_NAME = "decoder.onnx"
RAW_DTYPES = ("uint8", "float32")


@dataclass
class InputSpec:
    shape: list[int]  # per item, (C, H, W)
    dtype: str = "uint8"  # raw dtype on the device
    # Raw -> model input: x / scale, giving [0, 1]. Any standardisation
    # (mean/std) is baked into the ONNX graphs and only recorded here.
    scale: float = 255.0
    standardize: dict[str, Any] | None = None
    output: str = "sigmoid"  # "sigmoid" (loss bce) or "linear" (loss mse)
    loss: str = "bce"

    @property
    def raw_bytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * (1 if self.dtype == "uint8" else 4)

    def to_dict(self) -> dict:
        return {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "scale": self.scale,
            "standardize": self.standardize,
            "output": self.output,
            "loss": self.loss,
        }

    @classmethod
    def from_dict(cls, d: dict) -> InputSpec:
        spec = cls(
            [int(s) for s in d["shape"]],
            str(d.get("dtype", "uint8")),
            float(d.get("scale", 255.0)),
            d.get("standardize"),
            str(d.get("output", "sigmoid")),
            str(d.get("loss", "bce")),
        )
        if spec.dtype not in RAW_DTYPES:
            raise ValueError(f"input.dtype must be one of {RAW_DTYPES}, got {spec.dtype!r}")
        if len(spec.shape) != 3 or min(spec.shape) < 1:
            raise ValueError(f"input.shape must be (C, H, W), got {spec.shape}")
        return spec


@dataclass
class Manifest:
    model: dict[str, Any]  # {"name": registry name, "args": constructor arguments}
    input: InputSpec
    code_shape: list[int]
    payload: PayloadSpec
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    content_hash: str = ""
    bundle_id: str = ""
    format_version: int = FORMAT_VERSION

    def decoding_fields(self) -> dict:
        """What a decoder's output depends on besides the ONNX files: hashed."""
        return {
            "format_version": self.format_version,
            "input": self.input.to_dict(),
            "code": {"shape": list(self.code_shape)},
            "payload": self.payload.to_dict(),
        }

    def to_dict(self) -> dict:
        d = {"bundle_id": self.bundle_id, "content_hash": self.content_hash, "model": self.model}
        d.update(self.decoding_fields())
        d["training"] = self.training
        d["metrics"] = self.metrics
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        version = d.get("format_version")
        if version != FORMAT_VERSION:
            raise BundleError(
                f"manifest format_version {version!r} is not supported (this build reads {FORMAT_VERSION})"
            )
        try:
            return cls(
                model=dict(d["model"]),
                input=InputSpec.from_dict(d["input"]),
                code_shape=[int(s) for s in d["code"]["shape"]],
                payload=PayloadSpec.from_dict(d["payload"]),
                training=dict(d.get("training") or {}),
                metrics=dict(d.get("metrics") or {}),
                content_hash=str(d.get("content_hash", "")),
                bundle_id=str(d.get("bundle_id", "")),
                format_version=int(version),
            )
        except KeyError as exc:
            raise BundleError(f"manifest is missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise BundleError(f"manifest is invalid: {exc}") from None

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BundleError(f"manifest is not valid JSON ({exc})") from None
        if not isinstance(d, dict):
            raise BundleError("manifest must be a JSON object")
        return cls.from_dict(d)

    # ---- hashing ----------------------------------------------------------------
    def compute_hash(self, encoder_bytes: bytes, decoder_bytes: bytes) -> str:
        h = hashlib.sha256()
        for name, blob in ((ENCODER_NAME, encoder_bytes), (DECODER_NAME, decoder_bytes)):
            h.update(name.encode() + b"\0" + len(blob).to_bytes(8, "little"))
            h.update(blob)
        h.update(json.dumps(self.decoding_fields(), sort_keys=True, separators=(",", ":")).encode())
        return "sha256:" + h.hexdigest()

    def seal(self, encoder_bytes: bytes, decoder_bytes: bytes) -> None:
        """Set content_hash and the bundle id derived from it."""
        self.content_hash = self.compute_hash(encoder_bytes, decoder_bytes)
        self.bundle_id = f"{self.model['name']}-{self.content_hash.split(':', 1)[1][:12]}"


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    path = Path(directory) / MANIFEST_NAME
    path.write_text(manifest.to_json())
    return path

"""A model bundle: the manifest (single source of truth for shapes, scaling and code format) and its loader.

A bundle is a directory:

    encoder.onnx   x [N, *input.shape] float32 in [0, 1]  ->  code [N, *code.shape] (+ side outputs)
    decoder.onnx   code [N, *code.shape] (+ side inputs)   ->  x_hat [N, *input.shape] float32
    manifest.json  this file's schema, FORMAT_VERSION

The content hash covers both ONNX files and every manifest field a decoder
depends on (input, code, payload); it names the bundle and is verified on load.
``latent_codec.codec.Codec`` is what turns a loaded bundle into encode/decode.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import registry
from .binary_code import BinaryCode
from .errors import BundleError, DataError
from .onnx_guard import check_self_contained
from .transforms import ort_session

FORMAT_VERSION = 1
_NUMBER_LIST = re.compile(r"\[\s*((?:-?[0-9][0-9.eE+-]*\s*,\s*)*-?[0-9][0-9.eE+-]*)\s*\]")
MANIFEST_NAME = "manifest.json"
ENCODER_NAME = "encoder.onnx"
DECODER_NAME = "decoder.onnx"
RAW_DTYPES = ("uint8", "float32")


def default_scale(dtype: str) -> float:
    """Raw -> [0, 1] divisor for items of this raw dtype: uint8 pixels / 255; float32 items are already [0, 1]."""
    return 255.0 if dtype == "uint8" else 1.0


@dataclass
class InputSpec:
    shape: list[int]  # per item, (C, H, W)
    dtype: str = "uint8"  # raw dtype on the device
    # Raw -> model input: x / scale, giving [0, 1] (the codec's first step). Any standardisation
    # (mean/std) is baked into the ONNX graphs and only recorded here.
    scale: float = 255.0
    standardize: dict[str, Any] | None = None
    output: str = "sigmoid"  # "sigmoid" (loss bce) or "linear" (loss mse)
    loss: str = "bce"
    # Spatial code maps encode items of any height and width; shape is then the training items' shape.
    any_size: bool = False

    @classmethod
    def of_items(cls, x: np.ndarray, **fields: Any) -> InputSpec:
        """The spec of raw items (N, C, H, W) as a loader gives them: their shape, dtype and default scale."""
        dtype = "uint8" if x.dtype == np.uint8 else "float32"
        return cls([int(s) for s in x.shape[1:]], dtype, default_scale(dtype), **fields)

    @property
    def raw_bytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * (1 if self.dtype == "uint8" else 4)

    # ---- scaling: raw items <-> [0, 1] ----------------------------------------------------------------
    def to_unit(self, x_raw: np.ndarray) -> np.ndarray:
        """Raw items -> float32 model input in [0, 1]: x / scale."""
        x = np.asarray(x_raw)
        if self.dtype == "uint8" and x.dtype != np.uint8:
            raise DataError(f"items are {x.dtype} but the bundle expects uint8 pixels")
        x = x.astype(np.float32, copy=False)
        if self.dtype != "uint8" and not np.all(np.isfinite(x)):
            raise DataError("input contains NaN or infinite values")
        return x / np.float32(self.scale) if self.scale != 1.0 else x

    def from_unit(self, x_unit: np.ndarray) -> np.ndarray:
        """[0, 1] floats -> raw items: clipped, times scale; uint8 rounded to the nearest level."""
        x = np.clip(np.asarray(x_unit, dtype=np.float32), 0.0, 1.0) * np.float32(self.scale)
        if self.dtype == "uint8":
            return np.rint(x).astype(np.uint8)
        return x.astype(np.float32, copy=False)

    def to_dict(self) -> dict:
        return {
            "shape": list(self.shape),
            "dtype": self.dtype,
            "scale": self.scale,
            "standardize": self.standardize,
            "output": self.output,
            "loss": self.loss,
            **({"any_size": True} if self.any_size else {}),  # absent for fixed-size bundles: their ids stay
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
            bool(d.get("any_size", False)),
        )
        if spec.dtype not in RAW_DTYPES:
            raise ValueError(f"input.dtype must be one of {RAW_DTYPES}, got {spec.dtype!r}")
        if len(spec.shape) != 3 or min(spec.shape) < 1:
            raise ValueError(f"input.shape must be (C, H, W), got {spec.shape}")
        if not spec.scale > 0 or spec.scale != spec.scale or spec.scale == float("inf"):
            raise ValueError(f"input.scale must be a positive number, got {spec.scale}")
        return spec


@dataclass
class Manifest:
    model: dict[str, Any]  # {"name": registry name, "args": constructor arguments}
    input: InputSpec
    code_shape: list[int]
    payload: Any  # the payload class of its codec family (latent_codec/registry.py)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    content_hash: str = ""
    bundle_id: str = ""
    format_version: int = FORMAT_VERSION
    # Semantic hashing (latent_codec/binary_code.py): thresholds that turn a payload's code into bits. Hashed when
    # present (the bits the cloud stores and searches by depend on it); absent, every other bundle's id is unchanged.
    binary_code: BinaryCode | None = None

    def __post_init__(self) -> None:
        if self.binary_code is not None:
            if registry.payload_kind(self.payload.to_dict()) != registry.DEFAULT_KIND:
                raise ValueError("binary_code is for flat codes; this payload's family has none")
            dims = int(np.prod(self.code_shape))
            if self.binary_code.bits != dims:
                raise ValueError(
                    f"binary_code has {self.binary_code.bits} thresholds for a {dims}-value code"
                )

    def decoding_fields(self) -> dict:
        """What a decoder's output (and the bits stored for search) depends on besides the ONNX files: hashed."""
        fields = {
            "format_version": self.format_version,
            "input": self.input.to_dict(),
            "code": {"shape": list(self.code_shape)},
            "payload": self.payload.to_dict(),
        }
        if self.binary_code is not None:
            fields["binary_code"] = self.binary_code.to_dict()
        return fields

    def to_dict(self) -> dict:
        d = {"bundle_id": self.bundle_id, "content_hash": self.content_hash, "model": self.model}
        d.update(self.decoding_fields())
        d["training"] = self.training
        d["metrics"] = self.metrics
        return d

    def to_json(self) -> str:
        """Indented, with every list of plain numbers on one line (entropy tables stay readable and small)."""
        text = json.dumps(self.to_dict(), indent=1, sort_keys=False)
        return (
            _NUMBER_LIST.sub(lambda m: "[" + ",".join(v.strip() for v in m.group(1).split(",")) + "]", text)
            + "\n"
        )

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
                payload=registry.payload_from_dict(d["payload"]),
                training=dict(d.get("training") or {}),
                metrics=dict(d.get("metrics") or {}),
                content_hash=str(d.get("content_hash", "")),
                bundle_id=str(d.get("bundle_id", "")),
                format_version=int(version),
                binary_code=BinaryCode.from_dict(d["binary_code"])
                if d.get("binary_code") is not None
                else None,
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

    def expected_id(self, content_hash: str) -> str:
        """The bundle id a content hash gives: the model's registry name and 12 hex digits of the hash."""
        return f"{self.model.get('name', 'bundle')}-{content_hash.split(':', 1)[-1][:12]}"

    def seal(self, encoder_bytes: bytes, decoder_bytes: bytes) -> None:
        """Set content_hash and the bundle id derived from it."""
        self.content_hash = self.compute_hash(encoder_bytes, decoder_bytes)
        self.bundle_id = self.expected_id(self.content_hash)


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    path = Path(directory) / MANIFEST_NAME
    path.write_text(manifest.to_json())
    return path


@dataclass
class Bundle:
    path: Path
    manifest: Manifest
    encoder_bytes: bytes | None
    decoder_bytes: bytes | None

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id

    def session(self, which: str, threads: int = 0):
        """An ONNX Runtime session for "encoder" or "decoder" (threads 0 = ORT's default)."""
        blob = self.encoder_bytes if which == "encoder" else self.decoder_bytes
        if blob is None:
            raise BundleError(f"{self.path}: bundle was loaded without its {which}")
        return ort_session(blob, threads, f"{self.path}/{which}.onnx")


def load_bundle(path: str | Path, need: tuple[str, ...] = ("encoder", "decoder")) -> Bundle:
    """Read manifest and ONNX files; verify the content hash over all of them.

    The hash covers both graphs, so both files are read even when only one
    side is needed: a device checks it holds exactly the bundle the cloud
    decodes with.
    """
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"bundle not found: {path} is not a directory")
    mpath = path / MANIFEST_NAME
    if not mpath.is_file():
        raise BundleError(f"{path}: not a bundle (no {MANIFEST_NAME})")
    try:
        manifest = Manifest.from_json(mpath.read_text())
    except UnicodeDecodeError:
        raise BundleError(f"{mpath}: not a text file") from None
    except BundleError as exc:
        raise BundleError(f"{mpath}: {exc}") from None
    blobs = {}
    for name in (ENCODER_NAME, DECODER_NAME):
        f = path / name
        if not f.is_file():
            raise BundleError(f"{path}: bundle is missing {name}")
        blobs[name] = f.read_bytes()
    actual = manifest.compute_hash(blobs[ENCODER_NAME], blobs[DECODER_NAME])
    if actual != manifest.content_hash:
        raise BundleError(
            f"{path}: content hash mismatch (manifest says {manifest.content_hash or 'nothing'}, "
            f"files give {actual}); the bundle is corrupt or was edited"
        )
    if manifest.bundle_id != manifest.expected_id(actual):
        # The id names the bundle everywhere (requests, storage): it must be the one its bytes give.
        raise BundleError(
            f"{path}: bundle_id {manifest.bundle_id[:80]!r} does not match its content "
            f"(the files give {manifest.expected_id(actual)!r}); the manifest was edited"
        )
    for name in (ENCODER_NAME, DECODER_NAME):
        check_self_contained(blobs[name], f"{path}/{name}")
    return Bundle(
        path,
        manifest,
        blobs[ENCODER_NAME] if "encoder" in need else None,
        blobs[DECODER_NAME] if "decoder" in need else None,
    )


def find_bundles(root: str | Path) -> list[Path]:
    """Bundle directories at root (root itself, or its immediate subdirectories)."""
    root = Path(root)
    if (root / MANIFEST_NAME).is_file():
        return [root]
    if not root.is_dir():
        raise BundleError(f"bundle directory not found: {root}")
    return sorted(p for p in root.iterdir() if (p / MANIFEST_NAME).is_file())

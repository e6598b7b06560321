"""Load a bundle directory, verify its content hash, and open ONNX Runtime sessions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BundleError
from .manifest import DECODER_NAME, ENCODER_NAME, MANIFEST_NAME, Manifest


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
        import onnxruntime as ort

        blob = self.encoder_bytes if which == "encoder" else self.decoder_bytes
        if blob is None:
            raise BundleError(f"{self.path}: bundle was loaded without its {which}")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            return ort.InferenceSession(blob, sess_options=opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for bad graphs
            raise BundleError(f"{self.path}/{which}.onnx: ONNX Runtime cannot load it ({exc})") from None


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


def run_encoder(
    session, x_unit: np.ndarray, side_names: list[str]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run an encoder session on [0, 1] inputs; return the code and named side outputs."""
    outputs = session.run(["code", *side_names], {"x": np.ascontiguousarray(x_unit, dtype=np.float32)})
    return outputs[0], dict(zip(side_names, outputs[1:]))


def run_decoder(session, codes: np.ndarray, side: dict[str, np.ndarray], code_shape: list[int]) -> np.ndarray:
    feeds = {"code": np.ascontiguousarray(codes.reshape(len(codes), *code_shape), dtype=np.float32)}
    for name, value in side.items():
        feeds[name] = np.ascontiguousarray(value, dtype=np.int64)
    return session.run(["x_hat"], feeds)[0]

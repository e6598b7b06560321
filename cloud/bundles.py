"""The bundles a server holds: loaded once, hash- and id-verified, one decoding codec each."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from latent_codec.bundle import find_bundles, load_bundle
from latent_codec.codec import Codec
from latent_codec.errors import BundleError

log = logging.getLogger(__name__)


@dataclass
class LoadedBundle:
    codec: Codec  # decoder side only (ONNX Runtime sessions are thread-safe for run())
    path: Path
    manifest_json: str

    @property
    def bundle_id(self) -> str:
        return self.codec.bundle_id


class BundleRegistry:
    def __init__(self, threads: int = 0):
        self._threads = threads
        self._bundles: dict[str, LoadedBundle] = {}
        self._lock = threading.Lock()

    def load_dir(self, root: str | Path) -> list[str]:
        """Load every bundle under root; a corrupt one, or two with one id, is an error, not silently skipped."""
        return [self.add(path) for path in find_bundles(root)]

    def add(self, path: str | Path) -> str:
        path = Path(path)
        codec = Codec.from_bundle(load_bundle(path, need=("decoder",)), self._threads)
        text = (path / "manifest.json").read_text()
        with self._lock:
            held = self._bundles.get(codec.bundle_id)
            if held is not None and held.path.resolve() != path.resolve():
                raise BundleError(
                    f"bundle {codec.bundle_id} is in two places: {held.path} and {path}; keep one "
                    f"(the same id must mean the same bytes)"
                )
            self._bundles[codec.bundle_id] = LoadedBundle(codec, path, text)
        log.info("loaded bundle %s from %s", codec.bundle_id, path)
        return codec.bundle_id

    def get(self, bundle_id: str) -> LoadedBundle | None:
        return self._bundles.get(bundle_id)

    def ids(self) -> list[str]:
        return sorted(self._bundles)

    def __len__(self) -> int:
        return len(self._bundles)


__all__ = ["BundleError", "BundleRegistry", "LoadedBundle"]

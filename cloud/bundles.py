"""The bundles a server holds: loaded once, hash-verified, with one decoder session each."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from latent_codec.bundle import Bundle, find_bundles, load_bundle
from latent_codec.errors import BundleError

log = logging.getLogger(__name__)


@dataclass
class LoadedBundle:
    bundle: Bundle
    decoder: object  # onnxruntime.InferenceSession (thread-safe for run())
    manifest_json: str


class BundleRegistry:
    def __init__(self, threads: int = 0):
        self._threads = threads
        self._bundles: dict[str, LoadedBundle] = {}
        self._lock = threading.Lock()

    def load_dir(self, root: str | Path) -> list[str]:
        """Load every bundle under root; a corrupt one is an error, not silently skipped."""
        ids = []
        for path in find_bundles(root):
            ids.append(self.add(path))
        return ids

    def add(self, path: str | Path) -> str:
        b = load_bundle(path, need=("decoder",))
        sess = b.session("decoder", self._threads)
        text = (Path(path) / "manifest.json").read_text()
        with self._lock:
            self._bundles[b.bundle_id] = LoadedBundle(b, sess, text)
        log.info("loaded bundle %s from %s", b.bundle_id, path)
        return b.bundle_id

    def get(self, bundle_id: str) -> LoadedBundle | None:
        return self._bundles.get(bundle_id)

    def ids(self) -> list[str]:
        return sorted(self._bundles)

    def __len__(self) -> int:
        return len(self._bundles)


__all__ = ["BundleRegistry", "LoadedBundle", "BundleError"]

"""The bundles a server holds, by content id and by name and version, reloaded live.

Layouts under --bundles (both may be mixed):

    bundles/<name>/<version>/manifest.json   versioned: "conv@3"; "conv" means the highest version
    bundles/<name>/manifest.json             version 1 of <name>
    bundles/manifest.json                    the root itself is one bundle (version 1 of its directory name)

A request names a bundle by its content id ("conv-a86d88ef9e84", what payloads and storage carry),
by "name@version", or by "name" alone. ``reload()`` (SIGHUP, or polling every --reload-interval
seconds) picks up new, changed and removed bundles without a restart: each bundle is loaded and
verified off to the side and the maps are swapped at once, so a request in flight keeps the codec
it started with and never fails because of a rollout. A bundle that fails to load is logged and
skipped (an older copy at that path keeps serving); at start-up it is an error.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latent_codec.bundle import MANIFEST_NAME, Manifest, load_bundle
from latent_codec.codec import Codec
from latent_codec.errors import BundleError

log = logging.getLogger(__name__)
_VERSION = re.compile(r"[1-9][0-9]{0,8}")


@dataclass
class LoadedBundle:
    codec: Codec  # decoder side only (ONNX Runtime sessions are thread-safe for run())
    path: Path
    manifest_json: str
    name: str = ""
    version: int = 1
    extras: dict[str, Any] = field(default_factory=dict)  # per-server attachments (the batcher)

    @property
    def bundle_id(self) -> str:
        return self.codec.bundle_id

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"


@dataclass
class ReloadReport:
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.added or self.replaced or self.removed)


def discover(root: Path) -> dict[Path, tuple[str, int]]:
    """Bundle directories under root -> (name, version), per the layouts above."""
    if (root / MANIFEST_NAME).is_file():
        return {root: (root.resolve().name, 1)}
    if not root.is_dir():
        raise BundleError(f"bundle directory not found: {root}")
    found: dict[Path, tuple[str, int]] = {}
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (child / MANIFEST_NAME).is_file():
            found[child] = (child.name, 1)
            continue
        for sub in sorted(p for p in child.iterdir() if p.is_dir()):
            if _VERSION.fullmatch(sub.name) and (sub / MANIFEST_NAME).is_file():
                found[sub] = (child.name, int(sub.name))
    return found


class BundleRegistry:
    def __init__(self, threads: int = 0):
        self._threads = threads
        self._by_path: dict[Path, LoadedBundle] = {}
        self._by_id: dict[str, LoadedBundle] = {}
        self._by_name: dict[str, dict[int, LoadedBundle]] = {}
        self._lock = threading.Lock()  # one reload at a time; readers use the swapped dicts without it
        self.root: Path | None = None

    def load_dir(self, root: str | Path) -> list[str]:
        """Load every bundle under root at start-up; a corrupt one, or two with one id, is an error."""
        self.root = Path(root)
        report = self.reload(strict=True)
        return report.added

    def add(self, path: str | Path) -> str:
        """Load one bundle directory (version 1 of its directory name) in addition to what is held."""
        path = Path(path)
        lb = self._load(path, path.name, 1)
        with self._lock:
            self._install({**self._by_path, path: lb})
        return lb.bundle_id

    def _load(self, path: Path, name: str, version: int) -> LoadedBundle:
        codec = Codec.from_bundle(load_bundle(path, need=("decoder",)), self._threads)
        return LoadedBundle(codec, path, (path / MANIFEST_NAME).read_text(), name, version)

    def reload(self, strict: bool = False) -> ReloadReport:
        """Rescan the root: load new and changed bundles, drop removed ones, swap atomically."""
        report = ReloadReport()
        if self.root is None:
            return report
        with self._lock:
            try:
                found = discover(self.root)
            except BundleError as exc:
                if strict:
                    raise
                report.errors.append(str(exc))
                return report
            new: dict[Path, LoadedBundle] = {}
            for path, (name, version) in found.items():
                old = self._by_path.get(path)
                if old is not None and _same(old, path) and (old.name, old.version) == (name, version):
                    new[path] = old
                    continue
                try:
                    lb = self._load(path, name, version)
                except BundleError as exc:
                    if strict:
                        raise
                    report.errors.append(str(exc))
                    log.error("reload: %s", exc)
                    if old is not None:
                        new[path] = old  # keep serving the copy that worked
                    continue
                (report.replaced if old is not None else report.added).append(lb.bundle_id)
                new[path] = lb
            report.removed = [lb.bundle_id for p, lb in self._by_path.items() if p not in new]
            try:
                self._install(new)
            except BundleError as exc:
                if strict:
                    raise
                report.errors.append(str(exc))
                log.error("reload refused: %s", exc)
                return ReloadReport(errors=report.errors)
        for what, ids in (
            ("added", report.added),
            ("replaced", report.replaced),
            ("removed", report.removed),
        ):
            for bundle_id in ids:
                log.info("bundle %s %s", bundle_id, what)
        return report

    def _install(self, by_path: dict[Path, LoadedBundle]) -> None:
        by_id: dict[str, LoadedBundle] = {}
        by_name: dict[str, dict[int, LoadedBundle]] = {}
        for lb in by_path.values():
            held = by_id.get(lb.bundle_id)
            if held is not None and held.path.resolve() != lb.path.resolve():
                raise BundleError(
                    f"bundle {lb.bundle_id} is in two places: {held.path} and {lb.path}; keep one "
                    f"(the same id must mean the same bytes)"
                )
            by_id[lb.bundle_id] = lb
            other = by_name.setdefault(lb.name, {}).get(lb.version)
            if other is not None and other.bundle_id != lb.bundle_id:
                raise BundleError(f"{lb.ref} names two bundles: {other.path} and {lb.path}")
            by_name[lb.name][lb.version] = lb
        self._by_path, self._by_id, self._by_name = by_path, by_id, by_name

    def get(self, ref: str) -> LoadedBundle | None:
        """A bundle by content id, "name@version", or "name" (its highest version)."""
        lb = self._by_id.get(ref)
        if lb is not None:
            return lb
        name, _, version = ref.partition("@")
        versions = self._by_name.get(name)
        if not versions:
            return None
        if not version:
            return versions[max(versions)]
        return versions.get(int(version)) if _VERSION.fullmatch(version) else None

    def ids(self) -> list[str]:
        return sorted(self._by_id)

    def entries(self) -> list[LoadedBundle]:
        return sorted(self._by_id.values(), key=lambda lb: (lb.name, lb.version))

    def __len__(self) -> int:
        return len(self._by_id)


def _same(old: LoadedBundle, path: Path) -> bool:
    """Is the bundle at path still the one loaded (same manifest text)? Cheap: no ONNX file is read."""
    try:
        text = (path / MANIFEST_NAME).read_text()
    except OSError:
        return False
    if text == old.manifest_json:
        return True
    try:  # metrics-only edits (not hashed) keep the bundle; anything hashed is a new bundle
        return Manifest.from_json(text).content_hash == old.codec.manifest.content_hash  # type: ignore[union-attr]
    except BundleError:
        return False


__all__ = ["BundleError", "BundleRegistry", "LoadedBundle", "ReloadReport", "discover"]

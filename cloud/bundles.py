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

from latent_codec.bundle import DECODER_NAME, ENCODER_NAME, MANIFEST_NAME, Manifest, load_bundle
from latent_codec.codec import Codec
from latent_codec.decode_cost import measure_graph
from latent_codec.errors import BundleError

log = logging.getLogger(__name__)


def priced_codec(path: Path, threads: int, need: tuple[str, ...] = ("decoder",)) -> Codec:
    """A bundle's codec as a server holds it: its decoder graph measured, so cloud/limits.py can price a
    request by what decoding holds and takes per pixel. Benchmarks and tests that attack a server use it to
    know the server's own prices."""
    bundle = load_bundle(path, need=need)
    codec = Codec.from_bundle(bundle, threads)
    try:
        codec.graph_cost = measure_graph(bundle.decoder_bytes or b"")
    except Exception as exc:  # ORT failing a probe run: the graph is unusable for serving
        raise BundleError(
            f"{path}: the decoder graph cannot be measured ({type(exc).__name__}: {exc})"
        ) from None
    return codec


_VERSION = re.compile(r"[1-9][0-9]{0,8}")


@dataclass
class LoadedBundle:
    codec: Codec  # decoder side only (ONNX Runtime sessions are thread-safe for run())
    path: Path
    manifest_json: str
    name: str = ""
    version: int = 1
    extras: dict[str, Any] = field(default_factory=dict)  # per-server attachments (the batcher)
    stamp: tuple = ()  # the ONNX files' (size, mtime, inode) when loaded: a file rewritten in place is noticed

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
        stamp = _stamp(path)
        codec = priced_codec(path, self._threads)
        return LoadedBundle(codec, path, (path / MANIFEST_NAME).read_text(), name, version, stamp=stamp)

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
            if not strict:  # a clash skips the newcomer (logged), never every other change of the scan
                for problem, path in _clashes(new, self._by_path):
                    report.errors.append(problem)
                    log.error("reload: %s; %s is skipped", problem, path)
                    lb = new.pop(path)
                    for ids in (report.added, report.replaced):
                        if lb.bundle_id in ids:
                            ids.remove(lb.bundle_id)
                    if path in self._by_path and not _clashes({**new, path: self._by_path[path]}, {}):
                        new[path] = self._by_path[path]  # the copy that worked keeps serving
            report.removed = [lb.bundle_id for p, lb in self._by_path.items() if p not in new]
            emptied = bool(self._by_path) and not new
            try:
                self._install(new)
            except BundleError as exc:
                if strict:
                    raise
                report.errors.append(str(exc))
                log.error("reload refused: %s", exc)
                return ReloadReport(errors=report.errors)
            if emptied:
                log.warning("reload: %s holds no bundle any more: this server now decodes nothing", self.root)
        for what, ids in (
            ("added", report.added),
            ("replaced", report.replaced),
            ("removed", report.removed),
        ):
            for bundle_id in ids:
                log.info("bundle %s %s", bundle_id, what)
        return report

    def _install(self, by_path: dict[Path, LoadedBundle]) -> None:
        problems = _clashes(by_path, {})
        if problems:
            raise BundleError(problems[0][0])
        self._by_path, self._by_id, self._by_name = by_path, *_maps(by_path)

    def get(self, ref: str) -> LoadedBundle | None:
        """A bundle by content id, "name@version", or "name" (its highest version); None for anything else,
        including a malformed reference ("conv@", "conv@0", "@1": describe_ref says why)."""
        lb = self._by_id.get(ref)
        if lb is not None:
            return lb
        if describe_ref(ref) is not None:
            return None
        name, at, version = ref.partition("@")
        versions = self._by_name.get(name)
        if not versions:
            return None
        return versions.get(int(version)) if at else versions[max(versions)]

    def ids(self) -> list[str]:
        return sorted(self._by_id)

    def entries(self) -> list[LoadedBundle]:
        return sorted(self._by_id.values(), key=lambda lb: (lb.name, lb.version))

    def __len__(self) -> int:
        return len(self._by_id)


def _maps(
    by_path: dict[Path, LoadedBundle],
) -> tuple[dict[str, LoadedBundle], dict[str, dict[int, LoadedBundle]]]:
    by_id: dict[str, LoadedBundle] = {}
    by_name: dict[str, dict[int, LoadedBundle]] = {}
    for lb in by_path.values():
        by_id.setdefault(lb.bundle_id, lb)
        by_name.setdefault(lb.name, {}).setdefault(lb.version, lb)
    return by_id, by_name


def _clashes(by_path: dict[Path, LoadedBundle], held: dict[Path, LoadedBundle]) -> list[tuple[str, Path]]:
    """(problem, path to skip) for each bundle id in two places, or name@version naming two bundles; the path
    skipped is the one not held before (else the later in order)."""
    out: list[tuple[str, Path]] = []
    by_id: dict[str, LoadedBundle] = {}
    by_ref: dict[tuple[str, int], LoadedBundle] = {}
    for path in sorted(by_path, key=lambda p: (p not in held, str(p))):
        lb = by_path[path]
        first = by_id.get(lb.bundle_id)
        if first is not None and first.path.resolve() != lb.path.resolve():
            out.append(
                (
                    f"bundle {lb.bundle_id} is in two places: {first.path} and {lb.path}; keep one "
                    f"(the same id must mean the same bytes)",
                    path,
                )
            )
            continue
        other = by_ref.get((lb.name, lb.version))
        if other is not None and other.bundle_id != lb.bundle_id:
            out.append((f"{lb.ref} names two bundles: {other.path} and {lb.path}", path))
            continue
        by_id[lb.bundle_id] = lb
        by_ref[(lb.name, lb.version)] = lb
    return out


def describe_ref(ref: str) -> str | None:
    """Why a bundle reference is malformed (a phrase for the caller), or None when it is a content id, a name or
    name@version with a positive version."""
    name, at, version = ref.partition("@")
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        return "is not a bundle reference (use a content id, NAME or NAME@VERSION)"
    if at and not _VERSION.fullmatch(version):
        return f"has version {version!r}; a version is a positive integer (NAME@VERSION, e.g. {name}@1)"
    return None


def _stamp(path: Path) -> tuple:
    """(size, mtime_ns, inode) of a bundle's ONNX files: cheap, and changed by any rewrite, in place or not."""
    out: list[tuple[int, int, int] | None] = []
    for name in (ENCODER_NAME, DECODER_NAME):
        try:
            st = (path / name).stat()
        except OSError:
            out.append(None)
            continue
        out.append((st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


def _same(old: LoadedBundle, path: Path) -> bool:
    """Is the bundle at path still the one loaded (same ONNX files, same manifest)? Cheap: no file is read but the
    manifest."""
    if (
        old.stamp and _stamp(path) != old.stamp
    ):  # e.g. decoder.onnx overwritten in place: load and verify it again
        return False
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


__all__ = ["BundleError", "BundleRegistry", "LoadedBundle", "ReloadReport", "describe_ref", "discover"]

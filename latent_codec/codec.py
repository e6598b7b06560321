"""One bundle's codec: raw items -> item payloads -> raw items, as explicit steps the manifest names.

    encode:  scale ─► analyse (encoder.onnx) ─► quantise ─► entropy-code ─► pack      -> one payload per item
    decode:  unpack ─► entropy-decode ─► dequantise ─► synthesise (decoder.onnx) ─► unscale

``Codec`` is the base every codec family derives from (latent_codec/families/: flat codes, code maps);
``Codec.open`` reads a bundle and builds the codec of its family, found through latent_codec/registry.py
by the manifest's payload kind. Everything above (the edge, the cloud, export, the benchmarks, the tests)
calls these methods and never asks which family it holds: there is no second implementation of the path.
What differs between families is how an item's payload is laid out and how its size and cost are read
from the payload (``output_shapes``, ``item_costs``), which budgets are checked on before decoding.

A codec needs no server: ``Codec.open("bundles/conv").decode(Codec.open(...).encode(x))`` runs offline.
The wire form of payloads and items is latent_codec/container.py.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from . import ans, metrics, registry
from .bundle import Bundle, InputSpec, Manifest, load_bundle
from .decode_cost import ENTROPY_BYTES_PER_SYMBOL, ENTROPY_SECONDS_PER_SYMBOL, DecodeCosts, GraphCost
from .errors import DataError, PayloadError
from .parallel import Workers, pieces
from .transforms import Side, Transforms

__all__ = ["Codec", "Progress", "Side"]

Progress = Callable[[str, int, int], None]  # (step, done, total), e.g. ("synthesise", 12, 48) tiles
# Fewest items per part when one decode or encode call is split across threads (below it, a graph run's fixed
# cost shows); a call of fewer than twice this many items runs on one thread.
SPLIT = 32


class Codec:
    """The public steps of one codec family, and what every family shares (scaling, errors, quality)."""

    kind: ClassVar[str] = ""  # the manifest payload kind (set by registry.register_family)
    payload_type: ClassVar[Any] = None  # the class the manifest's payload section parses into
    any_size: ClassVar[bool] = False  # items of any height and width (the size travels in each payload)
    # Long single-item work (a photo's tiles, entropy-coding passes) reports (step, done, total) here when set:
    # the edge CLI shows it; a server leaves it None. Families whose items are small never call it.
    progress: Progress | None = None
    graph_cost: GraphCost | None = (
        None  # the decoder graph's measured cost (decode_cost.measure_graph), if known
    )
    # The threads one call may use for its parts (latent_codec/parallel.py): groups of items in ``decode``, and in
    # families that split more (code maps: a photo's tiles and strips). One thread unless set: the edge CLI sets its
    # --threads (Codec.open_split); a server passes its decode threads per call (``decode(workers=...)``), when a
    # request's budget allows them. The result is the same whatever the count.
    workers: Workers = Workers(1)
    splits_items: ClassVar[bool] = (
        False  # whether encode splits item groups and tiles itself (Codec.open_split)
    )

    def __init__(
        self,
        input: InputSpec,
        code_shape: Sequence[int],
        payload: Any,
        transforms: Transforms,
        bundle_id: str = "",
        manifest: Manifest | None = None,
    ):
        self.input = input
        self.code_shape = [int(s) for s in code_shape]
        self.payload = payload
        self.transforms = transforms
        self.bundle_id = bundle_id
        self.manifest = manifest  # set when built from a bundle

    # ---- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_bundle(cls, bundle: Bundle, threads: int = 0) -> Codec:
        """The codec of the bundle's family over its loaded graphs, ``threads`` per ONNX Runtime session."""
        return registry.family(bundle.manifest.payload.kind).build(bundle, threads)

    @classmethod
    def build(cls, bundle: Bundle, threads: int = 0) -> Codec:
        """This family's codec over a loaded bundle (each family implements it)."""
        raise NotImplementedError

    @classmethod
    def open(
        cls, path: str | Path, need: tuple[str, ...] = ("encoder", "decoder"), threads: int = 0
    ) -> Codec:
        """Load a bundle directory (hash-verified) and build its codec; ``need`` names the graphs to run."""
        return cls.from_bundle(load_bundle(path, need=need), threads)

    @classmethod
    def open_split(
        cls, path: str | Path, need: tuple[str, ...] = ("encoder", "decoder"), threads: int = 0
    ) -> Codec:
        """Like ``open``, for a device's ``--threads N`` (0: one per core): a family that splits its own work
        (``splits_items``: code maps, a photo's tiles and strips) gets N workers over one-thread graph sessions,
        so N tiles run at once instead of N threads fighting over one tile; other families get N-thread sessions.
        The payloads are the same bytes either way."""
        bundle = load_bundle(path, need=need)
        family = registry.family(bundle.manifest.payload.kind)
        if not family.splits_items or threads == 1:
            return family.build(bundle, threads)
        codec = family.build(bundle, 1)
        codec.workers = Workers(threads)
        return codec

    # ---- facts from the manifest ------------------------------------------------------------------------
    @property
    def format(self) -> str:
        return self.payload.format

    @property
    def item_bytes(self) -> int | None:
        """Payload bytes per item for fixed-size formats; None when variable."""
        return self.payload.item_bytes

    def output_shapes(self, payloads: Sequence[bytes]) -> np.ndarray:
        """(N, 3) item shape (C, H, W) each payload decodes to, read without decoding (budgets are checked on it)."""
        return np.tile(np.asarray(self.input.shape, np.int64), (len(payloads), 1))

    def item_costs(self, payloads: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Per item: float32 bytes it decodes to and code symbols to entropy-decode, read without decoding."""
        out = self.output_shapes(payloads).prod(axis=1) * 4
        return out, np.full(len(payloads), self.payload.code_dims, np.int64)

    def unpack_costs(self, payloads: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Per item: bytes and CPU seconds of unpacking and entropy-decoding it (before the decoder graph)."""
        symbols = self.item_costs(payloads)[1]
        return symbols * ENTROPY_BYTES_PER_SYMBOL, symbols * ENTROPY_SECONDS_PER_SYMBOL

    def decode_costs(self, payloads: Sequence[bytes], threads: int = 1) -> DecodeCosts:
        """What decoding these payloads holds and takes, per item, read from their headers without decoding
        (latent_codec/decode_cost.py), the call split over `threads` threads as ``decode`` splits it (each
        group of items running its own graph runs). Without a measured ``graph_cost`` the graph's part is not
        counted."""
        shapes = self.output_shapes(payloads)
        out_bytes, symbols = self.item_costs(payloads)
        unpack_bytes, seconds = self.unpack_costs(payloads)
        pixels = shapes[:, 1:].prod(axis=1) if len(shapes) else np.zeros(0, np.int64)
        g = self.graph_cost
        graph = g.bytes(pixels) if g is not None else np.zeros(len(pixels), np.int64)
        if g is not None:
            seconds = seconds + g.seconds(pixels)
        runs = self.split_runs(len(payloads), threads)
        return DecodeCosts(out_bytes, graph, unpack_bytes, symbols, seconds, g.run_bytes * runs if g else 0)

    @staticmethod
    def split_runs(n: int, threads: int) -> int:
        """Groups of items a call of n items runs at once on `threads` threads (``decode_split``)."""
        return max(1, min(threads, len(pieces(n, 4 * threads, SPLIT)))) if n >= 2 * SPLIT else 1

    def release_memory(self) -> None:
        """After a large decode: give back what the decoder's runtime keeps (a no-op for other transforms)."""
        release = getattr(self.transforms, "release", None)
        if release is not None:
            release()

    # ---- encode -----------------------------------------------------------------------------------------
    def check_items(self, x: np.ndarray) -> None:
        """Refuse items that do not fit the bundle, naming both shapes."""
        want = tuple(self.input.shape)
        got = tuple(int(s) for s in np.shape(x)[1:])
        if np.ndim(x) != 4 or got != want:
            raise DataError(
                f"items are {'x'.join(map(str, got))} (C x H x W) but bundle {self.name} expects "
                f"{'x'.join(map(str, want))}"
            )
        self.check_dtype(x)

    def check_dtype(self, x: np.ndarray) -> None:
        if self.input.dtype == "uint8" and x.dtype != np.uint8:
            raise DataError(f"items are {x.dtype} but bundle {self.name} expects uint8 pixels")

    @property
    def name(self) -> str:
        return self.bundle_id or "this codec"

    def scale(self, x_raw: np.ndarray) -> np.ndarray:
        """Step 1: raw items -> [0, 1] model input (manifest input.scale)."""
        return self.input.to_unit(x_raw)

    def analyse(self, x_unit: np.ndarray) -> tuple[np.ndarray, Side]:
        """Step 2: the analysis transform -> (codes, side fields)."""
        raise NotImplementedError

    def quantise(self, codes: np.ndarray) -> np.ndarray:
        """Step 3: codes -> symbols."""
        raise NotImplementedError

    def encode(self, x_raw: np.ndarray) -> list[bytes]:
        """(N, C, H, W) raw items -> N payloads."""
        raise NotImplementedError

    # ---- decode -----------------------------------------------------------------------------------------
    def symbols(self, payloads: Sequence[bytes]) -> tuple[np.ndarray, Side]:
        """Payloads -> (symbols, side): everything but the transforms. Raises PayloadError on any bad payload."""
        raise NotImplementedError

    def dequantise(self, symbols: np.ndarray, side: Side | None = None) -> np.ndarray:
        """Inverse of ``quantise``: symbols -> codes. ``side`` is what ``symbols`` returned beside them: a family
        whose codes depend on more than the symbols (a mean-and-scale hyperprior's means) reads it there."""
        raise NotImplementedError

    def synthesise(self, codes: np.ndarray, side: Side, chunk: int = 0) -> np.ndarray:
        """The synthesis transform, clipped to [0, 1] (chunk > 0: at most that many items per graph run)."""
        raise NotImplementedError

    def unscale(self, x_unit: np.ndarray) -> np.ndarray:
        """Inverse of ``scale``: [0, 1] -> raw items (uint8 rounded)."""
        return self.input.from_unit(x_unit)

    def decode(
        self, payloads: Sequence[bytes], unit: bool = False, chunk: int = 0, workers: Workers | None = None
    ) -> np.ndarray:
        """N payloads of one item size -> N items: raw dtype, or [0, 1] float32 with unit=True.

        chunk > 0 runs the decoder graph on at most that many items at a time, so its intermediate
        activations stay bounded however large the batch (a server's memory budget relies on it).
        workers: the threads for this call (default: the codec's ``workers``); the result is the same.
        """
        payloads = list(payloads)
        workers = workers or self.workers
        if workers.threads > 1 and len(payloads) >= 2 * SPLIT:
            return self.decode_split(payloads, lambda part: self._decode_whole(part, unit, chunk), workers)
        return self._decode_whole(payloads, unit, chunk)

    def _decode_whole(self, payloads: Sequence[bytes], unit: bool, chunk: int) -> np.ndarray:
        symbols, side = self.symbols(payloads)
        x_unit = self.synthesise(self.dequantise(symbols, side), side, chunk)
        return x_unit if unit else self.unscale(x_unit)

    def decode_split(
        self, payloads: list[bytes], decode: Callable[[list[bytes]], np.ndarray], workers: Workers
    ) -> np.ndarray:
        """decode(payloads) run as groups of consecutive items on ``workers`` (each group unpacks, entropy-decodes,
        selects tables and synthesises on its own, so one thread's coding overlaps another's graph run), written
        into one output in item order: the same array as one call, since every step is per item. A bad payload
        anywhere: the whole call again on this thread, so the error names the same item as one call would."""
        n = len(payloads)
        parts = pieces(n, 4 * workers.threads, SPLIT)  # several per thread: a slow thread takes fewer
        made: list[np.ndarray] = []
        lock = threading.Lock()

        def part(ab: tuple[int, int]) -> None:
            a, b = ab
            x = decode(payloads[a:b])
            with lock:
                if not made:
                    made.append(np.empty((n, *x.shape[1:]), x.dtype))
            made[0][a:b] = x

        try:
            workers.map(part, parts)
        except Exception:  # a bad payload (or items of two sizes): one call says which, as it always has
            return decode(payloads)
        return made[0]

    def decode_each(self, payloads: Sequence[bytes], unit: bool = False, chunk: int = 0) -> list[np.ndarray]:
        """Payloads that may decode to items of different sizes -> one (C, H, W) item each.

        Payloads are decoded in groups of one size (what their headers say; one group for fixed-size codecs),
        so callers need not know which kind of codec they hold.
        """
        payloads = list(payloads)
        out: list[np.ndarray | None] = [None] * len(payloads)
        for idx in self.size_groups(payloads):
            for i, item in zip(idx, self.decode([payloads[i] for i in idx], unit, chunk)):
                out[i] = item
        return out  # type: ignore[return-value]

    def size_groups(self, payloads: Sequence[bytes]) -> list[list[int]]:
        """Indices of the payloads grouped by the item size they decode to, in order of first appearance."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, shape in enumerate(self.output_shapes(payloads).tolist()):
            groups.setdefault(tuple(shape), []).append(i)
        return list(groups.values())

    def first_invalid(self, payloads: Sequence[bytes]) -> int | None:
        """Index of the first payload that does not decode under this codec's format, or None if all do: what the
        cloud checks before it stores items, so range-coded streams are also proven canonical here."""
        with ans.verifying():
            return self._first_invalid(list(payloads))

    def _first_invalid(self, payloads: list[bytes]) -> int | None:
        try:
            groups = self.size_groups(payloads)
        except PayloadError:  # a size header that does not parse: find it
            return next((i for i, p in enumerate(payloads) if self.problem(p) is not None), 0)
        for idx in groups:
            try:
                self.symbols([payloads[i] for i in idx])
            except Exception:  # PayloadError, or the entropy coder's own error on garbage: find the culprit
                return next((i for i in idx if self.problem(payloads[i]) is not None), idx[0])
        return None

    def problem(self, payload: bytes) -> str | None:
        """Why one payload does not decode (a sentence for the caller), or None when it does (canonical streams
        only, as ``first_invalid``)."""
        try:
            with ans.verifying():
                self.symbols([payload])
        except PayloadError as exc:
            return str(exc).removeprefix("item 0: ")
        except Exception as exc:
            return f"payload does not decode ({type(exc).__name__})"
        return None

    def ideal_bits(self, payloads: Sequence[bytes]) -> np.ndarray | None:
        """Per item, the ideal code length in bits under the entropy model (what a perfect coder would spend,
        side information included); None for fixed-width formats. Reports compare it with the real bytes."""
        return None

    # ---- quality ------------------------------------------------------------------------------------------
    def squared_error(self, originals_raw: np.ndarray, recon: np.ndarray, unit: bool = False) -> np.ndarray:
        """Per-item MSE on the [0, 1] scale between raw originals and reconstructions (raw, or unit=True)."""
        return metrics.per_item_mse(self.scale(originals_raw), recon if unit else self.scale(recon))

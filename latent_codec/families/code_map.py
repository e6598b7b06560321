"""Code maps: spatial bundles, whose code is a feature map and whose items have any height and width.

One item's payload:

    [ H varint ][ W varint ][ ANS stream: ẑ under per-channel tables, then ŷ under the tables ẑ selects ]

- ŷ (M, ⌈H/4⌉, ⌈W/4⌉): the code map rounded to integers, clipped to the manifest's grid
  [-2^(b-1), 2^(b-1) - 1], sent as symbols 0..2^b - 1.
- "factorized": element (c, u, v) of ŷ uses channel c's table.
- "hyperprior": ẑ (Nh, ⌈h/2⌉, ⌈w/2⌉) travels first under per-channel tables; the integer hyper-decoder
  (hyper_decoder.py) maps ẑ to one table index per element of ŷ (a Gaussian scale from a fixed table of 64).

Within an item, ŷ's elements are coded grouped by table (ascending index, positions in C order), so each
group is one coder call with one model; the decoder knows every index before it reads ŷ, so it reproduces
the grouping. All tables are integers in the manifest, as for flat codes.

The codec (``MapCodec``): same public steps as every codec (the cloud and the benchmarks call them
unchanged); an item's shape comes from its payload, and one batch of payloads must share a size to be
decoded as one array (``decode_each`` takes a mix).

    encode:  scale ─► pad to the stride (edge) ─► analyse (encoder.onnx: ŷ map, ẑ map) ─► quantise
             ─► table indices (integer hyper-decoder) ─► entropy-code + pack (size header, ANS)
    decode:  unpack (size header, ẑ, indices, ŷ) ─► dequantise ─► synthesise (decoder.onnx) ─► crop ─► unscale
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

import numpy as np

from .. import ans
from ..bundle import Bundle
from ..codec import SPLIT, Codec, Progress, Side
from ..decode_cost import ENTROPY_SECONDS_PER_SYMBOL, DecodeCosts
from ..errors import BundleError, DataError, PayloadError
from ..factorized_prior import FactorizedPrior
from ..parallel import Workers, pieces
from ..registry import register_family
from ..tiling import Tile, core_of, cover, probe_radius, round_up, scaled, tiles, windows
from ..transforms import OnnxTransforms
from ..varint import VarintError, get_varint, put_varint
from . import hyper_decoder
from .hyper_decoder import ExactnessBound, IntegerHyperDecoder

MAP_KINDS = ("factorized", "hyperprior")
MAX_SIDE = 1 << 15  # largest height or width a payload may claim (32768)
MAX_PIXELS = 1 << 26  # largest height x width (64 Mpx: 256 MB of float32 per channel when decoded)
HEADER_BITS = 28  # a side of up to 2^28 fits four varint bytes; a longer header is malformed
SEGMENT = 1 << 18  # ŷ elements an item's flat map is sorted in at a time (bounded index arrays)
SORT_BLOCK = 1 << 20  # ŷ elements per argsort call (8 MB of int64 positions)
GROUP_ELEMENTS = 1 << 22  # ŷ elements of the items coded together per pass (int32 buffers of 16 MB)
ENCODE_TILE = 512  # pixels per side of an analysis tile's core (items larger than one tile are tiled)
RELEASE_AFTER_TILES = 4  # items of more analysis tiles give the encoder's arena back before entropy coding
# code elements per side of a synthesis tile's core at stride 4 (256 pixels; the same pixels at other strides:
# MapCodec.decode_core)
DECODE_TILE = 64
UNPACK_BYTES_PER_SYMBOL = 14  # what unpacking holds per code symbol (MapCodec.unpack_costs)
UNSCALE_BLOCK = 1 << 20  # values converted to raw pixels at a time (a few MB of temporaries)
SMALL_Z = 64  # ẑ elements per channel up to which an item's ẑ is coded in one call (per-symbol rows)


_HALF_BITS = HEADER_BITS // 2  # a side travels in the stream as two halves of 14 bits
_HALF_MASK = (1 << _HALF_BITS) - 1


class _SizeModels:
    """The coder models of an in-stream size: the nominal-size flag (symbol 0 at 65535/65536, so an item of
    near-certain symbols still codes to zero bytes) and a uniform
    14-bit half of a side; built on first use (imported lazily, like every constriction model)."""

    @cached_property
    def flag(self) -> Any:
        return ans.Tables(np.array([[(1 << 16) - 1, 1]], np.int64), 16).models[0]

    @cached_property
    def nominal_below(self) -> int:
        """The flag reads "nominal" exactly when the stream's first 8 bytes (big-endian, zero-padded) are below
        this value: the decoder's first symbol is monotone in that value, so a binary search with the decoder
        itself finds the boundary once, and sizes are then read without a decoder per payload (a server prices
        every request from its sizes before decoding)."""
        lo, hi = 0, 1 << 64  # flag(lo) is nominal; flag(hi) is not (or hi is past the end)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._flag_of(mid) == 0:
                lo = mid
            else:
                hi = mid
        return hi

    def _flag_of(self, value: int) -> int:
        data = value.to_bytes(8, "big").rstrip(b"\x00")
        try:
            return int(ans.decoder(data, ans.RANGE_CODER).pop(self.flag, 1)[0])
        except PayloadError:
            return 1

    @cached_property
    def half(self) -> Any:
        return ans.Tables(np.full((1, 1 << _HALF_BITS), 1 << (16 - _HALF_BITS), np.int64), 16).models[0]


_SIZE_MODELS = _SizeModels()


@dataclass
class MapPayload:
    """The manifest's payload section for code maps (kind "map"): grid, tables, hyper-decoder."""

    kind: ClassVar[str] = "map"
    entropy_models: ClassVar[tuple[str, ...]] = MAP_KINDS  # what this payload class reads
    entropy: str  # "factorized" | "hyperprior" (mean_scale.py: "meanscale")
    code_channels: int  # M
    stride: int  # item pixels per code element along each side
    grid_bits: int  # ŷ symbols are 0..2^grid_bits - 1 (ŷ + 2^(grid_bits-1))
    y_tables: FactorizedPrior  # (M, levels) factorized, or (scale levels, levels) hyperprior
    hyper_channels: int = 0
    hyper_stride: int = 2
    z_grid_bits: int = 0
    z_tables: FactorizedPrior | None = None  # (Nh, z levels)
    hyper_decoder: IntegerHyperDecoder | None = None
    # The size the model was trained on, whose in-stream size costs next to nothing (range-coded bundles
    # exported since 2026-12-07); None: a varint header spells out H and W (earlier bundles, whose payloads stay
    # byte-identical). See the size header below.
    nominal_size: tuple[int, int] | None = None
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # derived, cached

    def __post_init__(self) -> None:
        if self.hyper_decoder is not None and self.z_grid_bits > 0:
            self.exactness()  # a payload built at export: refuse weights that could overflow

    def exactness(self) -> ExactnessBound:
        """The hyper-decoder's proven bound for ẑ on this grid (which arithmetic selects tables exactly);
        ValueError for weights that could overflow int64, so such a bundle is neither exported nor loaded."""
        assert self.hyper_decoder is not None
        return self.hyper_decoder.check(1 << (self.z_grid_bits - 1))

    # ---- facts --------------------------------------------------------------------------------------------
    @property
    def format(self) -> str:
        return f"map+{self.entropy}"

    @property
    def has_hyper(self) -> bool:
        """Whether ẑ travels first and a hyper-decoder selects ŷ's tables (every model but "factorized")."""
        return self.entropy != "factorized"

    @property
    def hyper_outputs(self) -> int:
        """Output channels of the hyper-decoder: one log σ per channel of ŷ."""
        return self.code_channels

    @property
    def item_bytes(self) -> None:
        return None  # always variable size

    @property
    def coder(self) -> str:
        """The entropy coder of the whole stream (ẑ and ŷ tables name the same one)."""
        return self.y_tables.coder

    @property
    def code_dims(self) -> int:
        """Code elements per STRIDE x STRIDE block of pixels (a per-item count depends on the item's size)."""
        return self.code_channels

    def code_size(self, h: int, w: int) -> tuple[int, int]:
        return -(-h // self.stride), -(-w // self.stride)

    def hyper_size(self, h: int, w: int) -> tuple[int, int]:
        hy, wy = self.code_size(h, w)
        return -(-hy // self.hyper_stride), -(-wy // self.hyper_stride)

    def symbols_per_item(self, h: int, w: int) -> int:
        hy, wy = self.code_size(h, w)
        hz, wz = self.hyper_size(h, w) if self.has_hyper else (0, 0)
        return self.code_channels * hy * wy + self.hyper_channels * hz * wz

    # ---- (de)serialisation --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d: dict[str, Any] = {
            "kind": self.kind,
            "format": self.format,
            "entropy": self.entropy,
            "code_channels": self.code_channels,
            "stride": self.stride,
            "grid_bits": self.grid_bits,
            "y_tables": self.y_tables.to_dict(),
            "item_bytes": None,
        }
        if self.nominal_size is not None:
            d["nominal_size"] = list(self.nominal_size)
        if self.has_hyper:
            assert self.z_tables is not None and self.hyper_decoder is not None
            d.update(
                {
                    "hyper_channels": self.hyper_channels,
                    "hyper_stride": self.hyper_stride,
                    "z_grid_bits": self.z_grid_bits,
                    "z_tables": self.z_tables.to_dict(),
                    "hyper_decoder": self.hyper_decoder.to_dict(),
                }
            )
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MapPayload:
        entropy = str(d["entropy"])
        if entropy not in cls.entropy_models:
            raise ValueError(
                f"payload kind {cls.kind!r} takes entropy models {', '.join(cls.entropy_models)}, got {entropy!r}"
            )
        p = cls(
            entropy,
            int(d["code_channels"]),
            int(d["stride"]),
            int(d["grid_bits"]),
            FactorizedPrior.from_dict(d["y_tables"]),
        )
        if not 2 <= p.grid_bits <= 12 or p.y_tables.levels != 1 << p.grid_bits:
            raise ValueError(
                f"map grid of {p.grid_bits} bits does not match tables of {p.y_tables.levels} levels"
            )
        if p.stride < 1 or p.code_channels < 1:
            raise ValueError("map stride and code_channels must be positive")
        if d.get("nominal_size") is not None:
            nh, nw = (int(v) for v in d["nominal_size"])
            if not (1 <= nh <= MAX_SIDE and 1 <= nw <= MAX_SIDE):
                raise ValueError(f"nominal_size {nh}x{nw} outside 1..{MAX_SIDE}")
            p.nominal_size = (nh, nw)
            if p.coder != ans.RANGE_CODER:
                raise ValueError(f"an in-stream size (nominal_size) needs the {ans.RANGE_CODER} coder")
        if entropy == "factorized" and p.y_tables.dims != p.code_channels:
            raise ValueError(f"factorized map has {p.y_tables.dims} tables for {p.code_channels} channels")
        if p.has_hyper:
            p.hyper_channels = int(d["hyper_channels"])
            p.hyper_stride = int(d.get("hyper_stride", 2))
            p.z_grid_bits = int(d["z_grid_bits"])
            p.z_tables = FactorizedPrior.from_dict(d["z_tables"])
            p.hyper_decoder = IntegerHyperDecoder.from_dict(d["hyper_decoder"])
            if p.hyper_stride != 2:
                raise ValueError("the hyper-decoder upsamples by 2: hyper_stride must be 2")
            if p.z_tables.dims != p.hyper_channels or p.z_tables.levels != 1 << p.z_grid_bits:
                raise ValueError("hyperprior z tables do not match hyper_channels and z_grid_bits")
            if p.z_tables.coder != p.coder:
                raise ValueError("z and y tables of one map must name the same entropy coder")
            hd = p.hyper_decoder
            if hd.w1.shape[0] != p.hyper_channels or hd.w2.shape[0] != p.hyper_outputs:
                raise ValueError("hyper-decoder shapes do not match the map's channels")
            if len(hd.thresholds) + 1 != p.y_tables.dims:
                raise ValueError(f"{len(hd.thresholds)} thresholds for {p.y_tables.dims} scale tables")
            if not 1 <= p.z_grid_bits <= 16:
                raise ValueError(f"map z grid of {p.z_grid_bits} bits; must be 1..16")
            p.exactness()  # the bound, checked on load
        if d.get("format") not in (None, p.format):
            raise ValueError(f"payload format says {d.get('format')!r} but its fields make {p.format!r}")
        return p

    # ---- models -------------------------------------------------------------------------------------------
    @property
    def _y(self) -> ans.Tables:
        return self.y_tables.coder_tables

    @property
    def _y_models(self) -> np.ndarray:
        """ŷ's coder models as an object array: one fancy index gives every run's model."""
        if "y" not in self._cache:
            models = np.empty(self.y_tables.dims, object)
            models[:] = self._y.models
            self._cache["y"] = models
        return self._cache["y"]

    @property
    def _z(self) -> ans.Tables:
        assert self.z_tables is not None
        return self.z_tables.coder_tables

    # ---- quantisation -------------------------------------------------------------------------------------
    @staticmethod
    def grid_symbols(v: np.ndarray, bits: int) -> np.ndarray:
        """Float map -> symbols: rounded, clipped to the grid, offset to 0..2^bits - 1 (uint16)."""
        half = 1 << (bits - 1)
        return (np.clip(np.rint(np.asarray(v, np.float32)), -half, half - 1) + half).astype(np.uint16)

    def y_symbols(self, y: np.ndarray) -> np.ndarray:
        return self.grid_symbols(y, self.grid_bits)

    def z_symbols(self, z: np.ndarray) -> np.ndarray:
        return self.grid_symbols(z, self.z_grid_bits)

    def dequantise(self, symbols: np.ndarray) -> np.ndarray:
        return (np.asarray(symbols, np.float32) - np.float32(1 << (self.grid_bits - 1))).astype(np.float32)

    def table_indices(
        self, y_shape: tuple[int, ...], z_sym: np.ndarray | None, workers: Workers | None = None
    ) -> np.ndarray:
        """(N, M, h, w) table index of every ŷ element: its channel, or what the hyper-decoder selects (its
        strips on the workers' threads)."""
        n, m, h, w = y_shape
        if self.entropy == "factorized":
            return np.broadcast_to(np.arange(m, dtype=np.uint16)[None, :, None, None], y_shape)
        assert self.hyper_decoder is not None and z_sym is not None
        half = 1 << (self.z_grid_bits - 1)
        z = np.asarray(z_sym, np.int64) - half
        return self.hyper_decoder.indices(z, (h, w), z_max=half, workers=workers)

    # ---- entropy coding + layout ----------------------------------------------------------------------------
    def _z_rows(self, hz: int, wz: int) -> np.ndarray | None:
        """For small ẑ maps, each ẑ element's table as a row of probabilities (one coder call per item instead
        of one per channel: the same stream, see ans.py); None for larger maps (a call per channel)."""
        if hz * wz > SMALL_Z:
            return None
        key = (hz, wz)
        if key not in self._cache:
            for k in [
                k for k in self._cache if isinstance(k, tuple)
            ]:  # one size at a time is the common case
                del self._cache[k]
            self._cache[key] = np.repeat(self._z.probabilities, hz * wz, axis=0)
        return self._cache[key]

    def _push_z(self, enc: ans.Encoder, z_flat: np.ndarray, hz: int, wz: int) -> None:
        rows = self._z_rows(hz, wz)
        if rows is not None:
            enc.push_rows(z_flat, self._z, rows)
            return
        per = hz * wz
        starts = [c * per for c in range(self.hyper_channels)]
        enc.push_runs(z_flat, starts, [s + per for s in starts], list(self._z.models))

    def _pop_z(self, dec: ans.Decoder, out: np.ndarray, hz: int, wz: int) -> None:
        rows = self._z_rows(hz, wz)
        if rows is not None:
            out[:] = dec.pop_rows(self._z, rows)
            return
        per = hz * wz
        starts = [c * per for c in range(self.hyper_channels)]
        dec.pop_runs(out, starts, [s + per for s in starts], list(self._z.models))

    def _groups(self, n: int, y_shape: tuple[int, ...]) -> list[tuple[int, int]]:
        """Items taken together per pass: at most GROUP_ELEMENTS ŷ elements (one item at least)."""
        per = max(1, int(np.prod(y_shape)))
        step = max(1, GROUP_ELEMENTS // per)
        return [(i, min(n, i + step)) for i in range(0, n, step)]

    def pack(
        self,
        sizes: np.ndarray,
        y_sym: np.ndarray,
        z_sym: np.ndarray | None,
        progress: Progress | None = None,
        workers: Workers | None = None,
        indices: np.ndarray | None = None,
    ) -> list[bytes]:
        """(N, 2) true sizes, (N, M, h, w) ŷ symbols, (N, Nh, hz, wz) ẑ symbols -> N payloads.

        Items go in groups of bounded size: table indices, the sort of each item's ŷ by table and the
        coder's runs are computed for the whole group with numpy, leaving one constriction call per run.
        ``indices``: the table indices when the caller already computed them from ẑ (the same function of ẑ:
        an encoder that needed them to choose its symbols saves the hyper-decoder's second pass).
        """
        n = len(y_sym)
        out = []
        if z_sym is not None:
            hz, wz = z_sym.shape[2:]
            z_flat = np.ascontiguousarray(z_sym, np.int32).reshape(n, -1)
        for i0, i1 in self._groups(n, y_sym.shape[1:]):
            if indices is not None:
                idx = indices[i0:i1]
            else:
                idx = self.table_indices(y_sym[i0:i1].shape, None if z_sym is None else z_sym[i0:i1], workers)
            runs = _TableRuns(idx, self._y_models, presorted=self.entropy == "factorized")
            ordered = runs.sort(y_sym[i0:i1])
            for j in range(i1 - i0):
                i = i0 + j
                head, enc = self.begin(int(sizes[i][0]), int(sizes[i][1]))
                if z_sym is not None:  # ẑ first: the decoder needs it to choose ŷ's tables
                    self._push_z(enc, z_flat[i], hz, wz)
                starts, ends, tables = runs.item(j)
                enc.push_runs(ordered[j], starts, ends, tables)
                out.append(head + enc.finish())
            if progress is not None:
                progress("entropy-code", i1, n)
        return out

    # ---- the size header ----------------------------------------------------------------------------------
    # Earlier bundles: [H varint][W varint] before the stream. Bundles with a nominal size (range-coded,
    # exported since 2026-12-07): the size is the stream's first symbols, a flag that costs 1/45,000 of a bit
    # for the nominal size (the size the model was trained on), else H and W as two 14-bit halves each. Either
    # way it is read before anything else is decoded, so budgets hold for any size and a forged one is refused.
    @property
    def size_in_stream(self) -> bool:
        return self.nominal_size is not None

    def begin(self, h: int, w: int) -> tuple[bytes, ans.Encoder]:
        """An item's stream with its size in it: (bytes before the stream, the encoder to push the code onto)."""
        enc = ans.encoder(self.coder)
        if not self.size_in_stream:
            return put_varint(h) + put_varint(w), enc
        if (h, w) == self.nominal_size:
            enc.push(np.zeros(1, np.int32), _SIZE_MODELS.flag)
        else:
            enc.push(np.ones(1, np.int32), _SIZE_MODELS.flag)
            halves = [h >> _HALF_BITS, h & _HALF_MASK, w >> _HALF_BITS, w & _HALF_MASK]
            enc.push(np.asarray(halves, np.int32), _SIZE_MODELS.half)
        return b"", enc

    def open(self, payload: bytes, start: int) -> ans.Decoder:
        """The decoder of one payload, its size already read (``start``: where ``_headers`` found the stream)."""
        dec = ans.decoder(payload[start:], self.coder)
        if self.size_in_stream:
            self._pop_size(dec)
        return dec

    def _pop_size(self, dec: ans.Decoder) -> tuple[int, int]:
        if int(dec.pop(_SIZE_MODELS.flag, 1)[0]) == 0:
            assert self.nominal_size is not None
            return self.nominal_size
        a, b, c, d = (int(v) for v in dec.pop(_SIZE_MODELS.half, 4))
        return (a << _HALF_BITS) | b, (c << _HALF_BITS) | d

    def sizes(self, payloads: list[bytes]) -> np.ndarray:
        """(N, 2) true item sizes from the headers alone: cheap, checked before any decoding."""
        return self._headers(payloads)[0]

    def _headers(self, payloads: list[bytes]) -> tuple[np.ndarray, list[int]]:
        """(N, 2) sizes and where each payload's entropy-coded stream starts; PayloadError for a header out of
        bounds."""
        out = np.empty((len(payloads), 2), np.int64)
        starts = []
        for i, p in enumerate(payloads):
            pos = 0
            try:
                if self.size_in_stream:
                    head = int.from_bytes(bytes(p[:8]).ljust(8, b"\x00"), "big")
                    if head < _SIZE_MODELS.nominal_below and not p.endswith(b"\x00"):
                        assert self.nominal_size is not None
                        h, w = self.nominal_size  # the flag alone, read without a decoder
                    else:
                        h, w = self._pop_size(ans.decoder(p, self.coder))
                else:
                    h, pos = get_varint(p, 0, HEADER_BITS)
                    w, pos = get_varint(p, pos, HEADER_BITS)
            except VarintError as exc:
                why = (
                    "payload ends inside its size header"
                    if exc.truncated
                    else "payload size header is malformed"
                )
                raise PayloadError(f"item {i}: {why}") from None
            except PayloadError as exc:
                raise PayloadError(f"item {i}: {exc}") from None
            if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE) or h * w > MAX_PIXELS:
                raise PayloadError(
                    f"item {i}: payload claims a {h}x{w} item; sides must be 1..{MAX_SIDE} pixels, "
                    f"at most {MAX_PIXELS:,} in all"
                )
            out[i] = h, w
            starts.append(pos)
        return out, starts

    @staticmethod
    def one_size(sizes: np.ndarray) -> None:
        """PayloadError unless every item of a batch has the same size (one decoder run takes one size)."""
        if len(sizes) and np.any(sizes != sizes[0]):
            a, b = sizes[0], sizes[int(np.argmax(np.any(sizes != sizes[0], axis=1)))]
            raise PayloadError(
                f"items of one batch must share a size; got {a[0]}x{a[1]} and {b[0]}x{b[1]} (send them separately)"
            )

    def unpack(
        self, payloads: list[bytes], progress: Progress | None = None, workers: Workers | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """N payloads of one item size -> (sizes (N, 2), ŷ symbols, ẑ symbols or None). PayloadError names the item."""
        sizes, starts = self._headers(payloads)
        self.one_size(sizes)
        n = len(payloads)
        h, w = (int(v) for v in sizes[0]) if n else (self.stride, self.stride)
        hy, wy = self.code_size(h, w)
        decoders = []
        z_sym = None
        if self.has_hyper:
            hz, wz = self.hyper_size(h, w)
            z_sym = np.empty((n, self.hyper_channels, hz, wz), np.uint16)
        for i, (p, pos) in enumerate(zip(payloads, starts)):
            try:
                dec = self.open(p, pos)
                if z_sym is not None:
                    self._pop_z(dec, z_sym[i].reshape(-1), hz, wz)
            except PayloadError as exc:
                raise PayloadError(f"item {i}: {exc}") from None
            decoders.append(dec)
        y_sym = np.empty((n, self.code_channels, hy, wy), np.uint16)
        for i0, i1 in self._groups(n, y_sym.shape[1:]):
            idx = self.table_indices(y_sym[i0:i1].shape, None if z_sym is None else z_sym[i0:i1], workers)
            runs = _TableRuns(idx, self._y_models, presorted=self.entropy == "factorized")
            ordered = runs.empty()
            for j in range(i1 - i0):
                starts_j, ends_j, tables = runs.item(j)
                try:
                    decoders[i0 + j].pop_runs(ordered[j], starts_j, ends_j, tables)
                    decoders[i0 + j].finish()
                except PayloadError as exc:
                    raise PayloadError(f"item {i0 + j}: {exc}") from None
            runs.unsort(ordered, y_sym[i0:i1])
            if progress is not None:
                progress("entropy-decode", i1, n)
        return sizes, y_sym, z_sym

    def seconds_per_symbol(self) -> float:
        """CPU seconds unpacking takes per code symbol (entropy decoding and table selection), measured once on
        a synthetic 256 x 256 item of this payload on this machine: ẑ of small values, each ŷ element the most
        likely symbol of the table it selects (always codable). At least ENTROPY_SECONDS_PER_SYMBOL / 20, so a
        lucky measurement cannot price work at nothing; the conservative ENTROPY_SECONDS_PER_SYMBOL if the
        measurement fails (a cost estimate never stops a decode)."""
        if "seconds" not in self._cache:
            try:
                self._cache["seconds"] = max(self._measure_unpack(256), ENTROPY_SECONDS_PER_SYMBOL / 20)
            except Exception:
                self._cache["seconds"] = ENTROPY_SECONDS_PER_SYMBOL
        return float(self._cache["seconds"])

    def _measure_unpack(self, side: int) -> float:
        hy, wy = self.code_size(side, side)
        z = None
        if self.has_hyper:
            assert self.z_tables is not None
            hz, wz = self.hyper_size(side, side)
            mode = np.argmax(self.z_tables.coder_tables.probabilities, axis=1).astype(np.uint16)
            z = np.broadcast_to(mode[None, :, None, None], (1, self.hyper_channels, hz, wz)).copy()
            z[..., ::3, ::2] = np.clip(z[..., ::3, ::2].astype(np.int64) + 1, 0, (1 << self.z_grid_bits) - 1)
            z = np.where(
                self.z_tables.coder_tables.probabilities[np.arange(self.hyper_channels)[:, None, None], z[0]]
                > 0,
                z,
                mode[None, :, None, None],
            ).astype(np.uint16)
        idx = self.table_indices((1, self.code_channels, hy, wy), z)
        y = np.argmax(self._y.probabilities, axis=1).astype(np.uint16)[np.asarray(idx, np.int64)]
        payloads = self.pack(np.asarray([[side, side]]), y, z)
        best = float("inf")
        for _ in range(3):
            t0 = time.thread_time()
            self.unpack(payloads)
            best = min(best, time.thread_time() - t0)
        return best / self.symbols_per_item(side, side)

    # ---- ideal code length (for reports) -------------------------------------------------------------------
    def bits(self, y_sym: np.ndarray, z_sym: np.ndarray | None) -> np.ndarray:
        idx = self.table_indices(y_sym.shape, z_sym)
        logp = self.y_tables.log2_probabilities
        total = -logp[idx, y_sym.astype(np.int64)].reshape(len(y_sym), -1).sum(1)
        if z_sym is not None:
            assert self.z_tables is not None
            lz = self.z_tables.log2_probabilities
            ch = np.arange(self.hyper_channels)[None, :, None, None]
            total += -lz[ch, z_sym.astype(np.int64)].reshape(len(z_sym), -1).sum(1)
        return total


class _TableRuns:
    """The format's order of ŷ within each item (by table, ascending; C order within a table) as runs.

    Each item's flat ŷ is cut into equal segments of at most SEGMENT elements (the last one padded with a
    key past the last table); each segment is stably sorted by table (numpy's radix sort for small
    integers) in one call for all segments of the group. An item's run r is table k's elements in segment
    c, listed k-major then c: exactly the format's order, whatever the segment count, so a big item never
    needs an index array of its full size at once.
    """

    def __init__(self, idx: np.ndarray, models: np.ndarray, presorted: bool = False):
        levels = len(models)
        self.n = len(idx)
        self.length = int(np.prod(idx.shape[1:]))
        self.nseg = max(1, -(-self.length // SEGMENT))
        self.seg = -(-self.length // self.nseg) if self.length else 1
        self.levels = levels
        self.presorted = presorted  # keys already ascending in C order (a factorized map: one per channel)
        width = self.nseg * self.seg
        key_type = np.uint8 if levels < 255 else np.uint16
        self.keys = np.full((self.n, width), levels, key_type)  # levels: the padding's key, sorted last
        self.keys[:, : self.length] = idx.reshape(self.n, -1)
        self.keys = self.keys.reshape(self.n * self.nseg, self.seg)
        nrows = self.n * self.nseg
        counts = np.empty((nrows, levels + 1), np.int64)
        step = max(1, SORT_BLOCK // self.seg)
        for r in range(0, nrows, step):  # per block: the flat bin numbers stay a few MB
            block = self.keys[r : r + step]
            bins = np.arange(len(block), dtype=np.int64)[:, None] * (levels + 1) + block
            counts[r : r + step] = np.bincount(bins.ravel(), minlength=len(block) * (levels + 1)).reshape(
                len(block), levels + 1
            )
        counts = counts.reshape(self.n, self.nseg, levels + 1)[:, :, :levels]
        local = np.cumsum(counts, axis=2) - counts  # a run's start within its segment
        start = local + (np.arange(self.nseg, dtype=np.int64) * self.seg)[None, :, None]
        # k-major, then segment: the order of the stream
        counts, start = (
            counts.transpose(0, 2, 1).reshape(self.n, -1),
            start.transpose(0, 2, 1).reshape(self.n, -1),
        )
        table = np.broadcast_to(np.repeat(np.arange(levels), self.nseg)[None, :], counts.shape)
        keep = counts > 0
        self._start = start[keep].tolist()
        self._end = (start + counts)[keep].tolist()
        self._models = models[table[keep]].tolist()  # each run's coder model
        self._bounds = np.concatenate([[0], np.cumsum(keep.sum(axis=1))]).tolist()

    def item(self, j: int) -> tuple[list[int], list[int], list[Any]]:
        """Item j's runs: starts and ends in its ordered flat ŷ, and each run's model (its table's)."""
        a, b = self._bounds[j], self._bounds[j + 1]
        return self._start[a:b], self._end[a:b], self._models[a:b]

    def _spans(self, r0: int, r1: int):
        """Rows r0..r1-1 of the (n * nseg, seg) grid as (first row, item, flat start, flat end): each item's
        consecutive segments are one contiguous span of its flat ŷ (the last one without the padding)."""
        r = r0
        while r < r1:
            i, c = divmod(r, self.nseg)
            c_end = min(self.nseg, c + (r1 - r))
            yield r, i, c * self.seg, min(c_end * self.seg, self.length)
            r += c_end - c

    def _read(self, flat: np.ndarray, r0: int, r1: int) -> np.ndarray:
        """Rows r0..r1-1 of an (n, length) array laid out as segments, padded with zeros (no full copy)."""
        if self.nseg * self.seg == self.length:
            return flat.reshape(-1, self.seg)[r0:r1]
        out: np.ndarray = np.zeros((r1 - r0, self.seg), flat.dtype)
        o = out.reshape(-1)
        for r, i, a, b in self._spans(r0, r1):
            o[(r - r0) * self.seg : (r - r0) * self.seg + b - a] = flat[i, a:b]
        return out

    def _write(self, flat: np.ndarray, r0: int, block: np.ndarray) -> None:
        """Inverse of ``_read``: a block of rows back into the (n, length) array, padding dropped."""
        r1 = r0 + len(block)
        if self.nseg * self.seg == self.length:
            flat.reshape(-1, self.seg)[r0:r1] = block
            return
        o = block.reshape(-1)
        for r, i, a, b in self._spans(r0, r1):
            flat[i, a:b] = o[(r - r0) * self.seg : (r - r0) * self.seg + b - a]

    def _blocks(self):
        step = max(1, SORT_BLOCK // self.seg)
        for r in range(0, self.n * self.nseg, step):
            r1 = min(r + step, self.n * self.nseg)
            yield r, r1, None if self.presorted else np.argsort(self.keys[r:r1], axis=1, kind="stable")

    @property
    def _dtype(self) -> type:
        """int32 (what the coder takes) for groups of items; uint16 for one big item (half the memory; each
        run is converted as it is coded)."""
        return np.int32 if self.n * self.nseg * self.seg <= GROUP_ELEMENTS else np.uint16

    def sort(self, y_sym: np.ndarray) -> np.ndarray:
        """(n, ...) symbols -> (n, nseg * seg) in run order (each item's segments sorted by table)."""
        flat = y_sym.reshape(self.n, -1)
        out: np.ndarray = np.empty((self.n * self.nseg, self.seg), self._dtype)
        for r0, r1, order in self._blocks():
            block = self._read(flat, r0, r1)
            out[r0:r1] = block if order is None else np.take_along_axis(block, order, axis=1)
        return out.reshape(self.n, -1)

    def empty(self) -> np.ndarray:
        return np.zeros((self.n, self.nseg * self.seg), self._dtype)

    def unsort(self, ordered: np.ndarray, y_out: np.ndarray) -> None:
        """Inverse of ``sort``: symbols in run order -> y_out (n, M, h, w) in C order."""
        src = ordered.reshape(self.n * self.nseg, self.seg)
        flat = y_out.reshape(self.n, -1)
        for r0, r1, order in self._blocks():
            if order is None:
                self._write(flat, r0, src[r0:r1])
            else:
                block = np.empty((r1 - r0, self.seg), y_out.dtype)
                np.put_along_axis(block, order, src[r0:r1], axis=1)
                self._write(flat, r0, block)


@register_family("map")
class MapCodec(Codec):
    """Pads to the stride, codes ŷ (and ẑ) maps with the size in each payload, crops on decode."""

    payload_type = MapPayload
    any_size = True
    splits_items = True  # tiles, strips and groups of items on ``workers``
    payload: MapPayload

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._margins: dict[str, int] = {}  # measured receptive fields (tiling.probe_radius), per graph

    @classmethod
    def build(cls, bundle: Bundle, threads: int = 0) -> MapCodec:
        m = bundle.manifest
        side = ["hyper"] if m.payload.has_hyper else []
        transforms = OnnxTransforms.from_graphs(
            bundle.encoder_bytes, bundle.decoder_bytes, side, m.code_shape, threads, str(bundle.path)
        )
        return cls(m.input, m.code_shape, m.payload, transforms, m.bundle_id, m)

    # ---- shapes -----------------------------------------------------------------------------------------
    @property
    def channels(self) -> int:
        return int(self.input.shape[0])

    def output_shapes(self, payloads: Sequence[bytes]) -> np.ndarray:
        sizes = self.payload.sizes(list(payloads))
        return np.concatenate([np.full((len(sizes), 1), self.channels, np.int64), sizes], axis=1)

    def item_costs(self, payloads: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        sizes = self.payload.sizes(list(payloads))
        out = sizes.prod(axis=1) * self.channels * 4
        symbols = np.asarray([self.payload.symbols_per_item(int(h), int(w)) for h, w in sizes], np.int64)
        return out, symbols.reshape(-1)

    def unpack_costs(self, payloads: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Per item, what unpacking holds and takes (before the decoder graph).

        Bytes per code symbol (UNPACK_BYTES_PER_SYMBOL): the symbol (2), its dequantised float32 code (4, held
        until the decoder graph has run), its table index (1) and sort key (1), its place in the table-sorted
        order (4) and the inverse sort's block (2). Seconds: MapPayload.seconds_per_symbol, measured on this
        payload's own tables and hyper-decoder (table selection included)."""
        symbols = self.item_costs(payloads)[1]
        return symbols * UNPACK_BYTES_PER_SYMBOL, symbols * self.payload.seconds_per_symbol()

    def _working_buffers(self, sizes: np.ndarray, strips: int = 1) -> int:
        """Bytes of the unpacking's bounded buffers for a call of these item sizes: the hyper-decoder's strips
        (im2col columns, float64 sums and its first layer's output for at most STRIP_POSITIONS positions of ŷ's
        map each, `strips` of them at once) and the sort's block (int64 positions and a uint16 copy for at most
        SORT_BLOCK elements)."""
        p = self.payload
        positions = int((-(-sizes // p.stride)).prod(axis=1).sum()) if len(sizes) else 0
        strip = 0
        if p.hyper_decoder is not None:
            nh, m = p.hyper_channels, p.code_channels
            strip = min(positions, strips * hyper_decoder.STRIP_POSITIONS) * 8 * (9 * nh + m + 2 * nh)
        return strip + min(positions * p.code_channels, SORT_BLOCK) * 10

    def decode_costs(self, payloads: Sequence[bytes], threads: int = 1) -> DecodeCosts:
        """The base's bill (latent_codec/decode_cost.py), for how this codec decodes on `threads` threads: an item
        larger than a synthesis tile runs through the decoder graph tile by tile, so its graph working bytes are
        those of its largest tile's window (the same for a 12 MP photo as for a 100 MP one) times the tiles run
        at once (one per thread), and its graph seconds cover every tile's window (the overlap included); the
        hyper-decoder's strips and the sort's blocks are bounded per call (``run_bytes``): the largest group's
        once per thread when a call's items are split in groups, a big item's strips once per thread."""
        costs = super().decode_costs(payloads, threads)
        p, s = self.payload, self.payload.stride
        sizes = p.sizes(list(payloads))
        n = len(payloads)
        runs = self.split_runs(n, threads)
        if runs > 1:
            a, b = max(pieces(n, 4 * threads, SPLIT), key=lambda ab: ab[1] - ab[0])
            costs.run_bytes += runs * self._working_buffers(sizes[a:b])
        else:
            big = any(self.tiled_decode(h, w) for h, w in np.unique(sizes, axis=0).tolist()) if n else False
            costs.run_bytes += self._working_buffers(sizes, threads if big else 1)
        g = self.graph_cost
        if g is None or not len(payloads):
            return costs
        extra_runs = 0
        for h, w in np.unique(sizes, axis=0).tolist():
            if not self.tiled_decode(h, w):
                continue
            hy, wy = p.code_size(h, w)
            pixels = [
                (t.r1 - t.r0) * (t.c1 - t.c0) * s * s
                for t in tiles(hy, wy, self.decode_core(), self._decode_margin(), 1)
            ]
            same = np.all(sizes == (h, w), axis=1)
            at_once = max(1, min(threads, len(pixels)))  # tiles on the threads at once, each its own run
            costs.graph_bytes[same] = g.bytes(np.asarray([max(pixels)]))[0] * at_once
            extra_runs = max(extra_runs, at_once - 1)
            costs.seconds[same] += g.seconds(np.asarray([sum(pixels) - h * w]))[0]
        costs.run_bytes += g.run_bytes * extra_runs  # each tile run at once has the graph's per-run constant
        return costs

    def check_items(self, x: np.ndarray) -> None:
        if np.ndim(x) != 4 or int(np.shape(x)[1]) != self.channels:
            got = "x".join(map(str, np.shape(x)[1:]))
            raise DataError(
                f"items are {got} but bundle {self.name} takes {self.channels}-channel items (C x H x W, any H, W)"
            )
        h, w = (int(v) for v in np.shape(x)[2:])
        if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE) or h * w > MAX_PIXELS:
            raise DataError(
                f"items are {h}x{w}; bundle {self.name} takes sides of 1..{MAX_SIDE} pixels, "
                f"at most {MAX_PIXELS:,} in all"
            )
        self.check_dtype(x)

    # ---- encode -------------------------------------------------------------------------------------------
    def pad(self, x_unit: np.ndarray) -> np.ndarray:
        """Replicate the last row and column up to a multiple of the stride (the crop undoes it)."""
        s = self.payload.stride
        h, w = x_unit.shape[-2:]
        ph, pw = (-h) % s, (-w) % s
        if not ph and not pw:
            return x_unit
        return np.pad(x_unit, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge")

    def analyse(self, x_unit: np.ndarray) -> tuple[np.ndarray, Side]:
        """-> (ŷ map (N, M, h, w) float32, {"hyper": ẑ map} with a hyperprior) of padded items."""
        code, side = self.transforms.analysis(self.pad(x_unit))
        return np.asarray(code, np.float32), side

    def quantise(self, codes: np.ndarray) -> np.ndarray:
        return self.payload.y_symbols(codes)

    def encode(self, x_raw: np.ndarray, progress: Progress | None = None) -> list[bytes]:
        """(N, C, H, W) raw items of one size -> N payloads (each carries its H and W).

        Items larger than one analysis tile are analysed tile by tile (``analyse_tiled``): memory bounded by
        the tile, whatever the item's size. ``progress(step, done, total)`` hears of each tile and pass.
        """
        self.check_items(x_raw)
        progress = progress or self.progress
        n, _, h, w = x_raw.shape
        sizes = np.tile(np.asarray([h, w], np.int64), (n, 1))
        if self.tiled_encode(h, w):  # one item at a time: the symbols of one big item are held, not of all
            out: list[bytes] = []
            for i in range(n):
                out += self._encode_tiled_item(x_raw[i : i + 1], sizes[i : i + 1], progress)
            return out
        if self.workers.threads > 1 and n >= 2 * SPLIT:  # groups of items on the threads, payloads in order
            groups = pieces(n, 4 * self.workers.threads, SPLIT)
            done = self.workers.map(lambda ab: self._encode_whole(x_raw[ab[0] : ab[1]], None), groups)
            return [b for group in done for b in group]
        return self._encode_whole(x_raw, progress)

    # Whether ŷ's symbols are a function of ŷ alone: a big item's tiles are then quantised as they are analysed
    # (uint16, half float32's memory); families whose symbols depend on ẑ (mean-and-scale) keep the float map.
    symbols_from_y_alone: ClassVar[bool] = True

    def _encode_tiled_item(
        self, x_one: np.ndarray, size: np.ndarray, progress: Progress | None
    ) -> list[bytes]:
        """One item bigger than an analysis tile -> its payload (tiles and strips on the codec's workers)."""
        y, z = self.analyse_tiled(x_one, progress, quantise=self.symbols_from_y_alone)
        y_sym, idx = self._y_symbols(y, z, self.workers)
        del y  # the float map of a big item is the largest array of the encode: gone before entropy coding
        return self.payload.pack(size, y_sym, z, progress, self.workers, indices=idx)

    def _encode_whole(self, x_raw: np.ndarray, progress: Progress | None) -> list[bytes]:
        """Items of one size, small enough to analyse whole, -> payloads (one thread)."""
        n, _, h, w = x_raw.shape
        sizes = np.tile(np.asarray([h, w], np.int64), (n, 1))
        y, side = self.analyse(self.scale(x_raw))
        return self.encode_maps(y, side.get("hyper"), sizes, progress)

    def encode_maps(
        self, y: np.ndarray, hyper: np.ndarray | None, sizes: np.ndarray, progress: Progress | None = None
    ) -> list[bytes]:
        """Float code maps as the encoder graph outputs them (ŷ (N, M, h, w), and ẑ with a hyperprior) of items
        of true sizes (N, 2) -> payloads: every step after the graph (quantisation, table selection, entropy
        coding, layout). These steps are IEEE arithmetic and exact integers, so the same maps give the same
        bytes on every machine; the graph's floats themselves may differ in the last bit across CPUs."""
        z = self.payload.z_symbols(hyper) if self.payload.has_hyper and hyper is not None else None
        y_sym, idx = self._y_symbols(y, z, None)
        return self.payload.pack(np.asarray(sizes, np.int64).reshape(-1, 2), y_sym, z, progress, indices=idx)

    def _y_symbols(
        self, y: np.ndarray, z: np.ndarray | None, workers: Workers | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """ŷ (float, or already symbols when tiled with symbols_from_y_alone) and ẑ's symbols -> (ŷ's symbols,
        their table indices when the family computed them to choose the symbols, else None: packing codes under
        the given indices instead of running the hyper-decoder again). The families override this only."""
        return (y if y.dtype == np.uint16 else self.quantise(y)), None

    # ---- tiles ----------------------------------------------------------------------------------------------
    def tiled_encode(self, h: int, w: int) -> bool:
        """Whether items of h x w pixels are analysed in tiles (bigger than one tile and its margins)."""
        hy, wy = self.payload.code_size(h, w)
        margin = self._encode_margin()
        return margin >= 0 and max(hy, wy) * self.payload.stride > ENCODE_TILE + 2 * margin

    def tiled_decode(self, h: int, w: int) -> bool:
        """Whether items of h x w pixels are synthesised in tiles."""
        hy, wy = self.payload.code_size(h, w)
        margin = self._decode_margin()
        return margin >= 0 and max(hy, wy) > self.decode_core() + 2 * margin

    def decode_core(self) -> int:
        """Code elements per side of a synthesis tile's core: DECODE_TILE at stride 4, the same pixels at others
        (a stride-16 map's 64 elements would be 1,024 pixels a side, a quarter of a GB of activations per tile)."""
        return max(2, DECODE_TILE * 4 // self.payload.stride)

    def _align(self) -> int:
        """Pixels per element of the coarsest map the encoder outputs (ẑ with a hyperprior)."""
        return self.payload.stride * (self.payload.hyper_stride if self.payload.has_hyper else 1)

    def _encode_margin(self) -> int:
        """Pixels of context around an analysis tile's core: the encoder's measured receptive field, rounded
        up to the coarsest stride, plus one stride to spare. Measured once per codec, from the graph."""
        if "encode" not in self._margins:
            hyper = self.payload.has_hyper

            def run(x: np.ndarray) -> list[np.ndarray]:
                code, side = self.transforms.analysis(x)
                return [code, side["hyper"]] if hyper else [code]

            strides = [self.payload.stride, self._align()] if hyper else [self.payload.stride]
            try:
                side = max(128, 16 * self._align())  # ẑ's map 16 elements wide: room for its receptive field
                r = probe_radius(run, (self.channels, side, side), strides)
            except BundleError:  # opened without its encoder: nothing to tile
                return 0
            self._margins["encode"] = -1 if r is None else round_up(r, self._align()) + self._align()
        return self._margins["encode"]

    def _decode_margin(self) -> int:
        """Code elements of context around a synthesis tile's core (the decoder's measured receptive field + 1)."""
        if "decode" not in self._margins:
            m = self.payload.code_channels
            try:
                r = probe_radius(
                    lambda y: [self.transforms.synthesis(y * 4, {})], (m, 32, 32), [1 / self.payload.stride]
                )
            except BundleError:  # opened without its decoder
                return 0
            self._margins["decode"] = -1 if r is None else r + 1
        return self._margins["decode"]

    def analyse_tiled(
        self, x_raw: np.ndarray, progress: Progress | None = None, quantise: bool = True
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw items -> (ŷ symbols, ẑ symbols or None), the encoder run on tiles of ENCODE_TILE pixels with
        the margin its receptive field needs; each tile's core is quantised into the whole maps. With
        quantise=False the code map is kept as float32 (a family whose symbols depend on ẑ quantises it after)."""
        p = self.payload
        n, _, h, w = x_raw.shape
        margin = self._encode_margin()
        hy, wy = p.code_size(h, w)
        y_sym = np.empty((n, p.code_channels, hy, wy), np.uint16 if quantise else np.float32)
        z_sym = None
        if p.has_hyper:
            hz, wz = p.hyper_size(h, w)
            z_sym = np.empty((n, p.hyper_channels, hz, wz), np.uint16)
        hp, wp = hy * p.stride, wy * p.stride
        ts = tiles(hp, wp, ENCODE_TILE, margin, self._align())
        for i in range(n):
            xp = self.pad(x_raw[i : i + 1])  # raw pixels, edge-replicated: scaling is per pixel

            def tile(
                t: Tile, i: int = i, xp: np.ndarray = xp
            ) -> None:  # writes its own core of the maps: tiles may run on several threads
                code, side = self.transforms.analysis(self.scale(xp[(Ellipsis, *windows(t))]))
                ty = scaled(t, p.stride, hy, wy)
                core = np.asarray(code)[(0, slice(None), *core_of(ty))]
                y_sym[(i, slice(None), *cover(ty))] = p.y_symbols(core) if quantise else core
                if z_sym is not None:
                    tz = scaled(t, self._align(), *z_sym.shape[2:])
                    z_sym[(i, slice(None), *cover(tz))] = p.z_symbols(
                        side["hyper"][(0, slice(None), *core_of(tz))]
                    )

            self.workers.map(tile, ts, progress, "analyse" if n == 1 else f"analyse item {i + 1}/{n}")
        # The encoder's runtime keeps its largest runs' memory (two tiles' on two threads); entropy coding comes
        # next and allocates its own: given back here, an edge's peak is the larger of the two, not their sum.
        # Only for items of many tiles (a camera photo), where the coder's buffers are large: for an item of a
        # few tiles both are small, and warming the arena again cost 15 % of a 768-pixel photo's encode.
        release = getattr(self.transforms, "release_encoder", None)
        if release is not None and len(ts) > RELEASE_AFTER_TILES:
            release()
        return y_sym, z_sym

    def synthesise_tiled(
        self,
        y: np.ndarray,
        size: tuple[int, int],
        progress: Progress | None = None,
        unit: bool = True,
        workers: Workers | None = None,
    ) -> np.ndarray:
        """ŷ (N, M, hy, wy), as symbols (uint16: dequantised per tile) or codes (float) -> items (N, C, h, w)
        in [0, 1] (raw items with unit=False, unscaled per tile): the decoder run on tiles of DECODE_TILE code
        elements with the margin its receptive field needs."""
        y_sym = y
        n, _, hy, wy = y_sym.shape
        h, w = size
        s = self.payload.stride
        raw_dtype = np.uint8 if self.input.dtype == "uint8" else np.float32
        out = np.empty((n, self.channels, h, w), np.float32 if unit else raw_dtype)
        ts = tiles(hy, wy, self.decode_core(), self._decode_margin(), 1)
        for i in range(n):

            def tile(
                t: Tile, i: int = i
            ) -> None:  # writes its own core of the output: tiles may run on several threads
                window = y_sym[(slice(i, i + 1), slice(None), *windows(t))]
                codes = window if window.dtype.kind == "f" else self.dequantise(window)
                rec = np.asarray(self.transforms.synthesis(codes, {}), np.float32)
                rows, cols = core_of(t)
                r0, c0 = t.kr0 * s, t.kc0 * s
                r1, c1 = min(h, t.kr1 * s), min(w, t.kc1 * s)
                local = rec[
                    0, :, rows.start * s : rows.start * s + r1 - r0, cols.start * s : cols.start * s + c1 - c0
                ]
                if unit:
                    np.clip(local, 0.0, 1.0, out=out[i, :, r0:r1, c0:c1])
                else:
                    out[i, :, r0:r1, c0:c1] = self.unscale(local)

            (workers or self.workers).map(
                tile, ts, progress, "synthesise" if n == 1 else f"synthesise item {i + 1}/{n}"
            )
        return out

    # ---- decode -------------------------------------------------------------------------------------------
    def symbols(self, payloads: Sequence[bytes]) -> tuple[np.ndarray, Side]:
        """Payloads of one size -> (ŷ symbols (N, M, h, w), {"size": (N, 2)}). PayloadError on any bad one."""
        sizes, y_sym, _ = self.payload.unpack(list(payloads))
        return y_sym, {"size": sizes}

    def decode(
        self,
        payloads: Sequence[bytes],
        unit: bool = False,
        chunk: int = 0,
        workers: Workers | None = None,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """N payloads of one item size -> N items; items bigger than one synthesis tile are synthesised tile by
        tile (the decoder graph's memory bounded by the tile, ŷ dequantised per tile). ``workers`` (default: the
        codec's) run groups of items, or a big item's strips and tiles, at once: the same result."""
        progress = progress or self.progress
        workers = workers or self.workers
        payloads = list(payloads)
        sizes = self.payload.sizes(payloads)
        h, w = (int(v) for v in sizes[0]) if len(sizes) else (0, 0)
        if len(sizes) and self.tiled_decode(h, w):  # one item at a time: one big item's symbols are held
            self.payload.one_size(sizes)
            out = None
            for i, p in enumerate(payloads):
                codes = self._tiled_item_codes(p, progress, workers)
                item = self.synthesise_tiled(codes, (h, w), progress, unit, workers)
                if out is None:
                    out = np.empty((len(payloads), *item.shape[1:]), item.dtype)
                out[i] = item[0]
            assert out is not None
            return out
        if workers.threads > 1 and len(payloads) >= 2 * SPLIT:
            self.payload.one_size(sizes)
            return self.decode_split(payloads, lambda part: self._decode_whole(part, unit, chunk), workers)
        return self._decode_whole(payloads, unit, chunk, progress)

    def _tiled_item_codes(self, payload: bytes, progress: Progress | None, workers: Workers) -> np.ndarray:
        """One big item's payload -> what synthesise_tiled takes: its symbols (dequantised tile by tile)."""
        return self.payload.unpack([payload], progress, workers)[1]

    def _decode_whole(
        self, payloads: Sequence[bytes], unit: bool, chunk: int, progress: Progress | None = None
    ) -> np.ndarray:
        """Payloads of one size, small enough to synthesise whole, -> items (one thread)."""
        sizes, y_sym, _ = self.payload.unpack(list(payloads), progress)
        x_unit = self.synthesise(self.dequantise(y_sym), {"size": sizes}, chunk)
        return x_unit if unit else self.unscale(x_unit)

    def unscale(self, x_unit: np.ndarray) -> np.ndarray:
        """[0, 1] -> raw items, a block of rows at a time: converting a photo at once would hold two more float
        copies of it (the scaling's temporaries) at the decode's peak."""
        x = np.asarray(x_unit)
        if x.size <= UNSCALE_BLOCK or x.ndim != 4:
            return self.input.from_unit(x)
        first = self.input.from_unit(x[:1, :, :1])
        out = np.empty(x.shape, first.dtype)
        rows = max(1, UNSCALE_BLOCK // max(1, x.shape[1] * x.shape[3]))
        for i in range(len(x)):
            for r in range(0, x.shape[2], rows):
                out[i, :, r : r + rows] = self.input.from_unit(x[i, :, r : r + rows])
        return out

    def dequantise(self, symbols: np.ndarray, side: Side | None = None) -> np.ndarray:
        return self.payload.dequantise(symbols)

    def ideal_bits(self, payloads: Sequence[bytes]) -> np.ndarray:
        """ŷ's and ẑ's ideal code length under the tables (the hyperprior's side information included)."""
        _, y_sym, z_sym = self.payload.unpack(list(payloads))
        return self.payload.bits(y_sym, z_sym)

    def synthesise(self, codes: np.ndarray, side: Side, chunk: int = 0) -> np.ndarray:
        """decoder.onnx on ŷ maps, cropped to the items' true size and clipped to [0, 1]; items bigger than a
        synthesis tile run tile by tile (what a server's decode path calls: its memory bounded per tile)."""
        sizes = np.asarray(side["size"]).reshape(-1, 2)
        if len(sizes) and np.any(sizes != sizes[0]):
            raise DataError("items of one decoder run must share a size")
        n = len(codes)
        h, w = (int(v) for v in sizes[0]) if n else (0, 0)
        if n and self.tiled_decode(h, w):
            return self.synthesise_tiled(codes, (h, w), self.progress)
        out = np.empty((n, self.channels, h, w), np.float32)
        step = chunk if chunk > 0 else max(n, 1)
        for i in range(0, n, step):
            rec = self.transforms.synthesis(codes[i : i + step], {})
            out[i : i + step] = np.clip(np.asarray(rec, np.float32)[:, :, :h, :w], 0.0, 1.0)
        return out

"""Code maps: the payload of spatial bundles, whose code is a feature map and whose items have any size.

One item's payload:

    [ H varint ][ W varint ][ ANS stream: ẑ under per-channel tables, then ŷ under the tables ẑ selects ]

- ŷ (M, ⌈H/4⌉, ⌈W/4⌉): the code map rounded to integers, clipped to the manifest's grid
  [-2^(b-1), 2^(b-1) - 1], sent as symbols 0..2^b - 1.
- "factorized": element (c, u, v) of ŷ uses channel c's table.
- "hyperprior": ẑ (Nh, ⌈h/2⌉, ⌈w/2⌉) travels first under per-channel tables; ``IntegerHyperDecoder``
  maps ẑ to one table index per element of ŷ (a Gaussian scale from a fixed table of 64).

Why the table index cannot diverge between machines: it is computed from the integers ẑ by
``IntegerHyperDecoder`` with integer weights (the trained float weights times 2^F, rounded once at
export and stored in the manifest), int64 accumulation, ReLU and integer thresholds. No floating
point takes part, so the device that encodes and the server that decodes select the same table for
every element whatever their CPU, BLAS, thread count or batch size. The float paths (the ONNX
encoder and decoder) only change *which* integers are sent or how pixels come out, never how a
stream is parsed. All tables are integers in the manifest, as for flat codes (payload.py).

Within an item, ŷ's elements are coded grouped by table (ascending index, positions in C order),
so each group is one constriction call with one model; the decoder knows every index before it
reads ŷ, so it reproduces the grouping.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from .errors import PayloadError
from .payload import CODER_NAME, FactorizedPrior, _import_constriction

MAP_KINDS = ("factorized", "hyperprior")
MAX_SIDE = 1 << 15  # largest height or width a payload may claim (32768)
MAX_PIXELS = 1 << 26  # largest height x width (64 Mpx: 256 MB of float32 per channel when decoded)


# ---- varints: the item's true size ---------------------------------------------------------------------
def put_varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def get_varint(data: bytes, pos: int) -> tuple[int, int]:
    v = shift = 0
    while True:
        if pos >= len(data):
            raise PayloadError("payload ends inside its size header")
        b = data[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        if not b & 0x80:
            return v, pos
        shift += 7
        if shift > 21:
            raise PayloadError("payload size header is malformed")


# ---- integer convolution: exact on every machine ---------------------------------------------------------
def conv2d_int(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """'Same' 3x3 convolution of int64 maps (N, C, H, W) with int64 weights (O, C, k, k): exact integers."""
    k = w.shape[-1]
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    cols = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))  # N, C, H, W, k, k
    out = np.einsum("nchwij,ocij->nohw", cols, w, optimize=False)
    return out + b[None, :, None, None]


@dataclass
class IntegerHyperDecoder:
    """ẑ -> table index per element of ŷ: nearest ×2 upsampling, conv3, ReLU, conv3, thresholds, in int64.

    Layer 1 weights and bias are scaled by 2^F; layer 2 weights by 2^F and its bias by 2^2F, so the
    output is log σ in units of 2^-2F and is compared with thresholds in the same units.
    """

    frac_bits: int
    w1: np.ndarray  # (Nh, Nh, 3, 3) int64
    b1: np.ndarray  # (Nh,)
    w2: np.ndarray  # (M, Nh, 3, 3)
    b2: np.ndarray  # (M,)
    thresholds: np.ndarray  # (levels - 1,) increasing int64

    @classmethod
    def from_float(
        cls, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, thresholds, frac_bits: int = 10
    ) -> IntegerHyperDecoder:
        f = float(1 << frac_bits)

        def r(a: np.ndarray, scale: float) -> np.ndarray:
            return np.rint(np.asarray(a, np.float64) * scale).astype(np.int64)

        return cls(frac_bits, r(w1, f), r(b1, f), r(w2, f), r(b2, f * f), r(np.asarray(thresholds), f * f))

    def log_scale_units(self, z: np.ndarray) -> np.ndarray:
        """The integer pre-threshold output (N, M, 2hz, 2wz), log σ times 2^2F."""
        x = np.asarray(z, np.int64).repeat(2, axis=2).repeat(2, axis=3)
        a1 = np.maximum(conv2d_int(x, self.w1, self.b1), 0)
        return conv2d_int(a1, self.w2, self.b2)

    def indices(self, z: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """(N, Nh, hz, wz) integer ẑ -> (N, M, h, w) table indices 0..levels-1."""
        units = self.log_scale_units(z)[:, :, : size[0], : size[1]]
        return np.searchsorted(self.thresholds, units, side="right").astype(np.int64)

    def to_dict(self) -> dict:
        return {
            "frac_bits": self.frac_bits,
            "w1": {"shape": list(self.w1.shape), "values": self.w1.ravel().tolist()},
            "b1": self.b1.tolist(),
            "w2": {"shape": list(self.w2.shape), "values": self.w2.ravel().tolist()},
            "b2": self.b2.tolist(),
            "thresholds": self.thresholds.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> IntegerHyperDecoder:
        def arr(spec: dict) -> np.ndarray:
            return np.asarray(spec["values"], np.int64).reshape([int(s) for s in spec["shape"]])

        h = cls(
            int(d["frac_bits"]),
            arr(d["w1"]),
            np.asarray(d["b1"], np.int64),
            arr(d["w2"]),
            np.asarray(d["b2"], np.int64),
            np.asarray(d["thresholds"], np.int64),
        )
        nh, m = h.w1.shape[0], h.w2.shape[0]
        if (
            h.w1.shape != (nh, nh, 3, 3)
            or h.w2.shape != (m, nh, 3, 3)
            or h.b1.shape != (nh,)
            or h.b2.shape != (m,)
        ):
            raise ValueError("hyper-decoder weights have inconsistent shapes")
        if np.any(np.diff(h.thresholds) <= 0):
            raise ValueError("hyper-decoder thresholds must increase")
        if not 0 <= h.frac_bits <= 16:
            raise ValueError("hyper-decoder frac_bits must be 0..16")
        return h


class _Tables:
    """Integer frequency tables (K, levels) and their constriction models, built once."""

    def __init__(self, prior: FactorizedPrior):
        self.prior = prior

    @cached_property
    def models(self) -> list[Any]:
        c = _import_constriction()
        probs = self.prior.tables.astype(np.float64) / float(1 << self.prior.precision)
        return [c.stream.model.Categorical(row, perfect=False) for row in probs]

    @property
    def levels(self) -> int:
        return self.prior.levels


@dataclass
class MapPayload:
    """The manifest's payload section for code maps (kind "map"): grid, tables, hyper-decoder."""

    entropy: str  # "factorized" | "hyperprior"
    code_channels: int  # M
    stride: int  # item pixels per code element along each side
    grid_bits: int  # ŷ symbols are 0..2^grid_bits - 1 (ŷ + 2^(grid_bits-1))
    y_tables: FactorizedPrior  # (M, levels) factorized, or (scale levels, levels) hyperprior
    hyper_channels: int = 0
    hyper_stride: int = 2
    z_grid_bits: int = 0
    z_tables: FactorizedPrior | None = None  # (Nh, z levels)
    hyper_decoder: IntegerHyperDecoder | None = None

    # ---- facts --------------------------------------------------------------------------------------------
    @property
    def format(self) -> str:
        return f"map+{self.entropy}"

    @property
    def item_bytes(self) -> None:
        return None  # always variable size

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
        hz, wz = self.hyper_size(h, w) if self.entropy == "hyperprior" else (0, 0)
        return self.code_channels * hy * wy + self.hyper_channels * hz * wz

    # ---- (de)serialisation --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d: dict[str, Any] = {
            "kind": "map",
            "format": self.format,
            "entropy": self.entropy,
            "code_channels": self.code_channels,
            "stride": self.stride,
            "grid_bits": self.grid_bits,
            "y_tables": self.y_tables.to_dict(),
            "item_bytes": None,
        }
        if self.entropy == "hyperprior":
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
        if entropy not in MAP_KINDS:
            raise ValueError(f"map entropy model must be one of {MAP_KINDS}, got {entropy!r}")
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
        if entropy == "factorized" and p.y_tables.dims != p.code_channels:
            raise ValueError(f"factorized map has {p.y_tables.dims} tables for {p.code_channels} channels")
        if entropy == "hyperprior":
            p.hyper_channels = int(d["hyper_channels"])
            p.hyper_stride = int(d.get("hyper_stride", 2))
            p.z_grid_bits = int(d["z_grid_bits"])
            p.z_tables = FactorizedPrior.from_dict(d["z_tables"])
            p.hyper_decoder = IntegerHyperDecoder.from_dict(d["hyper_decoder"])
            if p.hyper_stride != 2:
                raise ValueError("the hyper-decoder upsamples by 2: hyper_stride must be 2")
            if p.z_tables.dims != p.hyper_channels or p.z_tables.levels != 1 << p.z_grid_bits:
                raise ValueError("hyperprior z tables do not match hyper_channels and z_grid_bits")
            hd = p.hyper_decoder
            if hd.w1.shape[0] != p.hyper_channels or hd.w2.shape[0] != p.code_channels:
                raise ValueError("hyper-decoder shapes do not match the map's channels")
            if len(hd.thresholds) + 1 != p.y_tables.dims:
                raise ValueError(f"{len(hd.thresholds)} thresholds for {p.y_tables.dims} scale tables")
        if d.get("format") not in (None, p.format):
            raise ValueError(f"payload format says {d.get('format')!r} but its fields make {p.format!r}")
        return p

    # ---- models -------------------------------------------------------------------------------------------
    @cached_property
    def _y(self) -> _Tables:
        return _Tables(self.y_tables)

    @cached_property
    def _z(self) -> _Tables:
        assert self.z_tables is not None
        return _Tables(self.z_tables)

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

    def dequantize(self, symbols: np.ndarray) -> np.ndarray:
        return (np.asarray(symbols, np.float32) - np.float32(1 << (self.grid_bits - 1))).astype(np.float32)

    def table_indices(self, y_shape: tuple[int, ...], z_sym: np.ndarray | None) -> np.ndarray:
        """(N, M, h, w) table index of every ŷ element: its channel, or what the hyper-decoder selects."""
        n, m, h, w = y_shape
        if self.entropy == "factorized":
            return np.broadcast_to(np.arange(m, dtype=np.int64)[None, :, None, None], y_shape)
        assert self.hyper_decoder is not None and z_sym is not None
        z = np.asarray(z_sym, np.int64) - (1 << (self.z_grid_bits - 1))
        return self.hyper_decoder.indices(z, (h, w))

    # ---- entropy coding + layout ----------------------------------------------------------------------------
    def pack(self, sizes: np.ndarray, y_sym: np.ndarray, z_sym: np.ndarray | None) -> list[bytes]:
        """(N, 2) true sizes, (N, M, h, w) ŷ symbols, (N, Nh, hz, wz) ẑ symbols -> N payloads."""
        c = _import_constriction()
        idx = self.table_indices(y_sym.shape, z_sym)
        out = []
        for i in range(len(y_sym)):
            coder = c.stream.stack.AnsCoder()
            order, groups, bounds = _grouped(idx[i].ravel())
            ys = y_sym[i].ravel().astype(np.int32)[order]
            for g in range(len(groups) - 1, -1, -1):  # a stack: the group decoded first is pushed last
                coder.encode_reverse(ys[bounds[g] : bounds[g + 1]], self._y.models[int(groups[g])])
            if z_sym is not None:
                zi = z_sym[i].reshape(self.hyper_channels, -1).astype(np.int32)
                for ch in range(self.hyper_channels - 1, -1, -1):
                    coder.encode_reverse(zi[ch], self._z.models[ch])
            raw = coder.get_compressed().astype("<u4").tobytes()
            trimmed = raw.rstrip(b"\x00")
            head = put_varint(int(sizes[i][0])) + put_varint(int(sizes[i][1]))
            out.append(head + raw[: max(len(trimmed), len(raw) - 3)])
        return out

    def sizes(self, payloads: list[bytes]) -> np.ndarray:
        """(N, 2) true item sizes from the headers alone: cheap, checked before any decoding."""
        return self._headers(payloads)[0]

    @staticmethod
    def _headers(payloads: list[bytes]) -> tuple[np.ndarray, list[int]]:
        """(N, 2) sizes and where each payload's ANS stream starts; PayloadError for a header out of bounds."""
        out = np.empty((len(payloads), 2), np.int64)
        starts = []
        for i, p in enumerate(payloads):
            try:
                h, pos = get_varint(p, 0)
                w, pos = get_varint(p, pos)
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

    def unpack(self, payloads: list[bytes]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """N payloads of one item size -> (sizes (N, 2), ŷ symbols, ẑ symbols or None). PayloadError names the item."""
        c = _import_constriction()
        sizes, starts = self._headers(payloads)
        if len(payloads) and np.any(sizes != sizes[0]):
            a, b = sizes[0], sizes[int(np.argmax(np.any(sizes != sizes[0], axis=1)))]
            raise PayloadError(
                f"items of one batch must share a size; got {a[0]}x{a[1]} and {b[0]}x{b[1]} (send them separately)"
            )
        n = len(payloads)
        h, w = (int(v) for v in sizes[0]) if n else (self.stride, self.stride)
        hy, wy = self.code_size(h, w)
        coders = []
        z_sym = None
        if self.entropy == "hyperprior":
            hz, wz = self.hyper_size(h, w)
            z_sym = np.empty((n, self.hyper_channels, hz, wz), np.uint16)
        for i, (p, pos) in enumerate(zip(payloads, starts)):
            body = bytes(p[pos:])
            body += b"\x00" * (-len(body) % 4)
            try:
                coder = c.stream.stack.AnsCoder(np.frombuffer(body, dtype="<u4").astype(np.uint32))
                if z_sym is not None:
                    for ch in range(self.hyper_channels):
                        z_sym[i, ch] = coder.decode(self._z.models[ch], hz * wz).reshape(hz, wz)
            except Exception as exc:
                raise PayloadError(f"item {i}: entropy-coded payload is corrupt ({exc})") from None
            coders.append(coder)
        idx = self.table_indices((n, self.code_channels, hy, wy), z_sym)
        y_sym = np.empty((n, self.code_channels, hy, wy), np.uint16)
        for i, coder in enumerate(coders):
            order, groups, bounds = _grouped(idx[i].ravel())
            flat = np.empty(order.shape, np.uint16)
            try:
                for g, k in enumerate(groups):
                    flat[order[bounds[g] : bounds[g + 1]]] = coder.decode(
                        self._y.models[int(k)], int(bounds[g + 1] - bounds[g])
                    )
            except Exception as exc:
                raise PayloadError(f"item {i}: entropy-coded payload is corrupt ({exc})") from None
            if not coder.is_empty():
                raise PayloadError(
                    f"item {i}: entropy-coded payload has trailing data (corrupt or wrong bundle)"
                )
            y_sym[i] = flat.reshape(self.code_channels, hy, wy)
        return sizes, y_sym, z_sym

    # ---- ideal code length (for reports) -------------------------------------------------------------------
    def bits(self, y_sym: np.ndarray, z_sym: np.ndarray | None) -> np.ndarray:
        idx = self.table_indices(y_sym.shape, z_sym)
        logp = np.log2(self.y_tables.tables.astype(np.float64) / float(1 << self.y_tables.precision))
        total = -logp[idx, y_sym.astype(np.int64)].reshape(len(y_sym), -1).sum(1)
        if z_sym is not None:
            assert self.z_tables is not None
            lz = np.log2(self.z_tables.tables.astype(np.float64) / float(1 << self.z_tables.precision))
            ch = np.arange(self.hyper_channels)[None, :, None, None]
            total += -lz[ch, z_sym.astype(np.int64)].reshape(len(z_sym), -1).sum(1)
        return total


def _grouped(ks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Elements grouped by table: (positions in group order, ascending tables, group bounds into positions).

    A stable sort keeps C order within each group: the order the format codes ŷ in.
    """
    order = np.argsort(ks, kind="stable")
    groups, counts = np.unique(ks, return_counts=True)
    return order, groups, np.concatenate([[0], np.cumsum(counts)])


def gaussian_tables(scales: list[float], grid_bits: int, precision: int = 16) -> FactorizedPrior:
    """Integer tables of N(0, σ_k²) over the integer grid, tails folded into the end bins (export only)."""
    from math import erf, sqrt

    half = 1 << (grid_bits - 1)
    k = np.arange(-half, half, dtype=np.float64)
    rows = []
    for s in scales:
        cdf = np.array([0.5 * (1 + erf(v / (s * sqrt(2)))) for v in np.append(k - 0.5, k[-1] + 0.5)])
        cdf[0], cdf[-1] = 0.0, 1.0
        rows.append(np.diff(cdf))
    return FactorizedPrior.from_probabilities(np.asarray(rows), precision)


__all__ = ["CODER_NAME", "IntegerHyperDecoder", "MapPayload", "conv2d_int", "gaussian_tables"]

"""Code maps under a mean-and-scale hyperprior with a checkerboard context (He et al. 2021).

Payload kind ``map-checkerboard``, format ``map+checkerboard``. ŷ's positions are split like a checkerboard:
the *anchors* (u + v even) and the *non-anchors* (u + v odd). One item's payload:

    [ H varint ][ W varint ][ ANS stream: ẑ under per-channel tables,
                              anchors grouped by table, then non-anchors grouped by table ]

Both sections are code_map.py's layout (ascending table index; within a table, C order over (channel,
position of that colour in raster order)). Every element is a residual r = rint(y - μ) on the grid, coded
under the zero-mean Gaussian table its σ selects, as in mean_scale.py; the decoder feeds ŷ = r + μ to
decoder.onnx. Decoding is two passes, each one vectorised over the whole map: the anchors, whose (μ, σ) come
from the integer hyper-decoder alone (mean_scale.py's rule), then the non-anchors, whose (μ, σ) come from
``IntegerContext``: a 5x5 convolution over the decoded anchors (only the 12 taps of the other colour) and
1x1 layers over [hyper-decoder output, context]. Encoding runs the same two passes.

Why it stays deterministic: the context network's input is integers both sides hold exactly, and its
arithmetic is exact integer arithmetic, so every table index and every mean is a function of decoded
integers only:
- each anchor on the 2^-F grid, Q = r·2^F + round(U_μ / 2^F), where r is the decoded residual and U_μ the
  hyper-decoder's exact integer mean units (value x 2^2F); rounding = floor(x + 1/2), an integer shift;
- the hyper-decoder's 2M outputs on the same grid, round(U / 2^F);
- weights round(w·2^F), biases round(b·2^2F), each layer's sums exact (units 2^-2F), ReLU, and the
  result put back on the 2^-F grid by the same integer shift; the last layer's units are μ (x 2^-2F, one
  float32 rounding, as the hyper-decoder's means) and log σ, compared with the scale table's integer
  thresholds.
The sums run as float64 matrix products when a bound proven from the weights (``ContextBound``: Σ|w|·max|in|
+ |b| per layer, max|in| propagated from the residual grid and the hyper-decoder's own bound) stays below
2^53, else in int64; a bound at 2^63 or beyond refuses the bundle, at export and at load. training/models/
spatial.py (``entropy="checkerboard"``) trains exactly these quantities (straight-through rounding), so the
codec differs from training only by the weights' rounding to multiples of 2^-F.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from .. import ans
from ..codec import Progress, Side
from ..errors import PayloadError
from ..parallel import Workers
from ..registry import register_family
from . import hyper_decoder
from .code_map import _TableRuns
from .hyper_decoder import FLOAT_EXACT, INT64_EXACT
from .mean_scale import MeanScaleCodec, MeanScalePayload

KIND = "map-checkerboard"
# Rate-aware rounding (latent_codec/rd_rounding.py): κ of the non-anchors, and the share of it the anchors get.
# An anchor's rounding also moves the context's means and tables for its neighbours, which its own cost does not
# see; measured on training photographs (docs/rd_rounding_train.md, the checkerboard ladder's BD-rate against
# plain rounding): anchors and non-anchors at one κ -3.0 % (κ = 0.03), anchors at a quarter of the non-anchors'
# -4.1 % (0.015 / 0.06), only the non-anchors -3.5 % (0 / 0.06).
ROUNDING = 0.06
ANCHOR_ROUNDING = 0.25
KERNEL = 5  # the context convolution's window
# What unpacking holds per ŷ element beyond the mean-and-scale family's: the hyper-decoder's 2M outputs on the
# grid (2 x int64), the anchor map Q (int64) and the full μ map's float32 (counted by MEAN_BYTES_PER_SYMBOL)
CONTEXT_BYTES_PER_SYMBOL = 24


def anchor_mask(h: int, w: int) -> np.ndarray:
    """(h, w) bool: the anchors, positions (u, v) with u + v even (decoded first)."""
    u, v = np.indices((h, w))
    return (u + v) % 2 == 0


def context_taps(k: int = KERNEL) -> list[tuple[int, int]]:
    """The offsets (di, dj) of a k x k window with di + dj odd: seen from a non-anchor, exactly the anchors."""
    r = k // 2
    return [(di, dj) for di in range(-r, r + 1) for dj in range(-r, r + 1) if (di + dj) % 2 != 0]


def _shift(v: np.ndarray, bits: int) -> np.ndarray:
    """floor((v + 2^(bits-1)) / 2^bits) of exact integer values, in place; float64 (below 2^53: v·2^-bits and
    the + 1/2 are exact) or int64 (an arithmetic shift). Both give the same integers."""
    if bits == 0:
        return v
    if v.dtype.kind == "f":
        v *= 2.0**-bits
        v += 0.5
        return np.floor(v, out=v)
    v += 1 << (bits - 1)
    v >>= bits
    return v


@dataclass(frozen=True)
class ContextBound:
    """The largest magnitude any partial sum of the context convolution and of each 1x1 layer can take."""

    q_max: int  # |Q|: the anchors on the 2^-F grid
    h_max: int  # |round(U / 2^F)|: the hyper-decoder's output on the grid
    layers: tuple[int, ...]  # the context convolution, then each 1x1 layer
    thresholds: int = 0

    @property
    def largest(self) -> int:
        return max(self.q_max, self.h_max, self.thresholds, *self.layers)

    @property
    def dtype(self) -> type:
        return np.float64 if self.largest < FLOAT_EXACT else np.int64


@dataclass
class IntegerContext:
    """Anchors and hyper-decoder output -> the non-anchors' table indices and means; exact integers.

    wc (Cc, M, 5, 5) and each layer's weights (O, I) are round(w·2^F); biases round(b·2^2F). The first
    layer reads [hyper-decoder output (2M), context (Cc)]; the last has 2M outputs: means, then log σ.
    """

    frac_bits: int
    wc: np.ndarray  # (Cc, M, K, K) int64, zero at every tap that is not an anchor's
    bc: np.ndarray  # (Cc,)
    weights: list[np.ndarray]  # (O, I) int64 per 1x1 layer
    biases: list[np.ndarray]  # (O,) per layer
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def from_float(
        cls, wc: np.ndarray, bc: np.ndarray, layers: Sequence[tuple[np.ndarray, np.ndarray]], frac_bits: int
    ) -> IntegerContext:
        f = float(1 << frac_bits)

        def r(a: np.ndarray, scale: float) -> np.ndarray:
            return np.rint(np.asarray(a, np.float64) * scale).astype(np.int64)

        wc_i = r(wc, f)
        wc_i[:, :, ~_tap_mask(wc_i.shape[-1])] = 0
        return cls(
            frac_bits,
            wc_i,
            r(bc, f * f),
            [r(np.asarray(w).reshape(len(w), -1), f) for w, _ in layers],
            [r(b, f * f) for _, b in layers],
        )

    @property
    def code_channels(self) -> int:
        return int(self.wc.shape[1])

    # ---- the exactness bound ------------------------------------------------------------------------------
    def bound(self, residual_max: int, hyper_max: int, thresholds: int = 0) -> ContextBound:
        """Per-stage bounds in Python integers, for residuals |r| <= residual_max and hyper-decoder units
        |U| <= hyper_max (its own proven bound). Each stage's output after the shift is at most
        bound // 2^F + 1 (ReLU outputs are non-negative); any subset of a sum's terms obeys the same bound."""
        f = self.frac_bits
        h_max = (int(hyper_max) >> f) + 1
        q_max = int(residual_max) * (1 << f) + h_max
        wc = np.abs(self.wc).sum(axis=(1, 2, 3), dtype=object)
        ctx = [int(s) * q_max + abs(int(b)) for s, b in zip(wc, self.bc)]
        ins = [h_max] * (2 * self.code_channels) + [(c >> f) + 1 for c in ctx]
        stages = [max(ctx, default=0)]
        for w, b in zip(self.weights, self.biases):
            aw = np.abs(w).astype(object)
            sums = [
                sum(int(aw[o, i]) * ins[i] for i in range(w.shape[1])) + abs(int(b[o])) for o in range(len(w))
            ]
            stages.append(max(sums, default=0))
            ins = [(s >> f) + 1 for s in sums]
        stages[-1] += h_max << f  # the last layer's sums plus the hyper-decoder's output they correct
        return ContextBound(q_max, h_max, tuple(stages), int(thresholds))

    def check(self, residual_max: int, hyper_max: int, thresholds: int = 0) -> ContextBound:
        key = ("bound", int(residual_max), int(hyper_max), int(thresholds))
        if key not in self._cache:
            b = self.bound(residual_max, hyper_max, thresholds)
            if b.largest >= INT64_EXACT:
                raise ValueError(
                    f"checkerboard context weights could make sums of up to {b.largest:.3e} "
                    f"(bits: {b.largest.bit_length()}), beyond int64's exact range (2^63); refusing the bundle"
                )
            self._cache[key] = b
        return self._cache[key]

    # ---- the computation ----------------------------------------------------------------------------------
    def _columns(self, dtype: type) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """The context's weights as im2col columns (12·M, Cc) in (tap, channel) order; layers as (I, O)."""
        key = ("cols", dtype)
        if key not in self._cache:
            r = self.wc.shape[-1] // 2
            cols = np.concatenate(
                [self.wc[:, :, r + di, r + dj].T for di, dj in context_taps(self.wc.shape[-1])]
            )
            self._cache[key] = (
                np.ascontiguousarray(cols).astype(dtype),
                self.bc.astype(dtype),
                [np.ascontiguousarray(w.T).astype(dtype) for w in self.weights],
                [b.astype(dtype) for b in self.biases],
            )
        return self._cache[key]

    def units(self, q: np.ndarray, hyper: np.ndarray, bound: ContextBound) -> np.ndarray:
        """Non-anchor output units (N, 2M, P) as int64 (value x 2^2F), P = the non-anchor positions in raster
        order. q: (N, M, h, w) anchors on the 2^-F grid (zero elsewhere); hyper: (N, 2M, h, w) on that grid.

        Strips of at most STRIP_POSITIONS positions: one gather of the 12 anchor taps per position (im2col),
        one matrix product per layer, in float64 when the bound allows it (exact in any summation order)."""
        n, m, h, w = q.shape
        dtype = bound.dtype
        cols, bc, ws, bs = self._columns(dtype)
        f = self.frac_bits
        k = self.wc.shape[-1] // 2
        pu, pv = np.nonzero(~anchor_mask(h, w))
        p = len(pu)
        out = np.empty((n, 2 * m, p), np.int64)
        if n == 0 or p == 0:
            return out
        qp = np.zeros((n, h + 2 * k, w + 2 * k, m), dtype)  # channel-last, zero outside the map
        qp[:, k:-k, k:-k, :] = np.moveaxis(q, 1, -1)
        taps = context_taps(self.wc.shape[-1])
        per = hyper_decoder.STRIP_POSITIONS
        items = max(1, per // p)
        step = p if items > 1 else per
        with hyper_decoder._one_blas_thread():
            for i0 in range(0, n, items):
                i1 = min(n, i0 + items)
                for s0 in range(0, p, step):
                    su, sv = pu[s0 : s0 + step], pv[s0 : s0 + step]
                    g = np.empty((i1 - i0, len(su), len(taps), m), dtype)
                    for t, (di, dj) in enumerate(taps):
                        g[:, :, t, :] = qp[i0:i1, su + k + di, sv + k + dj, :]
                    ctx = g.reshape(-1, len(taps) * m) @ cols
                    ctx += bc
                    _shift(ctx, f)
                    hv: np.ndarray = (
                        np.moveaxis(hyper[i0:i1][:, :, su, sv], 1, -1).reshape(-1, 2 * m).astype(dtype)
                    )
                    x = np.concatenate([hv, ctx], axis=1)
                    for j, (wt, b) in enumerate(zip(ws, bs)):
                        x = x @ wt
                        x += b
                        if j < len(ws) - 1:
                            np.maximum(x, 0, out=x)
                            _shift(x, f)
                    hv *= 1 << f  # the correction is added to the hyper-decoder's output (units 2^-2F)
                    x += hv
                    out[i0:i1, :, s0 : s0 + step] = np.moveaxis(x.reshape(i1 - i0, len(su), -1), -1, 1)
        return out

    # ---- (de)serialisation --------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        def arr(a: np.ndarray) -> dict:
            return {"shape": list(a.shape), "values": a.ravel().tolist()}

        return {
            "frac_bits": self.frac_bits,
            "wc": arr(self.wc),
            "bc": self.bc.tolist(),
            "layers": [{"w": arr(w), "b": b.tolist()} for w, b in zip(self.weights, self.biases)],
        }

    @classmethod
    def from_dict(cls, d: dict) -> IntegerContext:
        def arr(spec: dict) -> np.ndarray:
            return np.asarray(spec["values"], np.int64).reshape([int(s) for s in spec["shape"]])

        c = cls(
            int(d["frac_bits"]),
            arr(d["wc"]),
            np.asarray(d["bc"], np.int64),
            [arr(layer["w"]) for layer in d["layers"]],
            [np.asarray(layer["b"], np.int64) for layer in d["layers"]],
        )
        cc, m = c.wc.shape[:2]
        if c.wc.ndim != 4 or c.wc.shape[2:] != (KERNEL, KERNEL) or c.bc.shape != (cc,):
            raise ValueError(
                f"checkerboard context weights must be (Cc, M, {KERNEL}, {KERNEL}) with Cc biases"
            )
        if np.any(c.wc[:, :, ~_tap_mask(KERNEL)] != 0):
            raise ValueError("checkerboard context has weights at taps that are not anchors")
        if not c.weights:
            raise ValueError("checkerboard context needs at least one 1x1 layer")
        width = 2 * m + cc
        for w, b in zip(c.weights, c.biases):
            if w.ndim != 2 or w.shape[1] != width or b.shape != (w.shape[0],):
                raise ValueError("checkerboard context layers have inconsistent shapes")
            width = w.shape[0]
        if width != 2 * m:
            raise ValueError(f"checkerboard context's last layer has {width} outputs, not 2M = {2 * m}")
        if not 0 <= c.frac_bits <= 16:
            raise ValueError("checkerboard context frac_bits must be 0..16")
        return c


def _tap_mask(k: int) -> np.ndarray:
    i, j = np.indices((k, k))
    return (i + j) % 2 == 1


@dataclass
class CheckerboardPayload(MeanScalePayload):
    """The mean-and-scale payload section plus the integer context of the non-anchors."""

    kind: ClassVar[str] = KIND
    entropy_models: ClassVar[tuple[str, ...]] = ("checkerboard",)
    context: IntegerContext | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.context is not None and self.hyper_decoder is not None and self.z_grid_bits > 0:
            self.context_bound()

    def context_bound(self) -> ContextBound:
        """The context's proven bound on this payload's grids; ValueError when int64 could overflow."""
        assert self.context is not None and self.hyper_decoder is not None
        hb = self.exactness()
        t = max((abs(int(v)) for v in self.hyper_decoder.thresholds), default=0)
        return self.context.check(1 << (self.grid_bits - 1), hb.layer2, t)

    def to_dict(self) -> dict:
        d = super().to_dict()
        assert self.context is not None
        d["context"] = self.context.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> CheckerboardPayload:
        p = super().from_dict(d)
        assert isinstance(p, CheckerboardPayload) and p.hyper_decoder is not None
        if "context" not in d:
            raise ValueError("a checkerboard payload needs its context")
        p.context = IntegerContext.from_dict(d["context"])
        if p.context.code_channels != p.code_channels:
            raise ValueError("checkerboard context does not match the map's channels")
        if p.context.frac_bits != p.hyper_decoder.frac_bits:
            raise ValueError("checkerboard context and hyper-decoder must share frac_bits")
        p.context_bound()  # the bound, checked on load
        return p

    # ---- the two passes -----------------------------------------------------------------------------------
    def hyper_pass(
        self, y_shape: tuple[int, ...], z_sym: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """ẑ -> (table indices (N, M, h, w), means (float32), the 2M outputs on the 2^-F grid (int64)).
        The anchors' indices and means are these; the non-anchors' are replaced by ``context_pass``."""
        hd = self.hyper_decoder
        assert hd is not None
        half = 1 << (self.z_grid_bits - 1)
        z = np.asarray(z_sym, np.int64) - half
        idx, mu, grid = hd.select_units(
            z, (int(y_shape[2]), int(y_shape[3])), half, self.code_channels, hd.frac_bits
        )
        assert mu is not None and grid is not None
        return idx, mu, grid

    def context_pass(
        self, anchor_sym: np.ndarray, grid: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Anchor residual symbols (N, M, Pa) and the hyper-decoder's grid output -> the non-anchors' (table
        indices (N, M, Pn), means float32 (N, M, Pn)), raster order of each colour."""
        assert self.context is not None and self.hyper_decoder is not None
        n, m = grid.shape[0], self.code_channels
        f = self.context.frac_bits
        q = np.zeros((n, m, *mask.shape), np.int64)
        r = np.asarray(anchor_sym, np.int64) - (1 << (self.grid_bits - 1))
        q[:, :, mask] = (r << f) + grid[:, :m][:, :, mask]
        units = self.context.units(q, grid, self.context_bound())
        if "thresholds" not in self._cache:
            self._cache["thresholds"] = hyper_decoder._Thresholds(self.hyper_decoder.thresholds, np.int64)
        levels = len(self.hyper_decoder.thresholds)
        idx = self._cache["thresholds"](units[:, m:]).astype(np.uint8 if levels < 256 else np.uint16)
        mu = (units[:, :m].astype(np.float64) * 2.0 ** (-2 * f)).astype(np.float32)
        return idx, mu

    def encode_symbols(self, y: np.ndarray, z_sym: np.ndarray, kappa: float = 0.0) -> np.ndarray:
        """Float code map and ẑ symbols -> residual symbols (N, M, h, w): the anchors around the hyper-decoder's
        means, then the non-anchors around the means their decoded anchors give (rounded as
        ``residual_symbols`` with ``kappa``)."""
        return self.encode_indexed(y, z_sym, kappa)[0]

    def encode_indexed(
        self, y: np.ndarray, z_sym: np.ndarray, kappa: float = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """``encode_symbols`` and every element's table index (what ``pack_indexed`` takes: the two passes
        run once per encode). The anchors are rounded first (at κ·ANCHOR_ROUNDING), so the non-anchors' tables
        and means are those of the anchors actually sent."""
        y = np.asarray(y, np.float32)
        idx, mu, grid = self.hyper_pass(y.shape, z_sym)
        mask = anchor_mask(*y.shape[2:])
        out = np.empty(y.shape, np.uint16)
        k_anchor = kappa * ANCHOR_ROUNDING
        out[:, :, mask] = self.residual_symbols(y[:, :, mask], mu[:, :, mask], idx[:, :, mask], k_anchor)
        idx_n, mu_n = self.context_pass(out[:, :, mask], grid, mask)
        out[:, :, ~mask] = self.residual_symbols(y[:, :, ~mask], mu_n, idx_n, kappa)
        idx[:, :, ~mask] = idx_n
        return out, idx

    def select_all(self, y_sym: np.ndarray, z_sym: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Decoded residual symbols and ẑ -> every element's (table index, mean) (N, M, h, w)."""
        idx, mu, grid = self.hyper_pass(y_sym.shape, z_sym)
        mask = anchor_mask(*y_sym.shape[2:])
        idx_n, mu_n = self.context_pass(y_sym[:, :, mask], grid, mask)
        idx[:, :, ~mask] = idx_n
        mu[:, :, ~mask] = mu_n
        return idx, mu

    def means_of(self, y_sym: np.ndarray, z_sym: np.ndarray) -> np.ndarray:
        return self.select_all(y_sym, z_sym)[1]

    def table_indices(
        self, y_shape: tuple[int, ...], z_sym: np.ndarray | None, workers: Workers | None = None
    ) -> np.ndarray:
        raise PayloadError("checkerboard tables depend on the decoded anchors: use select_all(y_sym, z_sym)")

    def means(
        self, y_shape: tuple[int, ...], z_sym: np.ndarray, workers: Workers | None = None
    ) -> np.ndarray:
        raise PayloadError("checkerboard means depend on the decoded anchors: use means_of(y_sym, z_sym)")

    # ---- entropy coding + layout ----------------------------------------------------------------------------
    def pack(
        self,
        sizes: np.ndarray,
        y_sym: np.ndarray,
        z_sym: np.ndarray | None,
        progress: Progress | None = None,
        workers: Workers | None = None,
        indices: np.ndarray | None = None,
    ) -> list[bytes]:
        """(N, 2) sizes, (N, M, h, w) residual symbols, ẑ symbols -> N payloads: ẑ, anchors, non-anchors.
        The two passes run on one thread (``workers`` is accepted for the base's signature); ``indices`` as
        ``pack_indexed``'s."""
        if z_sym is None:
            raise PayloadError("a checkerboard payload needs its ẑ")
        return self.pack_indexed(sizes, y_sym, z_sym, indices, progress)

    def pack_indexed(
        self,
        sizes: np.ndarray,
        y_sym: np.ndarray,
        z_sym: np.ndarray,
        idx: np.ndarray | None,
        progress: Progress | None = None,
    ) -> list[bytes]:
        """``pack`` with every element's table index given (from ``encode_indexed``) or, with None, computed
        from the symbols (both passes, per group of items)."""
        n = len(y_sym)
        mask = anchor_mask(*y_sym.shape[2:])
        hz, wz = z_sym.shape[2:]
        z_flat = np.ascontiguousarray(z_sym, np.int32).reshape(n, -1)
        out = []
        for i0, i1 in self._groups(n, y_sym.shape[1:]):
            ys = y_sym[i0:i1]
            ix = self.select_all(ys, z_sym[i0:i1])[0] if idx is None else idx[i0:i1]
            runs_a = _TableRuns(ix[:, :, mask], self._y_models)
            runs_n = _TableRuns(ix[:, :, ~mask], self._y_models)
            ordered_a, ordered_n = runs_a.sort(ys[:, :, mask]), runs_n.sort(ys[:, :, ~mask])
            for j in range(i1 - i0):
                i = i0 + j
                head, enc = self.begin(int(sizes[i][0]), int(sizes[i][1]))
                self._push_z(enc, z_flat[i], hz, wz)
                enc.push_runs(ordered_a[j], *runs_a.item(j))
                enc.push_runs(ordered_n[j], *runs_n.item(j))
                out.append(head + enc.finish())
            if progress is not None:
                progress("entropy-code", i1, n)
        return out

    def unpack_means(
        self, payloads: list[bytes], progress: Progress | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """N payloads of one size -> (sizes, residual symbols, ẑ symbols, μ (N, M, h, w) float32)."""
        sizes, starts = self._headers(payloads)
        self.one_size(sizes)
        n = len(payloads)
        h, w = (int(v) for v in sizes[0]) if n else (self.stride, self.stride)
        hy, wy = self.code_size(h, w)
        hz, wz = self.hyper_size(h, w)
        z_sym = np.empty((n, self.hyper_channels, hz, wz), np.uint16)
        decoders = []
        for i, (p, pos) in enumerate(zip(payloads, starts)):
            try:
                dec = self.open(p, pos)
                self._pop_z(dec, z_sym[i].reshape(-1), hz, wz)
            except PayloadError as exc:
                raise PayloadError(f"item {i}: {exc}") from None
            decoders.append(dec)
        mask = anchor_mask(hy, wy)
        y_sym = np.empty((n, self.code_channels, hy, wy), np.uint16)
        mu = np.empty((n, self.code_channels, hy, wy), np.float32)
        for i0, i1 in self._groups(n, y_sym.shape[1:]):
            idx, mu_g, grid = self.hyper_pass((i1 - i0, self.code_channels, hy, wy), z_sym[i0:i1])
            runs_a = _TableRuns(idx[:, :, mask], self._y_models)
            ordered = runs_a.empty()
            self._pop(decoders, i0, runs_a, ordered, last=False)
            anchors = np.empty((i1 - i0, self.code_channels, int(mask.sum())), np.uint16)
            runs_a.unsort(ordered, anchors)
            idx_n, mu_n = self.context_pass(anchors, grid, mask)  # the second pass: from decoded anchors
            runs_n = _TableRuns(idx_n, self._y_models)
            ordered = runs_n.empty()
            self._pop(decoders, i0, runs_n, ordered, last=True)
            others = np.empty(idx_n.shape, np.uint16)
            runs_n.unsort(ordered, others)
            y_sym[i0:i1][:, :, mask] = anchors
            y_sym[i0:i1][:, :, ~mask] = others
            mu_g[:, :, ~mask] = mu_n
            mu[i0:i1] = mu_g
            if progress is not None:
                progress("entropy-decode", i1, n)
        return sizes, y_sym, z_sym, mu

    @staticmethod
    def _pop(decoders: list[ans.Decoder], i0: int, runs: _TableRuns, ordered: np.ndarray, last: bool) -> None:
        for j in range(runs.n):
            try:
                decoders[i0 + j].pop_runs(ordered[j], *runs.item(j))
                if last:
                    decoders[i0 + j].finish()
            except PayloadError as exc:
                raise PayloadError(f"item {i0 + j}: {exc}") from None

    def unpack(
        self, payloads: list[bytes], progress: Progress | None = None, workers: Workers | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        sizes, y_sym, z_sym, _ = self.unpack_means(payloads, progress)
        return sizes, y_sym, z_sym

    def _measure_unpack(self, side: int) -> float:
        """Unpacking's seconds per symbol on a synthetic item: ẑ at its tables' modes, every residual zero
        (the mode of every zero-mean table, so always codable), both passes and the context included."""
        assert self.z_tables is not None
        hy, wy = self.code_size(side, side)
        hz, wz = self.hyper_size(side, side)
        mode = np.argmax(self.z_tables.coder_tables.probabilities, axis=1).astype(np.uint16)
        z = np.broadcast_to(mode[None, :, None, None], (1, self.hyper_channels, hz, wz)).copy()
        y = np.full((1, self.code_channels, hy, wy), 1 << (self.grid_bits - 1), np.uint16)
        payloads = self.pack(np.asarray([[side, side]]), y, z)
        best = float("inf")
        for _ in range(3):
            t0 = time.thread_time()
            self.unpack(payloads)
            best = min(best, time.thread_time() - t0)
        return best / self.symbols_per_item(side, side)

    def bits(self, y_sym: np.ndarray, z_sym: np.ndarray | None) -> np.ndarray:
        assert z_sym is not None and self.z_tables is not None
        idx, _ = self.select_all(y_sym, z_sym)
        logp = self.y_tables.log2_probabilities
        total = -logp[idx, y_sym.astype(np.int64)].reshape(len(y_sym), -1).sum(1)
        lz = self.z_tables.log2_probabilities
        ch = np.arange(self.hyper_channels)[None, :, None, None]
        return total - lz[ch, z_sym.astype(np.int64)].reshape(len(z_sym), -1).sum(1)


@register_family(KIND)
class CheckerboardCodec(MeanScaleCodec):
    """A mean-and-scale codec whose non-anchors' tables and means also depend on the decoded anchors."""

    payload_type = CheckerboardPayload
    payload: CheckerboardPayload
    rounding: float = ROUNDING  # the non-anchors' κ; the anchors get ANCHOR_ROUNDING of it

    def _y_symbols(
        self, y: np.ndarray, z: np.ndarray | None, workers: Workers | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Anchors, then non-anchors (the two passes once, on one thread): the symbols and their tables."""
        assert z is not None
        return self.payload.encode_indexed(y, z, self.rounding)

    def symbols(self, payloads: Sequence[bytes]) -> tuple[np.ndarray, Side]:
        """Payloads of one size -> (residual symbols, {"size": (N, 2), "mean": μ (N, M, h, w)})."""
        sizes, y_sym, _, mu = self.payload.unpack_means(list(payloads))
        return y_sym, {"size": sizes, "mean": mu}

    def _tiled_item_codes(self, payload: bytes, progress: Progress | None, workers: Workers) -> np.ndarray:
        """One big item's payload -> its codes ŷ = r + μ (both passes and the context on one thread)."""
        _, y_sym, _, mu = self.payload.unpack_means([payload], progress)
        return self.payload.dequantise_with(y_sym, mu)

    def unpack_costs(self, payloads: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Mean-and-scale's unpacking (its seconds measured on this payload: both passes and the context),
        plus the context's per-element arrays (CONTEXT_BYTES_PER_SYMBOL)."""
        nbytes, seconds = super().unpack_costs(payloads)
        sizes = self.payload.sizes(list(payloads))
        y_symbols = (-(-sizes // self.payload.stride)).prod(axis=1) * self.payload.code_channels
        return nbytes + y_symbols * CONTEXT_BYTES_PER_SYMBOL, seconds

    def _working_buffers(self, sizes: np.ndarray, strips: int = 1) -> int:
        """Mean-and-scale's bounded buffers, plus one context strip: the gathered anchor taps and each
        layer's activations for at most STRIP_POSITIONS positions (8 bytes a value)."""
        base = super()._working_buffers(sizes, strips)
        c = self.payload.context
        assert c is not None
        m = self.payload.code_channels
        positions = int((-(-sizes // self.payload.stride)).prod(axis=1).sum()) if len(sizes) else 0
        widths = (
            len(context_taps(c.wc.shape[-1])) * m
            + 2 * m
            + int(c.wc.shape[0])
            + sum(len(w) for w in c.weights)
        )
        return base + min(positions, hyper_decoder.STRIP_POSITIONS) * 8 * widths

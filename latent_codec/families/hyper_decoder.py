"""The integer hyper-decoder of code maps: ẑ -> one table index per element of ŷ, identical on every machine.

The table index cannot diverge between the device that encodes and the server that decodes because it is a
function of the integers ẑ alone: integer weights (the trained float weights times 2^F, rounded once at
export and stored in the manifest), exact integer sums, ReLU and integer thresholds.

How the sums are computed is free as long as they are exact. The fast path runs each 3x3 convolution as one
float64 matrix product (im2col, BLAS) on integer-valued operands. That is exact whatever BLAS, CPU, thread
count or summation order, because of a bound proven from the weights alone (``ExactnessBound``): every
product and every partial sum of any subset of a convolution's terms is an integer of magnitude at most
Σ|w|·max|input| + |b| < 2^53, and float64 adds and multiplies integers below 2^53 without rounding. The bound
is checked when a payload is built (at export) and when a manifest is loaded: weights whose bound reaches 2^53
fall back to int64 products (exact, slower); weights whose bound reaches 2^63 are refused (int64 could wrap).

Maps are processed in strips of rows (and groups of items) of bounded size, so a 12-megapixel item never
holds more than a few MB of im2col columns; a strip reads the ẑ rows its receptive field needs. The products
run on one BLAS thread (threadpoolctl, scoped to the call): a server decodes on several threads at once, and
BLAS's own threads on top of them spin and double the CPU per item (docs/speed.md); the result is the same
either way. Strips are independent, so a caller with several threads (latent_codec/parallel.py) runs them at
once, each writing its own rows of the indices; numpy releases Python's lock in the products and copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..parallel import Workers

FLOAT32_EXACT = 1 << 24  # float32 represents every integer below 2^24 exactly
FLOAT_EXACT = 1 << 53  # float64 likewise below 2^53: sums that stay below it are exact in any order
INT64_EXACT = 1 << 63
STRIP_POSITIONS = 1 << 11  # output positions per matrix product: im2col columns of about a MB, which stay in
# cache (measured against 2^13 in one run: the photo hyper-decoder 23 % faster, 28x28 table selection 36 %)


_BLAS: list = []  # the process's threadpoolctl controller, made on first use


def _one_blas_thread():
    """A context in which numpy's BLAS runs on one thread (3 µs to enter; the controller is built once)."""
    if not _BLAS:
        from threadpoolctl import ThreadpoolController

        _BLAS.append(ThreadpoolController())
    return _BLAS[0].limit(limits=1, user_api="blas")


def exact_dtype(bound: int) -> type:
    """The cheapest dtype whose matrix products are exact for integer sums bounded by ``bound``."""
    if bound < FLOAT32_EXACT:
        return np.float32
    return np.float64 if bound < FLOAT_EXACT else np.int64


@dataclass(frozen=True)
class ExactnessBound:
    """The largest magnitude any partial sum of layer 1 and of layer 2 can take for ẑ in [-z_max, z_max]."""

    z_max: int
    layer1: int
    layer2: int
    thresholds: int = 0  # the largest |threshold| layer 2's output is compared with (in its dtype)

    @property
    def largest(self) -> int:
        return max(self.layer1, self.layer2, self.thresholds)

    @property
    def dtypes(self) -> tuple[type, type]:
        """Each layer's arithmetic: float32 (BLAS, exact below 2^24), float64 (below 2^53) or int64."""
        return exact_dtype(self.layer1), exact_dtype(max(self.layer2, self.thresholds))

    @property
    def path(self) -> str:
        """'float' when both layers run through BLAS, 'int64' when a layer needs numpy's integer products."""
        return "int64" if np.int64 in self.dtypes else "float"


def _im2col(x: np.ndarray, ho: int, wo: int) -> np.ndarray:
    """3x3 windows of channel-last maps (N, H, W, C) at the top-left ho x wo positions -> (N*ho*wo, 9*C).

    Nine strided copies of contiguous channel vectors (far faster than copying a sliding-window view whose
    innermost axes are the window's); column order (i, j, c) matches ``_columns``.
    """
    n, c = x.shape[0], x.shape[3]
    cols = np.empty((n, ho, wo, 3, 3, c), x.dtype)
    for i in range(3):
        for j in range(3):
            cols[:, :, :, i, j, :] = x[:, i : i + ho, j : j + wo, :]
    return cols.reshape(n * ho * wo, 9 * c)


def _columns(w: np.ndarray) -> np.ndarray:
    """Weights (O, C, 3, 3) -> im2col columns (9*C, O) in (i, j, c) row order."""
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)).reshape(-1, w.shape[0]))


def _phase_columns(w: np.ndarray) -> list[np.ndarray]:
    """Layer 1 on the *low-resolution* ẑ: conv3 after nearest ×2 upsampling, as one 2x2 kernel per output
    phase (a, b) on ẑ -> four column blocks (4*C, O), rows in (i, j, c) order over the 2x2 window.

    Output row 2i+a reads upsampled rows 2i+a-1..2i+a+1, i.e. ẑ rows i-1, i, i (a = 0) or i, i, i+1 (a = 1):
    the kernel's rows fold onto two ẑ rows (window rows a, a+1 of the 3x3 around i), and likewise columns.
    The folded weights are sums of |w| at most, so the exactness bound of the unfolded layer covers them.
    """
    fold = [np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]]), np.array([[0, 0, 0], [1, 1, 0], [0, 0, 1]])]
    out = []
    for a in range(2):
        for b in range(2):
            # k[o, c, r, s] = Σ_{i, j} fold[a][r, i] fold[b][s, j] w[o, c, i, j]; nonzero for r in a..a+1, s in b..b+1
            k = np.einsum("ri,sj,ocij->ocrs", fold[a], fold[b], w)[:, :, a : a + 2, b : b + 2]
            out.append(np.ascontiguousarray(np.transpose(k, (2, 3, 1, 0)).reshape(-1, w.shape[0])))
    return out


def _im2col2(x: np.ndarray, r: int, c: int, ho: int, wo: int) -> np.ndarray:
    """2x2 windows of channel-last maps (N, H, W, C) starting at (r, c), ho x wo positions -> (N*ho*wo, 4*C)."""
    n, ch = x.shape[0], x.shape[3]
    cols = np.empty((n, ho, wo, 2, 2, ch), x.dtype)
    for i in range(2):
        for j in range(2):
            cols[:, :, :, i, j, :] = x[:, r + i : r + i + ho, c + j : c + j + wo, :]
    return cols.reshape(n * ho * wo, 4 * ch)


@dataclass(frozen=True)
class _Plan:
    """One pass of the hyper-decoder: padded channel-last ẑ, output size, layer-2 dtype, weights, strips."""

    zp: np.ndarray
    size: tuple[int, int]
    d2: Any
    w1: Any  # layer 1 as four phase column blocks (list of arrays)
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    thresholds: Any  # _Thresholds
    specs: list[tuple[int, int, int, int]]  # (i0, i1, r0, r1): items i0..i1-1, ẑ rows r0..r1-1


class _Thresholds:
    """Table index = how many thresholds are <= u, for exact integer-valued u (float or int64 arrays).

    Thresholds of a scale table are close to evenly spaced, so a guess from a uniform grid is within one of
    the index; one comparison each way fixes it. The guess's error is checked at every threshold (and one
    below) when built; both the guess and the true index are monotone in u, so the check covers every u.
    Thresholds too uneven for that use searchsorted.
    """

    def __init__(self, t: np.ndarray, dtype: type):
        self.t = np.asarray(t, np.int64)
        n = len(self.t)
        self.fast = False
        if n >= 2 and self.t[-1] > self.t[0]:
            self.t0, self.inv = float(self.t[0]), (n - 1) / (float(self.t[-1]) - float(self.t[0]))
            pts = np.concatenate([self.t, self.t - 1])
            true = np.searchsorted(self.t, pts, side="right")
            self.fast = bool(np.abs(self._guess(pts) - true).max() <= 1)
        if np.dtype(dtype).kind == "f":
            self.ext: np.ndarray = np.concatenate([[-np.inf], self.t.astype(dtype), [np.inf]]).astype(dtype)
        else:
            lim = np.iinfo(np.int64)
            self.ext = np.concatenate([[lim.min], self.t, [lim.max]]).astype(np.int64)
        self.sorted = self.ext[1:-1]

    def _guess(self, u: np.ndarray) -> np.ndarray:
        g = np.floor((np.asarray(u, np.float64) - self.t0) * self.inv)
        g += 1
        np.clip(g, 0, len(self.t), out=g)
        return g.astype(np.intp)

    def __call__(self, u: np.ndarray) -> np.ndarray:
        if not self.fast:
            return np.searchsorted(self.sorted, u, side="right")
        k = self._guess(u)
        k -= u < self.ext[k]  # guessed one too high: u is below the bucket's lower threshold
        k += u >= self.ext[k + 1]  # one too low: u reaches the bucket's upper threshold
        return k


@dataclass
class IntegerHyperDecoder:
    """ẑ -> table index per element of ŷ: nearest ×2 upsampling, conv3, ReLU, conv3, thresholds; exact integers.

    Layer 1 weights and bias are scaled by 2^F; layer 2 weights by 2^F and its bias by 2^2F, so the
    output is log σ in units of 2^-2F and is compared with thresholds in the same units.
    """

    frac_bits: int
    w1: np.ndarray  # (Nh, Nh, 3, 3) int64
    b1: np.ndarray  # (Nh,)
    w2: np.ndarray  # (M, Nh, 3, 3)
    b2: np.ndarray  # (M,)
    thresholds: np.ndarray  # (levels - 1,) increasing int64
    _cols: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # derived, cached

    def __setattr__(self, name: str, value: object) -> None:
        """Assigning weights or thresholds drops what was derived from them (bounds, columns, lookups).
        The arrays themselves are treated as immutable: assign new ones rather than editing in place."""
        object.__setattr__(self, name, value)
        if name != "_cols" and "_cols" in self.__dict__:
            self.__dict__["_cols"].clear()

    @classmethod
    def from_float(
        cls, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray, thresholds, frac_bits: int = 10
    ) -> IntegerHyperDecoder:
        f = float(1 << frac_bits)

        def r(a: np.ndarray, scale: float) -> np.ndarray:
            return np.rint(np.asarray(a, np.float64) * scale).astype(np.int64)

        return cls(frac_bits, r(w1, f), r(b1, f), r(w2, f), r(b2, f * f), r(np.asarray(thresholds), f * f))

    # ---- the exactness bound ------------------------------------------------------------------------------
    def bound(self, z_max: int) -> ExactnessBound:
        """Per-layer bound on any partial sum for |ẑ| <= z_max, in Python integers (they cannot overflow).

        Layer 1: Σ|w1[o]|·z_max + |b1[o]|; its ReLU output in channel c is at most that channel's bound B1[c].
        Layer 2: Σ_c Σ|w2[o, c]|·B1[c] + |b2[o]|. Any subset of a sum's terms is bounded by the same figure.
        """
        w1 = [int(v) for v in np.abs(self.w1).sum(axis=(1, 2, 3), dtype=object)]
        b1 = [abs(int(v)) for v in self.b1]
        layer1 = [s * int(z_max) + b for s, b in zip(w1, b1)]
        w2 = np.abs(self.w2).sum(axis=(2, 3), dtype=object)  # (M, Nh) Python ints
        layer2 = [
            sum(int(w2[o, c]) * layer1[c] for c in range(w2.shape[1])) + abs(int(self.b2[o]))
            for o in range(w2.shape[0])
        ]
        t = max((abs(int(v)) for v in self.thresholds), default=0)
        return ExactnessBound(int(z_max), max(layer1, default=0), max(layer2, default=0), t)

    def check(self, z_max: int) -> ExactnessBound:
        """The bound for ẑ on its grid; ValueError when even int64 could overflow (the manifest is refused)."""
        key = ("bound", int(z_max))
        if key in self._cols:
            return self._cols[key]
        b = self.bound(z_max)
        if b.largest >= INT64_EXACT:
            raise ValueError(
                f"hyper-decoder weights could make sums of up to {b.largest:.3e} for ẑ within ±{z_max} "
                f"(bits: {b.largest.bit_length()}), beyond int64's exact range (2^63); refusing the bundle"
            )
        self._cols[key] = b
        return b

    # ---- table selection ----------------------------------------------------------------------------------
    def _weights(self, d1: type, d2: type) -> tuple[np.ndarray, ...]:
        """Weights as im2col columns (9*C, O), biases and thresholds in each layer's dtype (cached)."""
        key = (d1, d2)
        if key not in self._cols:
            phases: list[np.ndarray] = [c.astype(d1) for c in _phase_columns(self.w1)]
            self._cols[key] = (
                phases,
                self.b1.astype(d1),
                _columns(self.w2).astype(d2),
                self.b2.astype(d2),
                _Thresholds(self.thresholds, d2),
            )
        return self._cols[key]

    def log_scale_units(self, z: np.ndarray, z_max: int | None = None) -> np.ndarray:
        """The integer pre-threshold output (N, M, 2hz, 2wz) as int64, log σ times 2^2F (small maps: tests)."""
        z = np.asarray(z, np.int64)
        out = np.empty((len(z), self.w2.shape[0], 2 * z.shape[2], 2 * z.shape[3]), np.int64)
        for sl, units, _ in self._strips(z, z_max, out.shape[2:]):
            out[sl] = units
        return out

    def indices(
        self,
        z: np.ndarray,
        size: tuple[int, int],
        z_max: int | None = None,
        workers: Workers | None = None,
    ) -> np.ndarray:
        """(N, Nh, hz, wz) integer ẑ -> (N, M, h, w) table indices 0..levels-1 (uint8, or uint16 past 256).

        z_max bounds |ẑ| (the payload's grid); without it, the largest |ẑ| given is used (its bound is
        checked all the same).
        """
        return self.select(z, size, z_max, workers=workers)[0]

    def select(
        self,
        z: np.ndarray,
        size: tuple[int, int],
        z_max: int | None = None,
        means: int = 0,
        workers: Workers | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """One pass of the hyper-decoder -> (table indices, means or None).

        With ``means`` = M > 0 (a mean-and-scale hyperprior, latent_codec/families/mean_scale.py) the first M
        output channels are means and the rest log σ: the indices come from the log σ channels, and the means
        are the exact integer units times 2^-2F, rounded once to float32 (float64 holds the product exactly;
        the one rounding is IEEE's, the same on every machine). Every mean is thus a function of ẑ alone.
        """
        idx, mu, _ = self.select_units(z, size, z_max, means, None, workers)
        return idx, mu

    def select_units(
        self,
        z: np.ndarray,
        size: tuple[int, int],
        z_max: int | None,
        means: int,
        shift: int | None,
        workers: Workers | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``select``, plus (with ``shift`` = s) every output's exact units rounded to multiples of 2^s:
        floor((U + 2^(s-1)) / 2^s) as int64 (N, outputs, h, w), an exact integer operation. The checkerboard
        context (checkerboard.py) reads the hyper-decoder's output on the 2^-F grid this way (s = F)."""
        z = np.asarray(z)
        dtype = np.uint8 if len(self.thresholds) < 256 else np.uint16
        n, h, w = len(z), int(size[0]), int(size[1])
        out = np.empty((n, self.w2.shape[0] - means, h, w), dtype)
        mu = np.empty((n, means, h, w), np.float32) if means else None
        grid = np.empty((n, self.w2.shape[0], h, w), np.int64) if shift is not None else None
        unit = 2.0 ** (-2 * self.frac_bits)
        plan = self._plan(z, z_max, (h, w))
        if plan is None:
            return out, mu, grid

        def strip(spec: tuple[int, int, int, int]) -> None:  # writes its own rows of out (mu, grid)
            sl, units = self._strip(plan, spec)
            out[sl] = plan.thresholds(units[:, means:])
            if mu is not None:
                mu[sl] = units[:, :means].astype(np.float64) * unit
            if grid is not None and shift is not None:
                u = units.astype(np.int64)  # integer-valued below 2^53 (float) or int64: exact
                if shift > 0:
                    u += 1 << (shift - 1)
                    u >>= shift
                grid[sl] = u

        with _one_blas_thread():  # process-wide: the workers' products run on one BLAS thread each too
            (workers or Workers(1)).map(strip, plan.specs)
        return out, mu, grid

    def _strips(self, z: np.ndarray, z_max: int | None, size: tuple[int, ...]):
        """Yield (slice of the (N, M, h, w) output, exact integer units, thresholds) strip by strip."""
        plan = self._plan(z, z_max, size)
        if plan is None:
            return
        for spec in plan.specs:
            sl, units = self._strip(plan, spec)
            yield sl, units, plan.thresholds

    def _plan(self, z: np.ndarray, z_max: int | None, size: tuple[int, ...]) -> _Plan | None:
        """The strips of one pass (groups of items, runs of rows) and what they all read; None when empty."""
        n, nh, hz, wz = z.shape
        h, w = int(size[0]), int(size[1])
        if n == 0 or h == 0 or w == 0:
            return None
        if z_max is None:
            z_max = int(np.max(np.abs(z.astype(np.int64)), initial=0))
        d1, d2 = self.check(z_max).dtypes
        w1, b1, w2, b2, thresholds = self._weights(d1, d2)
        rows = max(1, STRIP_POSITIONS // (4 * wz))  # ẑ rows per strip for one item
        items = max(1, STRIP_POSITIONS // (4 * wz * hz)) if rows >= hz else 1  # small items: several a strip
        # ẑ channel-last with one zero row/column around it: the zero padding the 3x3 windows read
        zp = np.zeros((n, hz + 2, wz + 2, nh), d1)
        zp[:, 1:-1, 1:-1, :] = np.moveaxis(z, 1, -1)
        specs = [
            (i0, min(n, i0 + items), r0, min(hz, r0 + rows))
            for i0 in range(0, n, items)
            for r0 in range(0, min(hz, (h + 1) // 2), rows)
        ]
        return _Plan(zp, (h, w), d2, w1, b1, w2, b2, thresholds, specs)

    @staticmethod
    def _strip(plan: _Plan, spec: tuple[int, int, int, int]) -> tuple[tuple[slice, ...], np.ndarray]:
        """One strip: items i0..i1-1, ẑ rows r0..r1-1 -> (its slice of the output, exact integer units). Reads
        only the plan and writes nothing shared, so strips may run on several threads in any order."""
        i0, i1, r0, r1 = spec
        zp, (h, w), d2 = plan.zp, plan.size, plan.d2
        k, hz, wz, nh = i1 - i0, zp.shape[1] - 2, zp.shape[2] - 2, zp.shape[3]
        y0, y1 = 2 * r0, min(2 * r1, h)
        # Layer 1, all four phases, at ẑ rows c0..c1-1: the strip's rows and, inside the map, one
        # more above and below (their nearer phase is a row layer 2 reads).
        c0, c1 = max(r0 - 1, 0), min(r1 + 1, hz)
        a = np.empty((k, c1 - c0, 2, wz, 2, nh), zp.dtype)  # ẑ row, phase a, ẑ column, phase b, channel
        for p, cols in enumerate(plan.w1):
            pa, pb = divmod(p, 2)
            ph = _im2col2(zp[i0:i1], c0 + pa, pb, c1 - c0, wz) @ cols
            a[:, :, pa, :, pb, :] = ph.reshape(k, c1 - c0, wz, nh)
        a += plan.b1
        np.maximum(a, 0, out=a)
        a = a.reshape(k, 2 * (c1 - c0), 2 * wz, nh)  # upsampled rows 2c0..2c1-1
        # a1: rows 2r0-1..2r1, columns -1..2wz; what lies outside the map is conv2's zero padding
        a1 = np.zeros((k, 2 * (r1 - r0) + 2, 2 * wz + 2, nh), d2)
        lo, hi = max(2 * c0, 2 * r0 - 1), min(2 * c1, 2 * r1 + 1)
        a1[:, lo - (2 * r0 - 1) : hi - (2 * r0 - 1), 1:-1] = a[:, lo - 2 * c0 : hi - 2 * c0]
        units = _im2col(a1, y1 - y0, w) @ plan.w2  # rows y0..y1-1, columns 0..w-1
        units += plan.b2
        units = units.reshape(k, y1 - y0, w, -1)
        return (slice(i0, i1), slice(None), slice(y0, y1), slice(0, w)), np.moveaxis(units, -1, 1)

    # ---- (de)serialisation --------------------------------------------------------------------------------
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

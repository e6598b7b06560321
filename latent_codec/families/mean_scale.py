"""Code maps under a mean-and-scale hyperprior (Minnen et al. 2018, without the autoregressive context).

Payload kind ``map-meanscale``, format ``map+meanscale``. The layout is the scale hyperprior's
(code_map.py: size header, ẑ under per-channel tables, then ŷ grouped by table); what differs is what a
symbol means. The integer hyper-decoder has 2M outputs: the first M are means μ, the last M log σ. Each
element of ŷ is sent as an integer residual r next to y - μ on the grid (rint, or the neighbour that rate-aware
rounding picks: latent_codec/rd_rounding.py, the codec's ``rounding``), coded under the zero-mean Gaussian table
its σ selects, and the decoder feeds ŷ = r + μ to decoder.onnx.

Why it stays deterministic: μ comes from the same exact integer arithmetic as the table indices
(hyper_decoder.py ``select``): integer units times 2^-2F, rounded once to float32, so it is a function of the
decoded ẑ alone, bit-identical on every machine, thread count and batch size; r + μ is one IEEE float32
addition. The encoder's float path only decides *which* residuals are sent.

Trained by training/models/spatial.py (``entropy="meanscale"``), exported by training/export_map.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..bundle import Bundle
from ..codec import Progress, Side
from ..errors import PayloadError
from ..parallel import Workers
from ..rd_rounding import DEFAULT_KAPPA, RateRounding
from ..registry import register_family
from .code_map import MapCodec, MapPayload

KIND = "map-meanscale"
MEAN_BYTES_PER_SYMBOL = 4  # each ŷ element's float32 mean, held from unpacking until the decoder graph ran


@dataclass
class MeanScalePayload(MapPayload):
    """The scale hyperprior's payload section, with a hyper-decoder of 2M outputs (means first)."""

    kind: ClassVar[str] = KIND
    entropy_models: ClassVar[tuple[str, ...]] = ("meanscale",)

    @property
    def hyper_outputs(self) -> int:
        return 2 * self.code_channels

    def _select(
        self, y_shape: tuple[int, ...], z_sym: np.ndarray, workers: Workers | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        assert self.hyper_decoder is not None
        half = 1 << (self.z_grid_bits - 1)
        z = np.asarray(z_sym, np.int64) - half
        idx, mu = self.hyper_decoder.select(
            z, (int(y_shape[2]), int(y_shape[3])), z_max=half, means=self.code_channels, workers=workers
        )
        assert mu is not None
        return idx, mu

    def table_indices(
        self, y_shape: tuple[int, ...], z_sym: np.ndarray | None, workers: Workers | None = None
    ) -> np.ndarray:
        """(N, M, h, w) Gaussian table index of every ŷ element: what its σ selects."""
        if z_sym is None:
            raise PayloadError("a mean-and-scale payload needs its ẑ")
        return self._select(y_shape, z_sym, workers)[0]

    def means(
        self, y_shape: tuple[int, ...], z_sym: np.ndarray, workers: Workers | None = None
    ) -> np.ndarray:
        """(N, M, h, w) float32 μ of every ŷ element, from ẑ alone."""
        return self._select(y_shape, z_sym, workers)[1]

    def residual_symbols(
        self, y: np.ndarray, mu: np.ndarray, idx: np.ndarray | None = None, kappa: float = 0.0
    ) -> np.ndarray:
        """Code map and means -> symbols of r = rint(y - μ) on the grid; with ``kappa`` > 0 and the elements'
        table indices, r is floor or ceil of y - μ by rate-aware rounding (latent_codec/rd_rounding.py)."""
        d = np.asarray(y, np.float32) - mu
        if kappa <= 0 or idx is None:
            return self.grid_symbols(d, self.grid_bits)
        return self.rounding(kappa)(d, idx)

    def rounding(self, kappa: float) -> RateRounding:
        """The rate-aware rounding of this payload's tables at strength κ (built once per κ)."""
        key = ("rounding", float(kappa))
        if key not in self._cache:
            self._cache[key] = RateRounding(self.y_tables.log2_probabilities, kappa, self.grid_bits)
        return self._cache[key]

    def dequantise_with(self, symbols: np.ndarray, mu: np.ndarray) -> np.ndarray:
        """Symbols and means -> ŷ = r + μ (float32)."""
        r = np.asarray(symbols, np.float32) - np.float32(1 << (self.grid_bits - 1))
        return np.add(r, mu, dtype=np.float32)


@register_family(KIND)
class MeanScaleCodec(MapCodec):
    """A MapCodec whose symbols are residuals around means the hyper-decoder predicts."""

    payload_type = MeanScalePayload
    payload: MeanScalePayload
    # The encoder's rounding of residuals: κ of latent_codec/rd_rounding.py (0: plain rint). Any value gives
    # payloads every decoder reads; the edge CLI's --rounding sets it.
    rounding: float = DEFAULT_KAPPA

    @classmethod
    def build(cls, bundle: Bundle, threads: int = 0) -> MeanScaleCodec:
        codec = super().build(bundle, threads)
        assert isinstance(codec, MeanScaleCodec)
        return codec

    # ---- encode -------------------------------------------------------------------------------------------
    symbols_from_y_alone = False  # the residuals need μ, which needs ẑ

    def _y_symbols(
        self, y: np.ndarray, z: np.ndarray | None, workers: Workers | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The residuals around the means the integer hyper-decoder predicts from ẑ, and their table indices
        (the one hyper-decoder pass of the encode: packing codes under these)."""
        assert z is not None
        p = self.payload
        idx, mu = p._select(y.shape, z, workers)
        return p.residual_symbols(y, mu, idx, self.rounding), idx

    def quantise(self, codes: np.ndarray) -> np.ndarray:
        raise PayloadError(
            "mean-and-scale symbols depend on ẑ: use encode (or MeanScalePayload.residual_symbols)"
        )

    # ---- decode -------------------------------------------------------------------------------------------
    def symbols(self, payloads: Sequence[bytes]) -> tuple[np.ndarray, Side]:
        """Payloads of one size -> (residual symbols, {"size": (N, 2), "mean": μ (N, M, h, w)})."""
        sizes, y_sym, z_sym = self.payload.unpack(list(payloads))
        assert z_sym is not None
        return y_sym, {"size": sizes, "mean": self.payload.means(y_sym.shape, z_sym)}

    def dequantise(self, symbols: np.ndarray, side: Side | None = None) -> np.ndarray:
        if side is None or "mean" not in side:
            raise PayloadError("mean-and-scale codes need the means symbols() returned beside them")
        return self.payload.dequantise_with(symbols, side["mean"])

    def _tiled_item_codes(self, payload: bytes, progress: Progress | None, workers: Workers) -> np.ndarray:
        """One big item's payload -> its codes ŷ = r + μ (float32), synthesised tile by tile."""
        _, y_sym, z_sym = self.payload.unpack([payload], progress, workers)
        assert z_sym is not None
        return self.payload.dequantise_with(y_sym, self.payload.means(y_sym.shape, z_sym, workers))

    def _decode_whole(
        self, payloads: Sequence[bytes], unit: bool, chunk: int, progress: Progress | None = None
    ) -> np.ndarray:
        symbols, side = self.symbols(payloads)
        x_unit = self.synthesise(self.dequantise(symbols, side), side, chunk)
        return x_unit if unit else self.unscale(x_unit)

    def unpack_costs(self, payloads: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """The scale hyperprior's unpacking, plus each ŷ element's float32 mean."""
        nbytes, seconds = super().unpack_costs(payloads)
        sizes = self.payload.sizes(list(payloads))
        y_symbols = (-(-sizes // self.payload.stride)).prod(axis=1) * self.payload.code_channels
        return nbytes + y_symbols * MEAN_BYTES_PER_SYMBOL, seconds

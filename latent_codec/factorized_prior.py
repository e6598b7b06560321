"""Integer frequency tables: one discrete distribution per code dimension (or per table index).

Stored in the manifest as integers summing to 2**precision per row, so both ends build identical coder
models from them (latent_codec/ans.py). Flat codes use one row per code dimension; code maps use one row
per channel, or one per Gaussian scale of a hyperprior (``gaussian``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from math import erf, sqrt

import numpy as np

from . import ans
from .errors import PayloadError


@dataclass
class FactorizedPrior:
    """Per-row integer frequency tables over symbols 0..levels-1."""

    tables: np.ndarray  # (D, levels) int64, each row sums to 2**precision, entries >= 1
    precision: int = 16
    coder: str = ans.DEFAULT_CODER  # the entropy coder its streams use (latent_codec/ans.py)

    # ---- fitting ----------------------------------------------------------
    @classmethod
    def fit(
        cls, symbols: np.ndarray, levels: int, precision: int = 16, pseudo_count: float = 0.5
    ) -> FactorizedPrior:
        """Count symbols (N, D) on training codes; smooth; scale to integers summing to 2**precision."""
        s = np.asarray(symbols, dtype=np.int64).reshape(len(symbols), -1)
        if levels > (1 << precision) // 2:
            raise ValueError(f"{levels} levels need more than {precision}-bit precision tables")
        counts = np.stack([np.bincount(s[:, d], minlength=levels)[:levels] for d in range(s.shape[1])])
        return cls(cls._to_integer_table(counts + pseudo_count, precision), precision)

    @classmethod
    def from_probabilities(cls, probs: np.ndarray, precision: int = 16) -> FactorizedPrior:
        """From a learned float prior (D, levels), e.g. trained with rate-distortion loss."""
        return cls(cls._to_integer_table(np.asarray(probs, np.float64), precision), precision)

    @classmethod
    def gaussian(cls, scales: list[float], grid_bits: int, precision: int = 16) -> FactorizedPrior:
        """Tables of N(0, σ_k²) over the integer grid, tails folded into the end bins (export only)."""
        half = 1 << (grid_bits - 1)
        k = np.arange(-half, half, dtype=np.float64)
        rows = []
        for s in scales:
            cdf = np.array([0.5 * (1 + erf(v / (s * sqrt(2)))) for v in np.append(k - 0.5, k[-1] + 0.5)])
            cdf[0], cdf[-1] = 0.0, 1.0
            rows.append(np.diff(cdf))
        return cls.from_probabilities(np.asarray(rows), precision)

    @staticmethod
    def _to_integer_table(weights: np.ndarray, precision: int) -> np.ndarray:
        """Deterministic: floor of scaled weights, each >= 1, remainder to the largest entries."""
        total = 1 << precision
        w = np.maximum(weights, 0.0)
        w = w / w.sum(axis=1, keepdims=True)
        levels = w.shape[1]
        freq = np.maximum(1, np.floor(w * (total - levels)).astype(np.int64))
        for row, p in zip(freq, w):
            diff = total - int(row.sum())
            order = np.argsort(-p, kind="stable")
            i = 0
            while diff != 0:  # add to (or take from) the most probable symbols first
                j = order[i % levels]
                if diff > 0:
                    row[j] += 1
                    diff -= 1
                elif row[j] > 1:
                    row[j] -= 1
                    diff += 1
                i += 1
        return freq

    # ---- (de)serialisation --------------------------------------------------
    def to_dict(self) -> dict:
        return {"coder": self.coder, "precision": self.precision, "tables": self.tables.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> FactorizedPrior:
        coder = ans.check_coder(str(d.get("coder")))
        precision = int(d["precision"])
        tables = np.asarray(d["tables"], dtype=np.int64)
        if tables.ndim != 2 or np.any(tables < 1) or np.any(tables.sum(axis=1) != (1 << precision)):
            raise ValueError("entropy tables must be positive integers, each row summing to 2**precision")
        return cls(tables, precision, coder)

    # ---- facts ------------------------------------------------------------------
    @property
    def dims(self) -> int:
        return int(self.tables.shape[0])

    @property
    def levels(self) -> int:
        return int(self.tables.shape[1])

    @cached_property
    def coder_tables(self) -> ans.Tables:
        """The tables as the coder's models (built once)."""
        return ans.Tables(self.tables, self.precision)

    def bits(self, symbols: np.ndarray) -> np.ndarray:
        """Ideal code length in bits per item under this prior (what a perfect coder would spend)."""
        s = np.asarray(symbols, dtype=np.int64).reshape(len(symbols), -1)
        return -self.log2_probabilities[np.arange(self.dims)[None, :], s].sum(axis=1)

    @property
    def log2_probabilities(self) -> np.ndarray:
        return np.log2(self.tables.astype(np.float64) / float(1 << self.precision))

    # ---- coding: one row per code dimension ----------------------------------------
    def encode(self, symbols: np.ndarray) -> list[bytes]:
        """(N, D) symbols -> N entropy-coded streams (symbol d under row d)."""
        s = np.asarray(symbols).reshape(len(symbols), -1)
        if s.shape[1] != self.dims:
            raise PayloadError(f"code has {s.shape[1]} dimensions, entropy tables have {self.dims}")
        if s.size and (int(s.max()) >= self.levels or int(s.min()) < 0):
            raise PayloadError(f"symbols outside 0..{self.levels - 1}")
        out = []
        for row in s.astype(np.int32):
            enc = ans.encoder(self.coder)
            enc.push_rows(row, self.coder_tables)
            out.append(enc.finish())
        return out

    def decode(self, payloads: list[bytes]) -> np.ndarray:
        """N entropy-coded streams -> (N, D) uint16 symbols. PayloadError names the first corrupt item."""
        out = np.empty((len(payloads), self.dims), dtype=np.uint16)
        for i, p in enumerate(payloads):
            try:
                dec = ans.decoder(p, self.coder)
                out[i] = dec.pop_rows(self.coder_tables)
                dec.finish()
            except PayloadError as exc:
                raise PayloadError(f"item {i}: {exc}") from None
        return out


def table_sets(payload: object) -> list[FactorizedPrior]:
    """Every table set of a payload section (a flat code's prior; a code map's ŷ and ẑ tables): one coder
    codes them all, so switching a bundle's coder (training/recode.py) switches each of these."""
    found = [getattr(payload, name, None) for name in ("prior", "y_tables", "z_tables")]
    return [p for p in found if isinstance(p, FactorizedPrior)]


def switch_coder(payload: object, coder: str, item_size: tuple[int, int]) -> None:
    """Make a payload section code with another coder (the same tables): every table set, and for a code map
    its in-stream size, which only the range coder carries (the nominal size is the item size the model was
    trained on). training/recode.py does this to a bundle on disk, bench/coder_overhead.py to one in memory."""
    ans.check_coder(coder)
    for t in table_sets(payload):
        t.coder = coder
    if hasattr(payload, "nominal_size"):
        payload.nominal_size = tuple(item_size) if coder == ans.RANGE_CODER else None

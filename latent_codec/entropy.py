"""Entropy coding of quantised codes with a factorised prior and constriction's ANS coder.

The prior is one discrete distribution per code dimension, stored in the
manifest as *integer* frequency tables that sum to 2**precision. Both sides
build the coder's model from those integers alone, so a payload encoded on one
machine decodes bit-exactly on another.

Payload bytes: constriction emits 32-bit words; the top word of an ANS stream
is usually small, so up to three trailing zero bytes are dropped and restored
(zero padding) on decode: byte, not word, granularity for 20-byte payloads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import PayloadError

CODER_NAME = "constriction-ans32"


def _import_constriction():
    import constriction

    return constriction


@dataclass
class FactorizedPrior:
    """Per-dimension integer frequency tables over symbols 0..levels-1."""

    tables: np.ndarray  # (D, levels) int64, each row sums to 2**precision, entries >= 1
    precision: int = 16

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
        return {"coder": CODER_NAME, "precision": self.precision, "tables": self.tables.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> FactorizedPrior:
        if d.get("coder") != CODER_NAME:
            raise ValueError(f"unknown entropy coder {d.get('coder')!r} (this build has {CODER_NAME!r})")
        precision = int(d["precision"])
        tables = np.asarray(d["tables"], dtype=np.int64)
        if tables.ndim != 2 or np.any(tables < 1) or np.any(tables.sum(axis=1) != (1 << precision)):
            raise ValueError("entropy tables must be positive integers, each row summing to 2**precision")
        return cls(tables, precision)

    # ---- coding ---------------------------------------------------------------
    @property
    def dims(self) -> int:
        return int(self.tables.shape[0])

    @property
    def levels(self) -> int:
        return int(self.tables.shape[1])

    def _model(self):
        c = _import_constriction()
        # Exact dyadic rationals: freq / 2**precision is exactly representable.
        probs = self.tables.astype(np.float64) / float(1 << self.precision)
        return c.stream.model.Categorical(perfect=False), probs

    def bits(self, symbols: np.ndarray) -> np.ndarray:
        """Ideal code length in bits per item under this prior (what a perfect coder would spend)."""
        s = np.asarray(symbols, dtype=np.int64).reshape(len(symbols), -1)
        logp = np.log2(self.tables.astype(np.float64) / float(1 << self.precision))
        return -logp[np.arange(self.dims)[None, :], s].sum(axis=1)

    def encode(self, symbols: np.ndarray) -> list[bytes]:
        """(N, D) symbols -> N payloads."""
        c = _import_constriction()
        s = np.asarray(symbols).reshape(len(symbols), -1)
        if s.shape[1] != self.dims:
            raise PayloadError(f"code has {s.shape[1]} dimensions, entropy tables have {self.dims}")
        if s.size and (int(s.max()) >= self.levels or int(s.min()) < 0):
            raise PayloadError(f"symbols outside 0..{self.levels - 1}")
        family, probs = self._model()
        out = []
        s32 = s.astype(np.int32)
        for row in s32:
            coder = c.stream.stack.AnsCoder()
            coder.encode_reverse(row, family, probs)
            raw = coder.get_compressed().astype("<u4").tobytes()
            trimmed = raw.rstrip(b"\x00")
            out.append(raw[: max(len(trimmed), len(raw) - 3)])
        return out

    def decode(self, payloads: list[bytes]) -> np.ndarray:
        """N payloads -> (N, D) uint16 symbols. Raises PayloadError on corrupt input."""
        c = _import_constriction()
        family, probs = self._model()
        out = np.empty((len(payloads), self.dims), dtype=np.uint16)
        for i, p in enumerate(payloads):
            padded = bytes(p) + b"\x00" * (-len(p) % 4)
            words = np.frombuffer(padded, dtype="<u4").astype(np.uint32)
            try:
                coder = c.stream.stack.AnsCoder(words)
                sym = coder.decode(family, probs)
            except Exception as exc:  # constriction raises plain exceptions on bad data
                raise PayloadError(f"item {i}: entropy-coded payload is corrupt ({exc})") from None
            if not coder.is_empty():
                raise PayloadError(
                    f"item {i}: entropy-coded payload has trailing data (corrupt or wrong bundle)"
                )
            out[i] = sym
        return out

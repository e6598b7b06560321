"""The one wrapper around constriction's ANS coder: every payload layout entropy-codes through it.

Both ends build the coder's models from *integer* frequency tables alone (rows summing to 2**precision,
so freq / 2**precision is an exact dyadic float), and a payload encoded on one machine decodes bit-exactly
on another. constriction emits 32-bit words; the top word of an ANS stream is usually small, so up to three
trailing zero bytes are dropped by ``Encoder.finish`` and restored (zero padding) by ``Decoder``.

ANS is a stack: the symbols pushed last are popped first. ``Encoder.push`` takes groups in *decoding* order
and pushes them in reverse when the stream is finished, so a layout lists its groups once, in the order
its decoder reads them.

Each constriction call costs about a microsecond of Python whatever its length, so a layout that codes many
short groups (a code map: one group per table per item) hands them over as *runs*: slices of one symbol
array, each under one fixed model (``Encoder.push_runs``, ``Decoder.pop_runs``); the loop over runs is the
only per-group work left. The stream is the same as pushing each run as a group: the coder only sees the
sequence of (symbol, model) pairs.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import numpy as np

from .errors import PayloadError

CODER_NAME = "constriction-ans32"


def _constriction():
    import constriction  # imported on first use: a fixed-width bundle never needs it

    return constriction


class Tables:
    """Integer frequency tables (K, levels) and their constriction models, built once per table set."""

    def __init__(self, tables: np.ndarray, precision: int):
        self.tables = np.asarray(tables, np.int64)
        self.precision = int(precision)

    @cached_property
    def probabilities(self) -> np.ndarray:
        """(K, levels) float64, exactly freq / 2**precision."""
        return self.tables.astype(np.float64) / float(1 << self.precision)

    @cached_property
    def models(self) -> list[Any]:
        """One fixed categorical model per row: for many symbols coded under the same row."""
        model = _constriction().stream.model.Categorical
        return [model(row, perfect=False) for row in self.probabilities]

    @cached_property
    def family(self) -> Any:
        """The categorical family with per-symbol parameters: one row per symbol, in one call."""
        return _constriction().stream.model.Categorical(perfect=False)


Runs = tuple[np.ndarray, list[int], list[int], list[Any]]  # int32 symbols, run starts, run ends, run models


class Encoder:
    """One item's ANS stream. ``push`` groups in the order the decoder will pop them; ``finish`` -> bytes."""

    def __init__(self) -> None:
        self._groups: list[tuple[np.ndarray, Any, np.ndarray | None] | Runs] = []

    def push_runs(self, symbols: np.ndarray, starts: list[int], ends: list[int], models: list[Any]) -> None:
        """Runs symbols[starts[r]:ends[r]] under models[r], in decoding order (one group per run). int32 symbols
        are coded as they are; any other integer dtype (e.g. uint16, half the memory) run by run."""
        self._groups.append((np.ascontiguousarray(symbols), starts, ends, models))

    def push(self, symbols: np.ndarray, model: Any) -> None:
        """Symbols all under one fixed model (a row of ``Tables.models``)."""
        self._groups.append((np.asarray(symbols, np.int32).ravel(), model, None))

    def push_rows(self, symbols: np.ndarray, tables: Tables, params: np.ndarray | None = None) -> None:
        """Symbol d under row d of the tables (one symbol per row), or under params[d] (rows of the tables,
        one per symbol): one call whose cost grows with the table length, for many short groups."""
        rows = tables.probabilities if params is None else params
        self._groups.append((np.asarray(symbols, np.int32).ravel(), tables.family, rows))

    def finish(self) -> bytes:
        coder = _constriction().stream.stack.AnsCoder()
        for group in reversed(self._groups):  # a stack: the group popped first goes in last
            if len(group) == 4:
                symbols, starts, ends, models = group
                encode = coder.encode_reverse
                if symbols.dtype == np.int32:
                    for r in range(len(starts) - 1, -1, -1):
                        encode(symbols[starts[r] : ends[r]], models[r])
                else:
                    for r in range(len(starts) - 1, -1, -1):
                        encode(symbols[starts[r] : ends[r]].astype(np.int32), models[r])
                continue
            symbols, model, params = group
            if params is None:
                coder.encode_reverse(symbols, model)
            else:
                coder.encode_reverse(symbols, model, params)
        raw = coder.get_compressed().astype("<u4").tobytes()
        return raw[: max(len(raw.rstrip(b"\x00")), len(raw) - 3)]


class Decoder:
    """Pops what an ``Encoder`` pushed, in the same order; PayloadError (without an item index) on bad data."""

    def __init__(self, data: bytes):
        body = bytes(data)
        body += b"\x00" * (-len(body) % 4)
        try:
            self._coder = _constriction().stream.stack.AnsCoder(
                np.frombuffer(body, dtype="<u4").astype(np.uint32)
            )
        except Exception as exc:  # constriction raises plain exceptions on bad data
            raise PayloadError(f"entropy-coded payload is corrupt ({exc})") from None

    def pop(self, model: Any, count: int) -> np.ndarray:
        try:
            return np.asarray(self._coder.decode(model, int(count)))
        except Exception as exc:
            raise PayloadError(f"entropy-coded payload is corrupt ({exc})") from None

    def pop_runs(self, out: np.ndarray, starts: list[int], ends: list[int], models: list[Any]) -> None:
        """out[starts[r]:ends[r]] = the next symbols under models[r], run after run (the inverse of push_runs)."""
        decode = self._coder.decode
        try:
            for s, e, m in zip(starts, ends, models):
                out[s:e] = decode(m, e - s)
        except Exception as exc:
            raise PayloadError(f"entropy-coded payload is corrupt ({exc})") from None

    def pop_rows(self, tables: Tables, params: np.ndarray | None = None) -> np.ndarray:
        """Inverse of ``push_rows``: one symbol per row of the tables (or of params)."""
        try:
            return np.asarray(
                self._coder.decode(tables.family, tables.probabilities if params is None else params)
            )
        except Exception as exc:
            raise PayloadError(f"entropy-coded payload is corrupt ({exc})") from None

    def finish(self) -> None:
        """Every word read: anything left means a corrupt payload, or one made for another bundle."""
        if not self._coder.is_empty():
            raise PayloadError("entropy-coded payload has trailing data (corrupt or wrong bundle)")

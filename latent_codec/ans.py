"""The one wrapper around constriction's entropy coders: every payload layout entropy-codes through it.

Both ends build the coder's models from *integer* frequency tables alone (rows summing to 2**precision,
so freq / 2**precision is an exact dyadic float), and a payload encoded on one machine decodes bit-exactly
on another. A bundle names its coder (the tables' "coder" field):

- ``constriction-range32`` (bundles exported since 2026-12-07): constriction's range coder, a queue, with
  our own termination. constriction seals a stream with one or two whole 32-bit words; ``RangeEncoder.finish``
  instead writes the value of the final interval with the most trailing zero bits, big-endian, and drops its
  trailing zero bytes (the decoder pads zeros back). The termination then costs under a byte on average
  where the ANS stack's cost three (docs/coder_overhead.md) — a third of an 8-byte payload.
- ``constriction-ans32`` (earlier bundles, still read and written for them): constriction's ANS stack; its
  top word is usually small, so up to three trailing zero bytes of the little-endian words are dropped.

ANS is a stack, the range coder a queue; ``Encoder.push`` takes groups in *decoding* order for both (the
ANS encoder pushes them in reverse when the stream is finished), so a layout lists its groups once, in the
order its decoder reads them.

Each constriction call costs about a microsecond of Python whatever its length, so a layout that codes many
short groups (a code map: one group per table per item) hands them over as *runs*: slices of one symbol
array, each under one fixed model (``Encoder.push_runs``, ``Decoder.pop_runs``); the loop over runs is the
only per-group work left. The stream is the same as pushing each run as a group: the coder only sees the
sequence of (symbol, model) pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cached_property
from typing import Any, cast

import numpy as np

from .errors import PayloadError

ANS_CODER = "constriction-ans32"
RANGE_CODER = "constriction-range32"
CODERS = (RANGE_CODER, ANS_CODER)
DEFAULT_CODER = RANGE_CODER  # what new tables (and so new bundles) code with
_WORD_SPAN = 1 << 64  # constriction's range coder: 64-bit state, 32-bit words


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
    """One item's entropy-coded stream. ``push`` groups in the order the decoder will pop them; ``finish``
    -> bytes. ``encoder(coder)`` gives the coder's own subclass."""

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

    def _code(self, encode: Any, reverse: bool) -> None:
        """Every group through ``encode`` (a constriction coder's encode method); last to first if reverse."""
        for group in reversed(self._groups) if reverse else self._groups:
            if len(group) == 4:
                symbols, starts, ends, models = cast(Runs, group)
                order: Any = range(len(starts))
                if reverse:
                    order = reversed(order)
                if symbols.dtype == np.int32:
                    for r in order:
                        encode(symbols[starts[r] : ends[r]], models[r])
                else:
                    for r in order:
                        encode(symbols[starts[r] : ends[r]].astype(np.int32), models[r])
                continue
            symbols, model, params = cast(tuple[np.ndarray, Any, "np.ndarray | None"], group)
            if params is None:
                encode(symbols, model)
            else:
                encode(symbols, model, params)

    def finish(self) -> bytes:
        raise NotImplementedError


class AnsEncoder(Encoder):
    """constriction's ANS stack: groups pushed in reverse, so the decoder pops them in order."""

    def finish(self) -> bytes:
        coder = _constriction().stream.stack.AnsCoder()
        self._code(coder.encode_reverse, reverse=True)  # a stack: the group popped first goes in last
        raw = coder.get_compressed().astype("<u4").tobytes()
        return raw[: max(len(raw.rstrip(b"\x00")), len(raw) - 3)]


class RangeEncoder(Encoder):
    """constriction's range coder (a queue) with the shortest termination: see the module docstring."""

    def finish(self) -> bytes:
        coder = _constriction().stream.queue.RangeEncoder()
        self._code(coder.encode, reverse=False)
        pos, (lower, span) = coder.pos()
        words = coder.get_compressed()
        if not len(words):
            return b""
        # words[:pos] are final (the held-back words included), as constriction resolved them for its own seal
        # point lower + 2^32 - 1; where that addition wrapped, they carry 1 into the word before the state.
        prefix = int.from_bytes(words[:pos].astype(">u4").tobytes(), "big") if pos else 0
        carried = lower + (1 << 32) - 1 >= _WORD_SPAN
        lo = ((prefix - carried) << 64) + lower  # the final interval [lo, lo + span) of the whole stream
        value = shortest_in(lo, lo + span - 1)
        return value.to_bytes(4 * pos + 8, "big").rstrip(b"\x00")


def shortest_in(lo: int, hi: int) -> int:
    """The value in [lo, hi] with the most trailing zero bits (the fewest bytes once they are dropped)."""
    if lo <= 0:
        return 0
    top = (lo ^ hi).bit_length() - 1  # highest bit where lo and hi differ (-1: lo == hi)
    if top < 0 or lo & ((1 << (top + 1)) - 1) == 0:
        return lo
    return (hi >> top) << top


class Decoder:
    """Pops what an ``Encoder`` of the same coder pushed, in the same order; PayloadError (without an item
    index) on data the coder can tell is bad. ``decoder(data, coder)`` gives the coder's own subclass."""

    _coder: Any

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
        """Called after the last symbol: PayloadError where the coder can tell data was left over."""


class AnsDecoder(Decoder):
    def __init__(self, data: bytes):
        body = bytes(data)
        body += b"\x00" * (-len(body) % 4)
        try:
            self._coder = _constriction().stream.stack.AnsCoder(
                np.frombuffer(body, dtype="<u4").astype(np.uint32)
            )
        except Exception as exc:  # constriction raises plain exceptions on bad data
            raise PayloadError(f"entropy-coded payload is corrupt ({exc})") from None

    def finish(self) -> None:
        """Every word read: anything left means a corrupt payload, or one made for another bundle."""
        if not self._coder.is_empty():
            raise PayloadError("entropy-coded payload has trailing data (corrupt or wrong bundle)")


class RangeDecoder(Decoder):
    """Reads a range-coded stream. Where asked (``verifying()``: the cloud's validation of what it stores, and
    ``Codec.first_invalid`` / ``problem``) it also proves the stream canonical at ``finish``: the symbols it
    gave, coded again, must give back exactly the payload's bytes, so each stored item has exactly one payload
    and padded or appended bytes are refused. That second pass costs about as much as the decoding's own coder
    calls, so plain decoding skips it (every value of the final interval decodes to the same symbols, so bytes
    past the ones the symbols need are then ignored). Neither is an integrity check: a code with under a byte of
    termination has almost no redundancy, and most damaged streams are the canonical streams of other symbols
    (the transport's integrity covers corruption: TLS, gRPC framing). A stream never ends in a zero byte (the
    encoder drops them): one that does is refused always."""

    def __init__(self, data: bytes):
        self._data = bytes(data)
        if self._data.endswith(b"\x00"):
            raise PayloadError("range-coded payload ends in a zero byte (not what the encoder writes)")
        body = self._data + b"\x00" * (-len(self._data) % 4)
        self._coder = _constriction().stream.queue.RangeDecoder(
            np.frombuffer(body, dtype=">u4").astype(np.uint32)
        )
        self._popped = RangeEncoder() if _VERIFY.get() else None  # what was read, to code again at finish

    def pop(self, model: Any, count: int) -> np.ndarray:
        out = super().pop(model, count)
        if self._popped is not None:
            self._popped.push(out, model)
        return out

    def pop_runs(self, out: np.ndarray, starts: list[int], ends: list[int], models: list[Any]) -> None:
        super().pop_runs(out, starts, ends, models)
        if self._popped is not None:
            self._popped.push_runs(out, starts, ends, models)

    def pop_rows(self, tables: Tables, params: np.ndarray | None = None) -> np.ndarray:
        out = super().pop_rows(tables, params)
        if self._popped is not None:
            self._popped.push_rows(out, tables, params)
        return out

    def finish(self) -> None:
        if self._popped is not None and self._popped.finish() != self._data:
            raise PayloadError(
                "range-coded payload is not what its symbols encode to (corrupt or wrong bundle)"
            )


_VERIFY: ContextVar[bool] = ContextVar("latent_codec_verify_streams", default=False)


@contextmanager
def verifying() -> Iterator[None]:
    """Within (this thread or task): range-coded streams are proven canonical as they are decoded."""
    token = _VERIFY.set(True)
    try:
        yield
    finally:
        _VERIFY.reset(token)


_ENCODERS: dict[str, type[Encoder]] = {ANS_CODER: AnsEncoder, RANGE_CODER: RangeEncoder}
_DECODERS: dict[str, Callable[[bytes], Decoder]] = {ANS_CODER: AnsDecoder, RANGE_CODER: RangeDecoder}


def encoder(coder: str) -> Encoder:
    """An empty stream of the named coder."""
    return _ENCODERS[check_coder(coder)]()


def decoder(data: bytes, coder: str) -> Decoder:
    """A reader of one stream of the named coder (PayloadError where the coder can tell at once it is bad)."""
    return _DECODERS[check_coder(coder)](data)


def check_coder(coder: str) -> str:
    """The coder's name, or ValueError naming the coders this build has."""
    if coder not in CODERS:
        raise ValueError(f"unknown entropy coder {coder!r} (this build has {', '.join(CODERS)})")
    return coder

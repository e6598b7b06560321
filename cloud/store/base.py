"""The storage interface for ingested items: one small contract, two real backends (SQLite, PostgreSQL).

Every write is one transaction: `put_many` returns only after the commit, so
the caller may acknowledge the items. The key is (device_id, item_id); writing
an item again is a no-op that reports it as a duplicate, which is what makes
ingest idempotent under client retries.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from latent_codec.binary_code import hamming
from latent_codec.errors import CodecError

# The multi-index cuts a code into chunks of CHUNK_BYTES (the last may be shorter). Chunks of about log2(N) bits
# suit N stored codes (Norouzi et al.): 16 bits for the 10^4..10^6 items a store holds per bundle.
CHUNK_BYTES = 2
MAX_PROBE_RADIUS = 3  # a 16-bit chunk's values within 3 bits: 697 of 65,536
LINEAR_BELOW = (
    20_000  # codes in scope below which a linear scan is cheaper than probing (docs/search_latency.md)
)


def _flips(bits: int, s: int) -> np.ndarray:
    """Every XOR mask of at most s set bits among `bits` bits."""
    v = np.arange(1 << bits)
    return v[np.bitwise_count(v) <= s]


FLIPS = {(bits, s): _flips(bits, s) for bits in (8, 16) for s in range(MAX_PROBE_RADIUS + 1)}


def code_chunks(code: bytes) -> list[tuple[int, int]]:
    """(chunk index, value) of a packed code's chunks: big-endian CHUNK_BYTES at a time."""
    return [
        (j // CHUNK_BYTES, int.from_bytes(code[j : j + CHUNK_BYTES], "big"))
        for j in range(0, len(code), CHUNK_BYTES)
    ]


def chunk_rows(item: NewItem) -> list[tuple[str, int, int, str, str, bytes]]:
    """The multi-index entries of an item with a binary code: (bundle_id, chunk, value, device, item, code)."""
    if item.binary_code is None:
        return []
    code = bytes(item.binary_code)
    return [(item.bundle_id, c, v, item.device_id, item.item_id, code) for c, v in code_chunks(code)]


class StoreError(CodecError):
    """The store refused or could not complete an operation (message names the cause)."""


class StoreUnavailable(StoreError):
    """A transient failure (database down, locked, connection lost): the caller may retry."""


class StoreFull(StoreUnavailable):
    """The store is out of space (disk or database quota full): retryable once space is freed."""


class ItemConflict(StoreError):
    """An item id was reused for different content: a client bug, never silently accepted."""

    def __init__(self, message: str, item_id: str = ""):
        super().__init__(message)
        self.item_id = item_id  # which item of the request, so the client can set it aside


@dataclass(frozen=True)
class NewItem:
    device_id: str
    item_id: str
    bundle_id: str
    payload: bytes
    captured_at_ms: int
    binary_code: bytes | None = None  # packed bits for semantic-hashing search (bundles with binary codes)
    audit_mse: float | None = None  # reconstruction error when the device sent the original (anomaly score)
    name: str = ""  # the item's source name on the device (IngestItem.name); not part of its identity


@dataclass(frozen=True)
class StoredRecord:
    device_id: str
    item_id: str
    bundle_id: str
    payload: bytes
    captured_at_ms: int
    stored_at_ms: int
    audit_mse: float | None = None
    name: str = ""


@dataclass(frozen=True)
class Summary:
    device_id: str
    bundle_id: str
    items: int
    payload_bytes: int


def same_content(a_bundle: str, a_payload: bytes, b_bundle: str, b_payload: bytes) -> bool:
    return a_bundle == b_bundle and bytes(a_payload) == bytes(b_payload)


def conflict_message(item: NewItem) -> str:
    digest = hashlib.sha256(item.payload).hexdigest()[:12]
    return (
        f"item_id {item.item_id!r} of device {item.device_id!r} is already stored with a different "
        f"bundle or payload (this payload sha256 {digest}); item ids must not be reused"
    )


class Store(abc.ABC):
    """Durable item storage; implementations are safe to share between threads."""

    # Columns added after the first schema: (name, SQLite type, PostgreSQL type). A store opened on an older
    # database adds them (NULL for the items stored before), so an existing database keeps working.
    linear_below = (
        LINEAR_BELOW  # scopes with fewer codes are scanned linearly (a test sets 0 to probe always)
    )
    ADDED_COLUMNS = (
        ("binary_code", "BLOB", "bytea"),
        ("audit_mse", "REAL", "double precision"),
        ("name", "TEXT NOT NULL DEFAULT ''", "text NOT NULL DEFAULT ''"),
    )

    @abc.abstractmethod
    def put_many(self, items: Sequence[NewItem], stored_at_ms: int) -> int:
        """Store items in one committed transaction; returns how many were already stored.

        Items must have distinct (device_id, item_id). An item already stored
        with identical bundle and payload is a duplicate (not written again);
        with different content it raises ItemConflict and nothing is written.
        """

    @abc.abstractmethod
    def get(self, item_ids: Sequence[str], device_id: str = "") -> list[StoredRecord]:
        """Stored items with these ids (of one device, or of any device when device_id is empty)."""

    @abc.abstractmethod
    def query(self, device_id: str, since_ms: int, until_ms: int, limit: int) -> list[StoredRecord]:
        """A device's items captured in [since_ms, until_ms) (0 = unbounded), oldest first."""

    @abc.abstractmethod
    def summaries(self, device_id: str = "") -> list[Summary]:
        """Item counts and payload bytes per (device, bundle), for one device or all."""

    @abc.abstractmethod
    def binary_codes(
        self, bundle_id: str, device_ids: Sequence[str] | None
    ) -> tuple[list[tuple[str, str]], list[bytes]]:
        """(device_id, item_id) keys and binary codes of a bundle's items that have one (in no particular order),
        of these devices, or of every device when device_ids is None."""

    @abc.abstractmethod
    def code_count(self, bundle_id: str, device_ids: Sequence[str] | None) -> int:
        """How many of a bundle's items in scope have a binary code (from the index, without reading them)."""

    @abc.abstractmethod
    def code_candidates(
        self, bundle_id: str, device_ids: Sequence[str] | None, probes: Sequence[tuple[int, Sequence[int]]]
    ) -> tuple[list[tuple[str, str]], list[bytes]]:
        """Keys and binary codes of a bundle's items whose chunk c is one of the values of some probe (c, values)
        (the multi-index: one entry per code chunk), each item once; in scope as binary_codes."""

    def search(
        self,
        bundle_id: str,
        device_ids: Sequence[str] | None,
        query: np.ndarray,
        limit: int,
        index: bool = True,
    ) -> tuple[list[tuple[StoredRecord, int]], int]:
        """The `limit` stored items nearest the packed query code by Hamming distance (ties in key order), with
        their distances, and how many stored codes were compared.

        Multi-index hashing (Norouzi et al.): the code's m chunks (CHUNK_BYTES each) are indexed separately. An
        item within Hamming distance R = m (s + 1) - 1 of the query has, by pigeonhole, some chunk within s bits
        of the query's chunk, so probing each chunk's values within s bits finds every item within R. Radius
        s = 0, 1, ... grows until the probe holds `limit` items within R; those are then exactly the nearest
        (everything not found is farther than R), ties included. A device scope of fewer than LINEAR_BELOW codes,
        a probe that cannot settle it by MAX_PROBE_RADIUS, or index=False: a linear scan of the codes in scope.
        """
        chunks = code_chunks(query.tobytes())
        m = len(chunks)
        # A few devices' codes are read faster by the (bundle, device) index than probed (docs/search_latency.md);
        # counting them is cheap next to reading them. Unscoped searches always probe.
        if index and (device_ids is None or self.code_count(bundle_id, device_ids) >= self.linear_below):
            for s in range(MAX_PROBE_RADIUS + 1):
                probes = [
                    (c, (v ^ FLIPS[8 * min(CHUNK_BYTES, len(query) - c * CHUNK_BYTES), s]).tolist())
                    for c, v in chunks
                ]
                keys, codes = self.code_candidates(bundle_id, device_ids, probes)
                reach = m * (s + 1) - 1  # pigeonhole: within this many bits, some chunk is within s bits
                found = self._nearest(keys, codes, query, limit, bundle_id, within=reach)
                if found is not None:
                    return found, len(keys)
        keys, codes = self.binary_codes(bundle_id, device_ids)
        hits = self._nearest(keys, codes, query, limit, bundle_id)
        return hits or [], len(keys)

    def _nearest(
        self,
        keys: list[tuple[str, str]],
        codes: list[bytes],
        query: np.ndarray,
        limit: int,
        bundle_id: str,
        within: int | None = None,
    ) -> list[tuple[StoredRecord, int]] | None:
        """The nearest `limit` of these codes with their records; with `within`, None unless `limit` of them are
        at most that far (then the rest of the store cannot be nearer)."""
        if not keys:
            return None if within is not None else []
        arr = np.frombuffer(b"".join(codes), np.uint8).reshape(len(codes), -1)
        if arr.shape[1] != len(query):
            raise StoreError(
                f"stored binary codes of bundle {bundle_id} are {arr.shape[1]} bytes, the query {len(query)}"
            )
        dist = hamming(query, arr)
        k = min(limit, len(dist))
        if within is not None and int((dist <= within).sum()) < limit:
            return None
        if k <= 0:
            return []
        cut = np.partition(dist, k - 1)[k - 1]  # the k-th smallest distance: every hit is at most this far
        near = np.flatnonzero(dist <= cut)
        # Ties broken by (device_id, item_id) in code point order, the same in every store whatever its collation.
        idx = sorted(near.tolist(), key=lambda i: (int(dist[i]), keys[i]))[:k]
        by_device: dict[str, list[str]] = {}
        for i in idx:
            by_device.setdefault(keys[i][0], []).append(keys[i][1])
        found = {(r.device_id, r.item_id): r for d, ids in by_device.items() for r in self.get(ids, d)}
        return [
            (found[keys[i]], int(dist[i])) for i in idx if keys[i] in found
        ]  # found: not deleted meanwhile

    @abc.abstractmethod
    def check_writable(self) -> None:
        """Commit a small write (a row of the store's own meta table); StoreError when the store cannot take one.

        Run at start (a read-only store is a one-line error, not a server that fails every Ingest) and
        periodically, so health reflects the store.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; the store is unusable afterwards."""

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

from latent_codec.errors import CodecError


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


@dataclass(frozen=True)
class StoredRecord:
    device_id: str
    item_id: str
    bundle_id: str
    payload: bytes
    captured_at_ms: int
    stored_at_ms: int


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
    def check_writable(self) -> None:
        """Commit a small write (a row of the store's own meta table); StoreError when the store cannot take one.

        Run at start (a read-only store is a one-line error, not a server that fails every Ingest) and
        periodically, so health reflects the store.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; the store is unusable afterwards."""

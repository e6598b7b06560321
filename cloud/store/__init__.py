"""Durable storage of ingested items: `open_store(url)` picks SQLite or PostgreSQL."""

from .base import (
    ItemConflict,
    NewItem,
    Store,
    StoredRecord,
    StoreError,
    StoreUnavailable,
    Summary,
    open_store,
)

__all__ = [
    "ItemConflict",
    "NewItem",
    "Store",
    "StoredRecord",
    "StoreError",
    "StoreUnavailable",
    "Summary",
    "open_store",
]

"""Durable storage of ingested items: `open_store(url)` picks SQLite or PostgreSQL."""

from .base import (
    ItemConflict,
    NewItem,
    Store,
    StoredRecord,
    StoreError,
    StoreFull,
    StoreUnavailable,
    Summary,
)
from .factory import open_store

__all__ = [
    "ItemConflict",
    "NewItem",
    "Store",
    "StoredRecord",
    "StoreError",
    "StoreFull",
    "StoreUnavailable",
    "Summary",
    "open_store",
]

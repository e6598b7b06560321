"""Opening a store by URL: the one place that knows the backends (base.py knows none of them)."""

from __future__ import annotations

from .base import Store, StoreError


def open_store(url: str) -> Store:
    """A store from a URL: postgresql://... / postgres://..., sqlite:///path, or a plain file path."""
    if not url:
        raise StoreError("store URL is empty")
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        return PostgresStore(url)
    if url.startswith("sqlite:"):
        # SQLAlchemy's convention: sqlite:///relative.db, sqlite:////absolute/path.db
        if not url.startswith("sqlite:///") or len(url) == len("sqlite:///"):
            raise StoreError(
                f"store URL {url!r}: use sqlite:///relative.db, sqlite:////abs/path.db or a plain path"
            )
        path = url[len("sqlite:///") :]
        from .sqlite import SqliteStore

        return SqliteStore(path)
    if "://" in url:
        raise StoreError(
            f"store URL {url!r}: unknown scheme (use a file path, sqlite:///path or postgresql://...)"
        )
    from .sqlite import SqliteStore

    return SqliteStore(url)

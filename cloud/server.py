"""The cloud server: `python -m cloud.server` (the `aecodec-cloud` command) and ``build_server`` for Python.

The parts, one responsibility each: cloud/cli.py (flags and the process: signals, drain, exit codes),
cloud/config.py (ServerConfig: every setting, its one default and its checks), cloud/lifecycle.py
(start: bundles, store, services, interceptors, port; health; reload; bounded stop), cloud/ports.py.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .cli import config_from_args, main, parse_args
from .config import ServerConfig
from .lifecycle import DECODING, STORAGE, Running, start


def build_server(
    bundles: Path | str,
    address: str = "127.0.0.1:0",
    workers: int = ServerConfig.decode_workers,
    threads: int = ServerConfig.threads,
    store: str | None = None,
    **options: Any,
) -> Running:
    """Build and start a server (options: the other ServerConfig fields); returns it with its bound port."""
    return start(ServerConfig(Path(bundles), address, workers, threads, store, **options))


__all__ = [
    "DECODING",
    "STORAGE",
    "Running",
    "ServerConfig",
    "build_server",
    "config_from_args",
    "main",
    "parse_args",
    "start",
]

if __name__ == "__main__":
    sys.exit(main())

"""The edge CLI's subcommands, one module each: ``HELP``, ``add_arguments(parser)`` and ``run(args) -> exit code``."""

from __future__ import annotations

from types import ModuleType

from . import decode, encode, evaluate, fetch, ingest, quarantine, search

COMMANDS: dict[str, ModuleType] = {
    "evaluate": evaluate,
    "ingest": ingest,
    "quarantine": quarantine,
    "encode": encode,
    "decode": decode,
    "search": search,
    "fetch": fetch,
}

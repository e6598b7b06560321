"""The one `main` wrapper of the project's command-line tools (edge and cloud): errors as one line, never a trace.

A tool's ``main(argv)`` is ``run_main(parse_args, run, argv)``: a CodecError (a bad flag or AECODEC_*
variable, a missing file, a refused request) and an OSError (a directory that does not exist, a file that
cannot be written, a disk that is full) print ``error: ...`` on stderr and exit 2; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from collections.abc import Callable

from .errors import CodecError

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def describe_os_error(exc: OSError) -> str:
    """An OSError as one sentence: what it is, on which path."""
    what = exc.strerror or type(exc).__name__
    where = exc.filename if exc.filename is not None else ""
    return f"{where}: {what}" if where else str(exc) or what


def run_main(
    parse_args: Callable[[list[str] | None], argparse.Namespace],
    run: Callable[[argparse.Namespace], int | None],
    argv: list[str] | None = None,
) -> int:
    """Parse, run, and turn what a person can fix into one `error:` line and exit code 2."""
    try:
        args = parse_args(argv)
        return int(run(args) or 0)
    except CodecError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
    except sqlite3.Error as exc:  # a local database (the edge's spool) that cannot be opened or written
        print(f"error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_ERROR

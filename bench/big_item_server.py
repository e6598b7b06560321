"""`python -m cloud.server` with a larger per-request symbol budget: what bench/speed.py serves one 12 MP photo with.

The server's per-request budgets (cloud/limits.py) refuse one 12-megapixel grey item today: 48 MB of float32
output is over the default --max-decode-mib 32 (a flag), and its 28.5 million code symbols are over the fixed
max_symbols of 2^24 (no flag). Until the budgets count a decode's work per tile (Codec.decode_cost), this
entry point runs the real server's main() with max_symbols raised, for the benchmark only.

    python -m bench.big_item_server --max-symbols 67108864 --bundles zoo --max-decode-mib 64 ...
"""

from __future__ import annotations

import argparse
import functools
import sys


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="bench.big_item_server", description=(__doc__ or "").split("\n")[0])
    p.add_argument(
        "--max-symbols", type=int, default=1 << 26, help="code symbols one request may entropy-decode"
    )
    return p.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, rest = parse_args(argv)
    from cloud import limits, server

    server.Limits = functools.partial(limits.Limits, max_symbols=args.max_symbols)  # type: ignore[misc]
    return server.main(rest)


if __name__ == "__main__":
    sys.exit(main())

"""`python -m cloud.server` with a larger per-request symbol budget: what bench/speed.py serves one 12 MP photo with.

The server's per-request budgets (cloud/limits.py) refuse one 12-megapixel grey item by default: its decoding
holds about 550 MB (over --max-decode-mib 64; a flag) and its 28.5 million code symbols are over the fixed
max_symbols of 2^24 (no flag). This entry point runs the real server's main() with max_symbols raised, for
the benchmark only; the other budgets are set with the server's own flags.

    python -m bench.big_item_server --max-symbols 67108864 --bundles zoo --max-decode-mib 1024 ...
"""

from __future__ import annotations

import argparse
import dataclasses
import sys


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="bench.big_item_server", description=(__doc__ or "").split("\n")[0])
    p.add_argument(
        "--max-symbols", type=int, default=1 << 26, help="code symbols one request may entropy-decode"
    )
    return p.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, rest = parse_args(argv)
    from cloud import cli

    flags_to_config = cli.config_from_args

    def config_from_args(parsed: argparse.Namespace):
        config = flags_to_config(parsed)
        config.limits = dataclasses.replace(config.limits, max_symbols=args.max_symbols)
        return config

    cli.config_from_args = config_from_args  # type: ignore[assignment]
    return cli.main(rest)


if __name__ == "__main__":
    sys.exit(main())

"""The edge client: one subcommand per module in edge/commands/.

    python -m edge.cli evaluate --bundle bundles/conv --server 127.0.0.1:50051 --data fashion-mnist
    python -m edge.cli encode --bundle bundles/conv --data photos/ --out photos.aec      # offline
    python -m edge.cli decode --bundle bundles/conv --codes photos.aec --out restored/   # offline
    python -m edge.cli ingest --bundle bundles/conv --server cloud:50051 --spool spool.db --data photos/
    python -m edge.cli fetch --server cloud:50051 --device-id phone-1 --out restored/   # name.png each
    python -m edge.cli quarantine --spool spool.db [--requeue]
    python -m edge.cli search --bundle bundles/hash --server cloud:50051 --data photo.png   # nearest stored items

Exit codes: 0 done; 2 an error (one line on stderr naming it); 3 ingest gave up
while the cloud was unreachable (items stay spooled); 4 ingest finished but the
cloud refused some items for good (quarantined in the spool); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys

from latent_codec.cli_main import run_main
from latent_codec.envargs import apply_env
from latent_codec.envargs import describe as describe_env

from .commands import COMMANDS

EXIT_CODES = (
    "exit codes: 0 done, 2 error, 3 ingest gave up (items spooled), 4 items quarantined, 130 interrupted."
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="aecodec-edge",
        description=(__doc__ or "").split("\n")[0],
        epilog=EXIT_CODES + " " + describe_env(),
    )
    sub = p.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        module.add_arguments(
            sub.add_parser(
                name,
                help=module.HELP,
                description=module.__doc__,
                epilog=EXIT_CODES + " " + describe_env(),
                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
            )
        )
    apply_env(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_main(parse_args, lambda args: COMMANDS[args.command].run(args), argv)


if __name__ == "__main__":
    sys.exit(main())

"""Every command-line flag can also come from the environment (twelve-factor), and any value from a file.

``--store`` may be given as ``AECODEC_STORE``, or as ``AECODEC_STORE_FILE`` naming a file that holds
the value (a secret such as a database URL with its password need not appear on a command line or
in ``ps``). The command line wins over the environment, the environment over the built-in default.
Subcommands read the same names (``edge.cli ingest --spool`` is ``AECODEC_SPOOL``). Booleans accept
1/true/yes/on and 0/false/no/off. ``describe`` lists the variables for ``--help``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from .errors import CodecError

PREFIX = "AECODEC_"
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def env_name(action: argparse.Action, prefix: str = PREFIX) -> str | None:
    longs = [o for o in action.option_strings if o.startswith("--")]
    return prefix + longs[0][2:].replace("-", "_").upper() if longs else None


def _actions(parser: argparse.ArgumentParser) -> Iterator[tuple[argparse.ArgumentParser, argparse.Action]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _actions(sub)
        elif (
            action.option_strings
            and action.dest not in ("help",)
            and not isinstance(action, argparse._HelpAction)
        ):
            yield parser, action


def _value(action: argparse.Action, raw: str, name: str):
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        text = raw.strip().lower()
        if text not in _TRUE | _FALSE:
            raise CodecError(f"${name} must be true or false, got {raw!r}")
        on = text in _TRUE
        return on if isinstance(action, argparse._StoreTrueAction) else not on
    value: object = raw
    if action.type is not None and callable(action.type):
        try:
            value = action.type(raw)
        except (TypeError, ValueError) as exc:
            raise CodecError(f"${name}: {exc}") from None
    if action.choices is not None and value not in action.choices:  # argparse checks only the command line's
        raise CodecError(f"${name} must be one of {', '.join(map(str, action.choices))}, got {raw!r}")
    return value


def apply_env(
    parser: argparse.ArgumentParser, environ: Mapping[str, str] | None = None, prefix: str = PREFIX
) -> None:
    """Set the parser's defaults (and its subparsers') from AECODEC_* variables; required flags become optional
    when the environment provides them."""
    env = os.environ if environ is None else environ
    for owner, action in _actions(parser):
        name = env_name(action, prefix)
        if name is None:
            continue
        raw = None
        if name + "_FILE" in env:
            path = Path(env[name + "_FILE"])
            try:
                raw = path.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise CodecError(
                    f"${name}_FILE: cannot read {path} ({getattr(exc, 'strerror', None) or exc})"
                ) from None
        elif name in env:
            raw = env[name]
        if raw is None:
            continue
        owner.set_defaults(**{action.dest: _value(action, raw, name)})
        action.required = False


def describe(prefix: str = PREFIX) -> str:
    """One line for --help: which variables set which flags."""
    return (
        f"every flag can also be set by an environment variable: --some-flag is ${prefix}SOME_FLAG, "
        f"or ${prefix}SOME_FLAG_FILE naming a file that holds the value (for secrets)"
    )

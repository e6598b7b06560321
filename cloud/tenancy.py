"""Who may touch which device's items: tokens bound to device ids, and a read-all operator role.

The token file (``--auth-token-file``) has one token per line, optionally followed by its scope:

    tok-cam7-3f9a          devices=cam-7            # a device: writes and reads cam-7's items only
    tok-gateway-81c2       devices=cam-1,cam-2      # a gateway for two devices
    tok-ops-55d0           role=operator            # reads every device's items, writes none
    tok-trusted-9e1b       devices=*                # writes and reads any device (a trusted ingest gateway)
    tok-decoder-only-07aa                           # Decoding only; Storage answers PERMISSION_DENIED

Decoding is stateless and carries no tenant data, so every valid token may use it. The
authenticated principal of a call is put in a context variable by the auth interceptor
(cloud/interceptors/auth_interceptor.py); the storage service asks it before touching a device.
A server without tokens has no principals: every call may do everything (the loopback default).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from pathlib import Path

from latent_codec.errors import CodecError

ALL = "*"
MIN_TOKEN_CHARS = 12  # a token is a secret: a short one is guessed (secrets.token_urlsafe(32) gives 43)


@dataclass(frozen=True)
class Principal:
    """What one token may do with stored items."""

    name: str  # for logs: the token's position in the file, never the token itself
    devices: frozenset[str] = field(default_factory=frozenset)  # may write and read these ("*": any)
    operator: bool = False  # may read every device's items

    def may_write(self, device_id: str) -> bool:
        return ALL in self.devices or device_id in self.devices

    def may_read(self, device_id: str) -> bool:
        return self.operator or self.may_write(device_id)

    @property
    def reads_all(self) -> bool:
        return self.operator or ALL in self.devices

    def describe(self) -> str:
        if self.operator:
            return f"{self.name} (operator: reads all)"
        if not self.devices:
            return f"{self.name} (decoding only)"
        return f"{self.name} (devices {', '.join(sorted(self.devices))})"


UNRESTRICTED = Principal("no auth", frozenset({ALL}), operator=True)
_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("principal", default=UNRESTRICTED)


def current() -> Principal:
    """The principal of the call being handled (UNRESTRICTED on a server without tokens)."""
    return _current.get()


def set_current(p: Principal) -> contextvars.Token[Principal]:
    return _current.set(p)


def reset_current(token: contextvars.Token[Principal]) -> None:
    _current.reset(token)


def parse_token_line(line: str, n: int, where: str) -> tuple[str, Principal]:
    """One line of the token file -> (token, principal); CodecError naming the line when it is malformed."""
    parts = line.split()
    token, scopes = parts[0], parts[1:]
    if len(token) < MIN_TOKEN_CHARS:
        raise CodecError(
            f"the auth token file {where}: line {n}: a token of {len(token)} characters is too short to be secret "
            f"(at least {MIN_TOKEN_CHARS}; e.g. python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    devices: set[str] = set()
    operator = False
    for s in scopes:
        key, _, value = s.partition("=")
        if key == "devices":
            ids = [d for d in value.split(",") if d]
            if not ids or any(not d.isprintable() for d in ids):
                raise CodecError(
                    f"the auth token file {where}: line {n}: devices= needs a comma-separated id list"
                )
            devices.update(ids)
        elif key == "role" and value == "operator":
            operator = True
        else:
            raise CodecError(
                f"the auth token file {where}: line {n}: unknown scope {s!r} (use devices=ID[,ID...] or role=operator)"
            )
    return token, Principal(f"token #{n}", frozenset(devices), operator)


def load_tokens(path: Path | str) -> dict[str, Principal]:
    """token -> principal from the token file (blank lines and #-comments ignored); a file with none is an error."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise CodecError(f"cannot read the auth token file {p} ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise CodecError(f"the auth token file {p} is not UTF-8 text") from None
    out: dict[str, Principal] = {}
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        token, principal = parse_token_line(line, n, str(p))
        if token in out:
            raise CodecError(f"the auth token file {p}: line {n} repeats an earlier token")
        out[token] = principal
    if not out:
        raise CodecError(f"the auth token file {p} holds no token (one per line)")
    return out

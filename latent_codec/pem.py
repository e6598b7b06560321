"""Reading PEM files (TLS keys, certificates, CAs) with errors that name the flag: edge and cloud both do it."""

from __future__ import annotations

from pathlib import Path

from .errors import CodecError


def read_pem(path: str | Path, flag: str, marker: bytes = b"-----BEGIN", what: str = "PEM file") -> bytes:
    """The file's bytes, or a one-line CodecError naming the flag and the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CodecError(f"{flag}: cannot read {path} ({exc.strerror or exc})") from None
    if marker not in data:
        raise CodecError(f"{flag}: {path} is not a {what}")
    return data

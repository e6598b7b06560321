"""Code files: a batch of payloads on disk, for offline compression (``edge.cli encode`` / ``decode``).

A code file is a magic line followed by one serialised CodeBatch (proto/aecodec/v2/codec.proto),
the same container the wire uses: bundle id, format, item count, sizes and the payload bytes.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf.message import DecodeError

from latent_codec.errors import DataError
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb

MAGIC = b"aecodec-codes v2\n"


def write_codes(path: Path, batch: pb.CodeBatch) -> int:
    """Write one CodeBatch; returns the file's size in bytes."""
    data = MAGIC + batch.SerializeToString()
    path.write_bytes(data)
    return len(data)


def read_codes(path: Path) -> pb.CodeBatch:
    """Read a code file; a one-line DataError when it is not one."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc})") from None
    if not data.startswith(MAGIC):
        raise DataError(f"{path}: not a code file (written by `edge.cli encode`)")
    try:
        return pb.CodeBatch.FromString(data[len(MAGIC) :])
    except DecodeError:
        raise DataError(f"{path}: code file is truncated or corrupt") from None

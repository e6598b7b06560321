"""Code files: a batch of payloads on disk, for offline compression (``edge.cli encode`` / ``decode``).

Format v3 (written today): the line ``aecodec-codes v3``, one line of JSON (``{"names": [...]}``: each item's
source name, e.g. its photo's file name, so ``decode`` can write ``name.png``), then one serialised CodeBatch
(proto/aecodec/v2/codec.proto), the container the wire uses: bundle id, format, item count, sizes and the
payload bytes. Format v2 (the magic line, then the CodeBatch) is still read; its items have no names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from latent_codec.errors import DataError
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb

MAGIC_PREFIX = b"aecodec-codes v"
MAGIC = b"aecodec-codes v3\n"
MAGIC_V2 = b"aecodec-codes v2\n"
MAX_HEADER_BYTES = 64 << 20  # the names line; a longer one is a corrupt file, not an allocation
MAX_NAME_CHARS = 255


@dataclass
class CodeFile:
    batch: pb.CodeBatch
    names: list[str] | None  # None for a v2 file


def write_codes(path: Path, batch: pb.CodeBatch, names: list[str] | None = None) -> int:
    """Write one CodeBatch with its items' names (default: their index); returns the file's size in bytes."""
    width = len(str(max(batch.count - 1, 0)))
    names = [f"{i:0{width}d}" for i in range(batch.count)] if names is None else list(names)
    if len(names) != batch.count:
        raise DataError(f"{len(names)} names for {batch.count} items")
    header = json.dumps({"names": names}, ensure_ascii=False).encode() + b"\n"
    data = MAGIC + header + batch.SerializeToString()
    path.write_bytes(data)
    return len(data)


def read_codes(path: Path) -> CodeFile:
    """Read a code file (v3, or v2 without names); a one-line DataError when it is not one."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc})") from None
    names: list[str] | None = None
    if data.startswith(MAGIC):
        end = data.find(b"\n", len(MAGIC), len(MAGIC) + MAX_HEADER_BYTES)
        if end < 0:
            raise DataError(f"{path}: code file is truncated or corrupt (no names line)")
        names = _names(data[len(MAGIC) : end], path)
        body = data[end + 1 :]
    elif data.startswith(MAGIC_V2):
        body = data[len(MAGIC_V2) :]
    elif data.startswith(MAGIC_PREFIX):
        version = data[len(MAGIC_PREFIX) : data.find(b"\n", 0, 64)].decode(errors="replace")[:16]
        raise DataError(
            f"{path}: code file format v{version}, which this aecodec does not read (it reads v2 and v3); "
            f"decode it with the aecodec that wrote it"
        )
    else:
        raise DataError(f"{path}: not a code file (written by `edge.cli encode`)")
    try:
        batch = pb.CodeBatch.FromString(body)
    except DecodeError:
        raise DataError(f"{path}: code file is truncated or corrupt") from None
    if names is not None and len(names) != batch.count:
        raise DataError(f"{path}: code file names {len(names)} items but holds {batch.count}")
    return CodeFile(batch, names)


def _names(line: bytes, path: Path) -> list[str]:
    try:
        names = json.loads(line.decode())["names"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        raise DataError(f"{path}: code file is corrupt (its names line is not valid)") from None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: code file is corrupt (its names are not a list of strings)")
    return names


def output_names(names: list[str], suffix: str = ".png") -> list[str]:
    """A safe, distinct file name per item: its source name's stem + suffix (``IMG_1.jpg`` -> ``IMG_1.png``).

    Names come from files (or from a code file someone else wrote): only the last path part is kept, so no
    name leaves the output folder; two sources with one stem (``a.jpg``, ``a.png``) keep their suffix
    (``a.jpg.png``, ``a.png.png``); an empty or unusable name becomes the item's index.
    """
    stems = []
    for i, n in enumerate(names):
        base = Path(n.replace("\\", "/")).name[:MAX_NAME_CHARS]
        if base in ("", ".", "..") or not base.isprintable():
            base = str(i)
        stems.append(base)
    short = [Path(b).stem or b for b in stems]
    counts: dict[str, int] = {}
    for s in short:
        counts[s] = counts.get(s, 0) + 1
    out = [(s if counts[s] == 1 else b) + suffix for s, b in zip(short, stems)]
    seen: dict[str, int] = {}
    for i, n in enumerate(out):  # still equal (the same name twice): number the later ones
        if n in seen:
            out[i] = f"{Path(n).stem}-{i}{suffix}"
        seen[n] = i
    return out

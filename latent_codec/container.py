"""The wire form of what a codec produces: payloads as one CodeBatch, numpy items as Tensors.

A ``CodeBatch`` (proto/aecodec/v2/codec.proto) carries one bundle's payloads concatenated, with their sizes
when the format is variable-size; it is also the file format of ``edge.cli encode`` (edge/codefile.py).
A ``Tensor`` carries items (originals sent for evaluation, reconstructions) as packed little-endian bytes
with a dtype and a shape. Both directions validate what arrives, and errors name the field.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .codec import Codec
from .errors import PayloadError
from .wire.aecodec.v2 import codec_pb2 as pb


def to_batch(codec: Codec, payloads: Sequence[bytes]) -> pb.CodeBatch:
    """The wire form of a codec's payloads (sizes only for variable-size formats)."""
    sizes = [] if codec.item_bytes is not None else [len(p) for p in payloads]
    return pb.CodeBatch(
        bundle_id=codec.bundle_id,
        count=len(payloads),
        format=codec.format,
        data=b"".join(payloads),
        sizes=sizes,
    )


def from_batch(codec: Codec, batch: pb.CodeBatch) -> list[bytes]:
    """A CodeBatch's payloads, its fields checked against the codec (errors name the field)."""
    if batch.format != codec.format:
        raise PayloadError(
            f"codes.format is {batch.format!r} but bundle {codec.bundle_id} uses {codec.format!r}"
        )
    return split_payloads(batch.data, list(batch.sizes), batch.count, codec.item_bytes)


def split_payloads(data: bytes, sizes: list[int], count: int, item_bytes: int | None) -> list[bytes]:
    """Concatenated payloads -> one per item, validating lengths against the format."""
    if item_bytes is not None:
        if sizes:
            raise PayloadError("codes.sizes must be empty for a fixed-size format")
        if len(data) != count * item_bytes:
            raise PayloadError(
                f"codes.data is {len(data)} bytes; {count} items of {item_bytes} bytes need {count * item_bytes}"
            )
        return [data[i * item_bytes : (i + 1) * item_bytes] for i in range(count)]
    if len(sizes) != count:
        raise PayloadError(f"codes.sizes has {len(sizes)} entries for {count} items")
    if sum(sizes) != len(data):
        raise PayloadError(f"codes.sizes add up to {sum(sizes)} bytes but codes.data is {len(data)} bytes")
    out, pos = [], 0
    for s in sizes:
        out.append(data[pos : pos + s])
        pos += s
    return out


# ---- items on the wire: numpy arrays <-> Tensor (packed little-endian bytes, dtype, shape) --------------
_TO_NP: dict[int, np.dtype] = {
    pb.DTYPE_UINT8: np.dtype("u1"),
    pb.DTYPE_UINT16: np.dtype("<u2"),
    pb.DTYPE_FLOAT16: np.dtype("<f2"),
    pb.DTYPE_FLOAT32: np.dtype("<f4"),
}
_NAMES = {
    "uint8": pb.DTYPE_UINT8,
    "uint16": pb.DTYPE_UINT16,
    "float16": pb.DTYPE_FLOAT16,
    "float32": pb.DTYPE_FLOAT32,
}
MAX_TENSOR_DIMS = 32  # numpy allows 64; no item here needs more than 5


def to_tensor(arr: np.ndarray) -> pb.Tensor:
    arr = np.asarray(arr)
    name = arr.dtype.name
    if name not in _NAMES:
        raise PayloadError(
            f"dtype {arr.dtype} cannot travel on the wire (use uint8, uint16, float16, float32)"
        )
    le = arr.astype(_TO_NP[_NAMES[name]], copy=False)
    return pb.Tensor(dtype=_NAMES[name], shape=list(arr.shape), data=np.ascontiguousarray(le).tobytes())


def from_tensor(t: pb.Tensor, field: str = "tensor") -> np.ndarray:
    """Validate and convert; errors name the field so a gRPC caller knows what to fix."""
    if t.dtype not in _TO_NP:
        raise PayloadError(f"{field}.dtype is unset or unknown ({t.dtype})")
    if any(s < 0 for s in t.shape):
        raise PayloadError(f"{field}.shape has a negative dimension {list(t.shape)}")
    if len(t.shape) > MAX_TENSOR_DIMS:
        raise PayloadError(f"{field}.shape has {len(t.shape)} dimensions; the limit is {MAX_TENSOR_DIMS}")
    dt = _TO_NP[t.dtype]
    n = math.prod(int(s) for s in t.shape)  # Python ints: a hostile shape cannot overflow the check
    if len(t.data) != n * dt.itemsize:
        raise PayloadError(
            f"{field}.data is {len(t.data)} bytes but shape {list(t.shape)} of {dt.name} needs {n * dt.itemsize}"
        )
    return np.frombuffer(t.data, dtype=dt).reshape(tuple(t.shape)).astype(dt.newbyteorder("="), copy=False)

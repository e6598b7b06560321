"""numpy arrays <-> the wire's Tensor message (packed little-endian bytes, dtype, shape)."""

from __future__ import annotations

import numpy as np

from .errors import PayloadError
from .wire.aecodec.v1 import codec_pb2 as pb

_TO_NP = {
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


def dtype_enum(name: str) -> int:
    return _NAMES[name]


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
    dt = _TO_NP[t.dtype]
    n = int(np.prod(t.shape)) if len(t.shape) else 1
    if len(t.data) != n * dt.itemsize:
        raise PayloadError(
            f"{field}.data is {len(t.data)} bytes but shape {list(t.shape)} of {dt.name} needs {n * dt.itemsize}"
        )
    return np.frombuffer(t.data, dtype=dt).reshape(tuple(t.shape)).astype(dt.newbyteorder("="), copy=False)

"""Base-128 varints (protobuf's encoding): a map payload's size header, and the ONNX guard's wire walk."""

from __future__ import annotations


class VarintError(ValueError):
    """The bytes end inside a varint (``truncated``), or it is longer than the caller allows."""

    def __init__(self, truncated: bool):
        super().__init__("truncated varint" if truncated else "varint too long")
        self.truncated = truncated


def put_varint(value: int) -> bytes:
    """A non-negative int as 7-bit groups, least significant first, the high bit set on all but the last."""
    if value < 0:
        raise ValueError(f"varints hold non-negative ints, got {value}")
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        out.append(b | (0x80 if value else 0))
        if not value:
            return bytes(out)


def get_varint(buf: bytes | memoryview, pos: int, max_bits: int = 64) -> tuple[int, int]:
    """-> (value, position after it). VarintError when buf ends inside it or it needs more than max_bits."""
    value = shift = 0
    while True:
        if shift >= max_bits:
            raise VarintError(truncated=False)
        if pos >= len(buf):
            raise VarintError(truncated=True)
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7

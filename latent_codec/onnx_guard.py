"""Refuse ONNX graphs that keep tensor data outside the graph file (ONNX "external data").

ONNX Runtime resolves an external tensor's ``location`` against the directory it loads from; a
session built from bytes resolves it against the process's working directory, so a re-sealed
decoder naming ``location="tokens.txt"`` would read that file into its weights and send it back
as reconstructions. A bundle's content hash also covers only its own files. Bundles must therefore
be self-contained: any tensor with ``data_location = EXTERNAL`` or ``external_data`` entries, in
the graph, its initializers, node attributes, subgraphs or functions, is refused.

This walks the protobuf wire format directly (field numbers from onnx.proto), so the edge and the
cloud need no ``onnx`` package.
"""

from __future__ import annotations

from collections.abc import Iterator

from .errors import BundleError
from .varint import VarintError, get_varint

# Field numbers (onnx/onnx.proto3).
MODEL_GRAPH, MODEL_FUNCTIONS = 7, 25
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_SPARSE_INITIALIZER = 1, 5, 15
NODE_ATTRIBUTE = 5
ATTR_T, ATTR_G, ATTR_TENSORS, ATTR_GRAPHS, ATTR_SPARSE_T, ATTR_SPARSE_TS = 5, 6, 10, 11, 22, 23
TENSOR_NAME, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 8, 13, 14
SPARSE_VALUES, SPARSE_INDICES = 1, 2
FUNCTION_NODE, FUNCTION_ATTRIBUTE_PROTO = 7, 11
EXTERNAL = 1
MAX_DEPTH = 64  # nested subgraphs deeper than this are refused rather than walked


class _Malformed(Exception):
    pass


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    try:
        return get_varint(buf, pos, 64)
    except VarintError:
        raise _Malformed from None


def _fields(buf: memoryview) -> Iterator[tuple[int, int, memoryview | int]]:
    """(field number, wire type, value) of one message; length-delimited values as views, varints as ints."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield field, wire, value
        elif wire == 1:
            pos += 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise _Malformed
            yield field, wire, buf[pos : pos + n]
            pos += n
        elif wire == 5:
            pos += 4
        else:
            raise _Malformed
        if pos > len(buf):
            raise _Malformed


def _messages(buf: memoryview, *wanted: int) -> Iterator[tuple[int, memoryview]]:
    for field, wire, value in _fields(buf):
        if wire == 2 and field in wanted and isinstance(value, memoryview):
            yield field, value


def _tensor(buf: memoryview) -> str | None:
    """The tensor's name if it keeps its data externally, else None."""
    name, external = "", False
    for field, wire, value in _fields(buf):
        if field == TENSOR_NAME and wire == 2 and isinstance(value, memoryview):
            name = bytes(value).decode("utf-8", "replace")
        elif field == TENSOR_EXTERNAL_DATA and wire == 2:
            external = True
        elif field == TENSOR_DATA_LOCATION and wire == 0 and value == EXTERNAL:
            external = True
    return (name or "<unnamed>") if external else None


def _sparse(buf: memoryview) -> str | None:
    for _, t in _messages(buf, SPARSE_VALUES, SPARSE_INDICES):
        found = _tensor(t)
        if found:
            return found
    return None


def _attribute(buf: memoryview, depth: int) -> str | None:
    for field, v in _messages(buf, ATTR_T, ATTR_TENSORS, ATTR_G, ATTR_GRAPHS, ATTR_SPARSE_T, ATTR_SPARSE_TS):
        found = (
            _tensor(v)
            if field in (ATTR_T, ATTR_TENSORS)
            else _sparse(v)
            if field in (ATTR_SPARSE_T, ATTR_SPARSE_TS)
            else _graph(v, depth + 1)
        )
        if found:
            return found
    return None


def _nodes(buf: memoryview, node_field: int, depth: int) -> str | None:
    for _, node in _messages(buf, node_field):
        for _, attr in _messages(node, NODE_ATTRIBUTE):
            found = _attribute(attr, depth)
            if found:
                return found
    return None


def _graph(buf: memoryview, depth: int) -> str | None:
    if depth > MAX_DEPTH:
        raise _Malformed
    for field, v in _messages(buf, GRAPH_INITIALIZER, GRAPH_SPARSE_INITIALIZER):
        found = _tensor(v) if field == GRAPH_INITIALIZER else _sparse(v)
        if found:
            return found
    return _nodes(buf, GRAPH_NODE, depth)


def check_self_contained(blob: bytes, where: str) -> None:
    """BundleError naming the tensor when the serialised ModelProto refers to data outside itself."""
    buf = memoryview(blob)
    try:
        found = None
        for field, v in _messages(buf, MODEL_GRAPH, MODEL_FUNCTIONS):
            if field == MODEL_GRAPH:
                found = _graph(v, 0)
            else:
                found = _nodes(v, FUNCTION_NODE, 0)
                for _, attr in _messages(v, FUNCTION_ATTRIBUTE_PROTO):
                    found = found or _attribute(attr, 0)
            if found:
                break
    except _Malformed:
        raise BundleError(f"{where}: not a valid ONNX model (malformed protobuf)") from None
    if found:
        raise BundleError(
            f"{where}: tensor {found[:80]!r} keeps its data in an external file; bundles must be "
            f"self-contained (re-export without external data)"
        )

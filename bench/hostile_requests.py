"""Malformed requests for every method of the server, drawn from a random.Random: what a fuzzer sends.

One generator serves two users: tests/test_fuzz.py drives it with hypothesis (``st.randoms()``, so
failures shrink and replay), bench/hostile.py with a seeded Random for ten thousand requests and more.
Categories: random bytes; protobuf with invalid UTF-8 in string fields; valid messages with wrong
formats, sizes and counts; truncated and corrupted entropy-coded payloads; unknown bundles; huge and
negative numbers; hostile tensor shapes; interleaved valid and invalid items and stream messages;
all with and without a token.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field

from latent_codec.varint import put_varint
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb

DECODE = "/aecodec.v2.Decoding/Decode"
DECODE_STREAM = "/aecodec.v2.Decoding/DecodeStream"
MODEL_INFO = "/aecodec.v2.Decoding/ModelInfo"
INGEST = "/aecodec.v2.Storage/Ingest"
FETCH = "/aecodec.v2.Storage/Fetch"
LIST_STORED = "/aecodec.v2.Storage/ListStored"
HEALTH = "/grpc.health.v1.Health/Check"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
KINDS = {
    DECODE: "unary",
    DECODE_STREAM: "stream",
    MODEL_INFO: "unary",
    INGEST: "stream",
    FETCH: "unary_stream",
    LIST_STORED: "unary",
    HEALTH: "unary",
    REFLECTION: "stream",
}
BAD = ("INTERNAL", "UNKNOWN")  # what no request may ever produce
HUGE = (2**31 - 1, 2**32 - 1, 2**62, 2**63 - 1)


@dataclass
class Target:
    """What the generator knows about the server under test: a bundle to be plausible about, and its token."""

    bundle_id: str
    format: str
    item_bytes: int | None  # None: entropy-coded
    valid_payloads: list[bytes]  # real payloads of that bundle
    item_shape: list[int]
    token: str | None = None
    devices: list[str] = field(default_factory=lambda: ["fuzz-device"])


@dataclass
class Call:
    method: str
    kind: str  # unary | unary_stream | stream
    bodies: list[bytes]  # one body, or the messages of a request stream
    metadata: list[tuple[str, str]] | None


def _field(number: int, value: bytes) -> bytes:
    return put_varint(number << 3 | 2) + put_varint(len(value)) + value


def _junk(rnd: random.Random, n: int | None = None) -> bytes:
    return rnd.randbytes(rnd.choice((0, 1, 3, 17, 200)) if n is None else n)


def _string(rnd: random.Random, t: Target) -> str:
    return rnd.choice(["", t.bundle_id, "x" * rnd.choice((1, 257, 5000)), "dev\x00ice", "ünïcødé", "a\nb"])


def _payloads(rnd: random.Random, t: Target, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        p = rnd.choice(t.valid_payloads)
        mode = rnd.randrange(6)
        if mode == 1:
            p = p[: rnd.randrange(len(p) + 1)]  # truncated
        elif mode == 2:
            p = p + _junk(rnd, rnd.randrange(1, 9))  # trailing bytes
        elif mode == 3:
            p = bytes(b ^ rnd.randrange(256) for b in p)  # corrupted
        elif mode == 4:
            p = b""
        out.append(p)
    return out


def _tensor(rnd: random.Random, t: Target, n: int) -> pb.Tensor:
    shape = rnd.choice([[n, *t.item_shape], [2**62, 4], [1] * 40, [n, 0], [], [-1], [n, *t.item_shape, 1]])
    dtype = rnd.choice([0, 1, 2, 3, 4, 99])
    size = rnd.choice([0, n * 64, n * 4 * 64, 7])
    try:
        return pb.Tensor(dtype=dtype, shape=shape, data=_junk(rnd, size))
    except (
        ValueError
    ):  # protobuf refuses out-of-range int64: send a plain one, the raw categories cover the rest
        return pb.Tensor(dtype=dtype, shape=[n], data=_junk(rnd, size))


def _decode_request(rnd: random.Random, t: Target) -> pb.DecodeRequest:
    n = rnd.choice([0, 1, 3, 40])
    payloads = _payloads(rnd, t, n)
    count = rnd.choice([n, n, n + 1, max(n - 1, 0), 65536, 2**32 - 1])
    sizes = [len(p) for p in payloads] if t.item_bytes is None else []
    if rnd.random() < 0.3:
        sizes = [
            rnd.choice((0, 1, 2**32 - 1))
            for _ in range(rnd.choice((0, n, 65536 if rnd.random() < 0.1 else 3)))
        ]
    batch = pb.CodeBatch(
        bundle_id=rnd.choice([t.bundle_id, t.bundle_id, "", "dense-000000000000", _string(rnd, t)]),
        count=count,
        format=rnd.choice([t.format, t.format, "affine8", "float16", "", "nonsense"]),
        data=b"".join(payloads),
        sizes=sizes,
    )
    req = pb.DecodeRequest(codes=batch, reconstruction_format=rnd.choice([0, 1, 2, 3, -5, 2**31 - 1]))
    if rnd.random() < 0.4:
        req.originals.CopyFrom(_tensor(rnd, t, n))
    if rnd.random() < 0.1:
        req.ClearField("codes")
    return req


def _ingest_request(rnd: random.Random, t: Target) -> pb.IngestRequest:
    n = rnd.choice([0, 1, 5, 30])
    items = []
    for k, p in enumerate(_payloads(rnd, t, n)):
        item = pb.IngestItem(
            payload=p,
            bundle_id=rnd.choice(["", "", t.bundle_id, "other-bundle"]),
            captured_at_ms=rnd.choice([0, k, -1, 2**62, 2**63 - 1]),
        )
        if rnd.random() < 0.5:
            item.item_seq = rnd.choice([k, k, 0, 2**64 - 1])
        if rnd.random() < 0.5 or not item.HasField("item_seq"):
            item.item_id = rnd.choice([f"fuzz-{rnd.randrange(10**6)}", "", "x" * 300, "dup", "a\x01b"])
        items.append(item)
    return pb.IngestRequest(
        device_id=rnd.choice([*t.devices, "", "other-device", "x" * 300, "d\x00"]),
        bundle_id=rnd.choice([t.bundle_id, "", "unknown-bundle"]),
        item_id_prefix=rnd.choice(["", "p#", "x" * 300]),
        captured_base_ms=rnd.choice([0, 1_700_000_000_000, -5, 2**63 - 1]),
        items=items,
    )


def _fetch_request(rnd: random.Random, t: Target) -> pb.FetchRequest:
    req = pb.FetchRequest(
        device_id=rnd.choice([*t.devices, "", "other-device", "\x01"]),
        since_ms=rnd.choice([0, -1, 5, 2**63 - 1]),
        until_ms=rnd.choice([0, -1, 3, 2**62]),
        codes_only=rnd.random() < 0.5,
        reconstruction_format=rnd.choice([0, 1, 2, 7]),
        limit=rnd.choice([0, 1, 100_001, 2**32 - 1]),
    )
    if rnd.random() < 0.5:
        req.item_ids.extend(rnd.choice([["fuzz-1"], [""], ["x" * 300], ["a"] * 20000]))
    return req


def _invalid_utf8(rnd: random.Random, t: Target) -> bytes:
    """A message whose string field (field 1 of most requests) holds bytes that are not UTF-8."""
    bad = rnd.choice([b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"ok\x80"])
    return _field(1, bad) + _field(2, _field(1, bad))


def _raw_variant(rnd: random.Random, good: bytes) -> bytes:
    choice = rnd.randrange(5)
    if choice == 0:
        return _junk(rnd)
    if choice == 1:
        return good[: rnd.randrange(len(good) + 1)]  # truncated message
    if choice == 2:
        return good + b"\xff\xff\xff"
    if choice == 3:
        return put_varint(rnd.randrange(1, 2**29) << 3 | rnd.choice((0, 1, 2, 3, 4, 5, 6, 7))) + _junk(rnd, 8)
    return struct.pack("<I", rnd.randrange(2**32)) * rnd.randrange(1, 8)


def hostile_call(rnd: random.Random, t: Target, with_token: bool | None = None) -> Call:
    """One malformed (or, interleaved, valid) call to a method chosen at random."""
    method = rnd.choice(list(KINDS))
    kind = KINDS[method]
    token = t.token if (with_token if with_token is not None else rnd.random() < 0.85) else None
    metadata = [("authorization", f"Bearer {token}")] if token else None
    if rnd.random() < 0.05 and t.token:
        metadata = [
            (
                "authorization",
                rnd.choice(["Bearer ", "Basic x", "Bearer " + "y" * 5000, f"bearer {t.token}x"]),
            )
        ]

    def message() -> bytes:
        if method in (DECODE, DECODE_STREAM):
            good = _decode_request(rnd, t).SerializeToString()
        elif method == INGEST:
            good = _ingest_request(rnd, t).SerializeToString()
        elif method == FETCH:
            good = _fetch_request(rnd, t).SerializeToString()
        elif method == LIST_STORED:
            good = pb.ListStoredRequest(device_id=rnd.choice([*t.devices, "", "x" * 300])).SerializeToString()
        else:
            good = b""
        r = rnd.random()
        if r < 0.25:
            return _raw_variant(rnd, good)
        if r < 0.35:
            return _invalid_utf8(rnd, t)
        return good

    n = rnd.choice((1, 1, 2, 5)) if kind == "stream" else 1
    return Call(method, kind, [message() for _ in range(n)], metadata)


def send(channel, call: Call, timeout: float = 20.0) -> str:
    """Make the call over a grpc.Channel with raw bytes; the status name the client saw."""
    import grpc

    try:
        if call.kind == "unary":
            channel.unary_unary(call.method)(call.bodies[0], metadata=call.metadata, timeout=timeout)
        elif call.kind == "unary_stream":
            for _ in channel.unary_stream(call.method)(
                call.bodies[0], metadata=call.metadata, timeout=timeout
            ):
                pass
        else:
            for _ in channel.stream_stream(call.method)(
                iter(call.bodies), metadata=call.metadata, timeout=timeout
            ):
                pass
    except grpc.RpcError as exc:
        return exc.code().name
    return "OK"

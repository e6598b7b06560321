"""The Storage gRPC service: durable Ingest, Fetch and ListStored over a Store; validation, tenancy, decode-on-read.

Ack semantics: each IngestRequest gets exactly one IngestAck, in request order,
sent only after the request's items are committed in one transaction. A
request the server cannot take (bad field, conflicting item id) aborts the
stream with a status naming the field; nothing of that request is stored, and
everything acknowledged before it stays stored.

Tenancy (cloud/tenancy.py): a token writes and reads only the devices it is
bound to; an operator token reads all and writes none; anything else is
PERMISSION_DENIED. Items of other devices are never returned, not even as
"exists": a Fetch by id reports them missing.

Items for bundles this server does not hold are accepted and stored: during
a rollout a device can be ahead of a replica, and refusing would leave data
stuck on the device. Fetch then reports them with an error instead of a
reconstruction. Items for held bundles are checked against the manifest
(size, symbols, entropy-coded stream) before they are stored.

Store calls run on the store's thread pool and validation and decoding on the
decode pool, so a slow database or a large fetch never stalls other calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc
import numpy as np

from latent_codec import framing
from latent_codec.codec import from_tensor
from latent_codec.errors import PayloadError
from latent_codec.rejection import REJECTED_ITEM_KEY
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

from . import tenancy
from .audit import Audit
from .bundles import BundleRegistry, LoadedBundle
from .decoding_service import FORMATS, reconstruction_tensor
from .limits import InFlight, Limits, OverBudget
from .metrics import CodecMetrics
from .store import ItemConflict, NewItem, Store, StoredRecord, StoreError, StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_ID_CHARS = 256
MAX_ITEMS_PER_REQUEST = 10_000
MAX_PAYLOAD_BYTES = 1 << 20
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: what every store and datetime library can hold
DEFAULT_FETCH_LIMIT = 10_000
MAX_FETCH_LIMIT = 100_000
FETCH_MESSAGE_ITEMS = 256  # items per FetchResponse message at most ...
FETCH_MESSAGE_BYTES = 8 << 20  # ... and about this many bytes (large images: fewer items per message)


def fetch_chunks(costs: list[int], max_items: int, budget: int) -> list[tuple[int, int]]:
    """Consecutive [a, b) ranges of items to decode together: at most max_items, and at most `budget` decoded
    bytes unless one item alone is larger (it then goes alone)."""
    chunks: list[tuple[int, int]] = []
    a, total = 0, 0
    for k, cost in enumerate(costs):
        if k > a and (k - a >= max_items or total + cost > budget):
            chunks.append((a, k))
            a, total = k, 0
        total += cost
    if a < len(costs):
        chunks.append((a, len(costs)))
    return chunks


class Refused(Exception):
    """A request the service refuses: the status, the message, and the refused item's index if one is at fault."""

    def __init__(self, code: grpc.StatusCode, message: str, item: int | None = None):
        super().__init__(message)
        self.code, self.item = code, item


def _now_ms() -> int:
    return int(time.time() * 1000)


def _check_id(value: str, field: str) -> str | None:
    if not value:
        return f"{field} is empty"
    if len(value) > MAX_ID_CHARS:
        return f"{field} is {len(value)} characters; the limit is {MAX_ID_CHARS}"
    if not value.isprintable():
        return f"{field} {value[:40]!r} contains control characters"
    return None


def _denied(principal: tenancy.Principal, verb: str, device_id: str) -> Refused:
    return Refused(
        grpc.StatusCode.PERMISSION_DENIED,
        f"{principal.describe()} may not {verb} items of device {device_id[:80]!r}",
    )


def ingest_items(
    req: pb.IngestRequest, n: int, registry: BundleRegistry, limits: Limits, audit: Audit | None = None
) -> list[NewItem]:
    """Validated items of the n-th request of a stream; Refused (INVALID_ARGUMENT) naming the field and item.

    A bundle named "name" or "name@version" is stored under its content id. Items carrying their original
    (field audit) are decoded and their error added to the bundle's audit figures; originals are not stored.
    """

    def bad(msg: str, item: int | None = None) -> Refused:
        return Refused(grpc.StatusCode.INVALID_ARGUMENT, f"request {n}: {msg}", item)

    if not req.items:
        raise bad("items is empty: send at least one item")
    if len(req.items) > MAX_ITEMS_PER_REQUEST:
        raise bad(f"{len(req.items)} items in one request; the limit is {MAX_ITEMS_PER_REQUEST}")
    if req.captured_base_ms < 0:
        raise bad(f"captured_base_ms is negative ({req.captured_base_ms})")
    seen: set[str] = set()
    by_bundle: dict[str, list[int]] = {}
    bundle_of = [it.bundle_id or req.bundle_id for it in req.items]  # empty: the request's bundle
    ids = []
    for k, it in enumerate(req.items):
        where = f"items[{k}]"
        if it.HasField("item_seq") and it.item_id:
            raise bad(f"{where} gives both item_id and item_seq: give one", k)
        item_id = framing.item_id(req, it)  # compact ids: the request's prefix + the decimal number
        for value, field in ((item_id, "item_id"), (bundle_of[k], "bundle_id")):
            problem = _check_id(value, f"{where}.{field}")
            if problem:
                raise bad(
                    problem + (" (and the request's bundle_id is empty)" if field == "bundle_id" else ""), k
                )
        if it.name and (len(it.name) > MAX_ID_CHARS or not it.name.isprintable()):
            raise bad(f"{where}.name must be printable and at most {MAX_ID_CHARS} characters", k)
        if item_id in seen:
            raise bad(f"{where}.item_id {item_id!r} appears twice in this request", k)
        seen.add(item_id)
        ids.append(item_id)
        # An empty payload is not refused here: an entropy-coded code of near-certain symbols takes zero
        # bytes. Payloads of held bundles are checked against their format below.
        if len(it.payload) > MAX_PAYLOAD_BYTES:
            raise bad(f"{where}.payload is {len(it.payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}", k)
        if it.captured_at_ms < 0:
            raise bad(f"{where}.captured_at_ms is negative ({it.captured_at_ms})", k)
        if req.captured_base_ms + it.captured_at_ms > MAX_TIME_MS:
            raise bad(f"{where}.captured_at_ms + captured_base_ms is past the year 9999", k)
        by_bundle.setdefault(bundle_of[k], []).append(k)
    for bundle_id, idx in by_bundle.items():
        lb = registry.get(bundle_id)
        if lb is None:
            for k in idx:
                if req.items[k].HasField("original"):
                    raise bad(
                        f"items[{k}].original is sent for audit, but bundle {bundle_id[:80]!r} is not held", k
                    )
            continue  # stored as is; see the module docstring
        for k in idx:
            bundle_of[k] = lb.bundle_id  # by content id, whatever name the request used
        codec = lb.codec
        if codec.item_bytes is not None:
            for k in idx:
                size = len(req.items[k].payload)
                if size != codec.item_bytes:
                    raise bad(
                        f"items[{k}].payload is {size} bytes; bundle {bundle_id} ({codec.format}) "
                        f"needs exactly {codec.item_bytes}",
                        k,
                    )
        payloads = [req.items[k].payload for k in idx] if codec.input.any_size else None
        try:  # validating decodes the symbols: same budget
            limits.check(codec, len(idx), f"request {n}", payloads)
        except PayloadError as exc:  # a size header that does not parse
            raise bad(f"items[{idx[0]}..]: {exc}", idx[0]) from None
        first = codec.first_invalid([req.items[k].payload for k in idx])
        if first is not None:
            k = idx[first]
            raise bad(
                f"items[{k}].payload does not fit bundle {bundle_id} ({codec.format}): "
                f"{codec.problem(req.items[k].payload)}",
                k,
            )
        audited = [k for k in idx if req.items[k].HasField("original")]
        if audited:
            audit_items(req, audited, codec, audit, bad)
    return [
        NewItem(
            req.device_id,
            ids[k],
            bundle_of[k],
            bytes(it.payload),
            int(req.captured_base_ms + it.captured_at_ms),
            it.name,
        )
        for k, it in enumerate(req.items)
    ]


def audit_items(req: pb.IngestRequest, idx: list[int], codec, audit: Audit | None, bad) -> None:
    """Decode the audited items of one bundle and add their error to its figures (originals are not stored)."""
    originals = []
    for k in idx:
        try:
            original = from_tensor(req.items[k].original, f"items[{k}].original")
        except PayloadError as exc:
            raise bad(str(exc), k) from None
        want = (
            codec.output_shapes([req.items[k].payload])[0].tolist()
            if codec.input.any_size
            else codec.input.shape
        )
        if list(original.shape) != list(want) or original.dtype.name != codec.input.dtype:
            raise bad(
                f"items[{k}].original is {list(original.shape)} {original.dtype.name}; its payload decodes to "
                f"{list(want)} {codec.input.dtype} (bundle {codec.bundle_id})",
                k,
            )
        originals.append(original)
    if audit is not None:
        if codec.input.any_size:  # items of several sizes: one at a time
            errors = [float(codec.squared_error(o[None], codec.decode([req.items[k].payload]))[0])
                      for k, o in zip(idx, originals)]  # fmt: skip
        else:
            rec = codec.decode([req.items[k].payload for k in idx])
            errors = codec.squared_error(np.stack(originals), rec).tolist()
        audit.add(codec.bundle_id, errors)


def decode_stored(
    lb: LoadedBundle, records: list[StoredRecord], out: list[pb.StoredItem], fmt: int, limits: Limits
) -> None:
    """Decode records of one bundle into out (the matching StoredItems), in budget-sized chunks; a payload that
    does not decode gets an error of its own instead of hiding the others."""
    codec = lb.codec
    if not records:
        return
    if codec.input.any_size and len(records) > 1:  # items of any size: each alone, each within the budget
        for r, o in zip(records, out):
            decode_stored(lb, [r], [o], fmt, limits)
        return
    try:
        per_item = int(codec.item_costs([records[0].payload])[0][0])  # one size per call (any-size: one item)
    except PayloadError as exc:
        out[0].error = f"cannot decode with bundle {lb.bundle_id}: {exc}"
        return
    if per_item > limits.max_decode_bytes:
        for item in out:
            item.error = (
                f"one item decodes to {per_item:,} bytes, over the {limits.max_decode_bytes:,}-byte budget"
            )
        return
    step = max(1, min(1024, limits.max_decode_bytes // per_item))
    for s in range(0, len(records), step):
        part, dest = records[s : s + step], out[s : s + step]
        try:
            rec = codec.decode([r.payload for r in part], unit=True, chunk=limits.decode_chunk)
        except Exception:
            if len(part) > 1:
                for r, o in zip(part, dest):
                    decode_stored(lb, [r], [o], fmt, limits)
                continue
            dest[0].error = f"cannot decode with bundle {lb.bundle_id}: {codec.problem(part[0].payload)}"
            continue
        for j, item in enumerate(dest):
            t = reconstruction_tensor(codec, rec[j : j + 1], fmt)
            if t is not None:
                item.reconstruction.CopyFrom(t)


class StorageService(pb_grpc.StorageServicer):
    def __init__(
        self,
        store: Store,
        registry: BundleRegistry,
        store_executor: Executor,
        decode_executor: Executor,
        limits: Limits | None = None,
        metrics: CodecMetrics | None = None,
        audit: Audit | None = None,
    ):
        self.audit = audit
        self.store = store
        self.registry = registry
        self.store_executor = store_executor
        self.decode_executor = decode_executor
        self.limits = limits or Limits()
        self.metrics = metrics
        # Fetch replies from decoding until their client takes them: one request's budget across all Fetch calls
        # (as DecodeStream's, cloud/decoding_service.py), so clients that do not read cannot hold the memory.
        self.replies = InFlight(self.limits.max_decode_bytes)

    def close(self) -> None:
        self.store.close()

    async def _on(self, executor: Executor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    async def _store(self, fn: Callable[..., T], *args: Any) -> T:
        """A store call on the store's threads; store failures become Refused with their status."""
        try:
            return await self._on(self.store_executor, fn, *args)
        except ItemConflict:
            raise
        except StoreUnavailable as exc:
            log.warning("store unavailable: %s", exc)
            raise Refused(
                grpc.StatusCode.UNAVAILABLE, f"the store is unavailable, retry later ({exc})"
            ) from None
        except StoreError as exc:
            log.error("store failed: %s", exc)
            raise Refused(grpc.StatusCode.INTERNAL, f"the store failed: {exc}") from None

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext, exc: Refused) -> None:
        if exc.item is not None:  # the client can set this one item aside and send the rest
            context.set_trailing_metadata(((REJECTED_ITEM_KEY, str(exc.item)),))
        await context.abort(exc.code, str(exc))

    # ---- ingest -------------------------------------------------------------
    async def Ingest(self, request_iterator: AsyncIterator[pb.IngestRequest], context):
        principal = tenancy.current()
        n = 0
        async for req in request_iterator:
            try:
                problem = _check_id(req.device_id, "device_id")
                if problem:
                    raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"request {n}: {problem}")
                if not principal.may_write(req.device_id):
                    raise _denied(principal, "write", req.device_id)
                try:
                    items = await self._on(
                        self.decode_executor, ingest_items, req, n, self.registry, self.limits, self.audit
                    )
                except OverBudget as exc:
                    raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
                t0 = time.perf_counter()
                try:
                    dup = await self._store(self.store.put_many, items, _now_ms())
                except ItemConflict as exc:
                    k = next((k for k, it in enumerate(items) if it.item_id == exc.item_id), None)
                    raise Refused(grpc.StatusCode.ALREADY_EXISTS, f"request {n}: {exc}", k) from None
            except Refused as exc:
                await self._abort(context, exc)
            if self.metrics is not None:
                self.metrics.store_commit_seconds.observe(time.perf_counter() - t0)
                self.metrics.ingested_items.inc(len(items))
                self.metrics.ingested_duplicates.inc(dup)
                self.metrics.ingested_bytes.inc(sum(len(it.payload) for it in items))
            yield framing.ack(req, dup)  # the items named the way the request named them
            n += 1

    # ---- fetch --------------------------------------------------------------
    async def _records(self, req: pb.FetchRequest) -> tuple[list[StoredRecord], list[str]]:
        def bad(msg: str) -> Refused:
            return Refused(grpc.StatusCode.INVALID_ARGUMENT, msg)

        principal = tenancy.current()
        if req.reconstruction_format not in FORMATS:
            raise bad(f"reconstruction_format {req.reconstruction_format} is unknown")
        if req.limit > MAX_FETCH_LIMIT:
            raise bad(f"limit {req.limit} exceeds the maximum of {MAX_FETCH_LIMIT}")
        limit = req.limit or DEFAULT_FETCH_LIMIT
        if req.item_ids:
            if req.since_ms or req.until_ms:
                raise bad("give either item_ids or a time range (since_ms/until_ms), not both")
            if len(req.item_ids) > limit:
                raise bad(f"{len(req.item_ids)} item_ids; the limit is {limit}")
            for k, item_id in enumerate(req.item_ids):
                problem = _check_id(item_id, f"item_ids[{k}]")
                if problem:
                    raise bad(problem)
            if req.device_id:
                problem = _check_id(req.device_id, "device_id")
                if problem:
                    raise bad(problem)
                if not principal.may_read(req.device_id):
                    raise _denied(principal, "read", req.device_id)
            records = await self._store(self.store.get, list(req.item_ids), req.device_id)
            if not principal.reads_all:  # other devices' items do not exist for this token
                records = [r for r in records if principal.may_read(r.device_id)]
            found = {r.item_id for r in records}
            return records, [i for i in dict.fromkeys(req.item_ids) if i not in found]
        problem = _check_id(req.device_id, "device_id")
        if problem:
            raise bad(f"{problem}: give item_ids, or a device_id and optionally a time range")
        if not principal.may_read(req.device_id):
            raise _denied(principal, "read", req.device_id)
        if req.since_ms < 0 or req.until_ms < 0:
            raise bad("since_ms and until_ms must not be negative")
        if req.until_ms and req.until_ms <= req.since_ms:
            raise bad(f"until_ms {req.until_ms} is not after since_ms {req.since_ms}")
        return await self._store(self.store.query, req.device_id, req.since_ms, req.until_ms, limit), []

    async def _stored_items(self, records: list[StoredRecord], req: pb.FetchRequest) -> list[pb.StoredItem]:
        out = [
            pb.StoredItem(
                item_id=r.item_id,
                device_id=r.device_id,
                bundle_id=r.bundle_id,
                captured_at_ms=r.captured_at_ms,
                stored_at_ms=r.stored_at_ms,
                payload=r.payload,
                name=r.name,
            )
            for r in records
        ]
        if req.codes_only:
            return out
        by_bundle: dict[str, list[int]] = {}
        for k, r in enumerate(records):
            by_bundle.setdefault(r.bundle_id, []).append(k)
        for bundle_id, idx in by_bundle.items():
            lb = self.registry.get(bundle_id)
            if lb is None:
                for k in idx:
                    out[
                        k
                    ].error = f"bundle {bundle_id} is not held by this server; the stored payload is returned undecoded"
                continue
            await self._on(
                self.decode_executor,
                decode_stored,
                lb,
                [records[k] for k in idx],
                [out[k] for k in idx],
                req.reconstruction_format,
                self.limits,
            )
        return out

    def _decoded_bytes(self, record: StoredRecord, req: pb.FetchRequest) -> int:
        """What decoding this stored item will hold (float32 bytes; 0 when it is not decoded here)."""
        lb = None if req.codes_only else self.registry.get(record.bundle_id)
        if lb is None:
            return 0
        try:
            return int(lb.codec.item_costs([record.payload])[0][0])
        except PayloadError:
            return 0  # decoding will say what is wrong with it

    async def Fetch(self, request: pb.FetchRequest, context):
        try:
            records, missing = await self._records(request)
        except Refused as exc:
            await self._abort(context, exc)
        if not records:
            yield pb.FetchResponse(missing_ids=missing)
            return
        first = True
        costs = [self._decoded_bytes(r, request) for r in records]
        for a, b in fetch_chunks(costs, FETCH_MESSAGE_ITEMS, self.limits.max_decode_bytes):
            # Decoded a budget at a time, held until its messages are written: a client that does not read
            # holds one budget, not every item it asked for.
            async with self.replies.hold(sum(costs[a:b])):
                pending: list[pb.StoredItem] = []
                size = 0
                for item in await self._stored_items(records[a:b], request):
                    item_size = item.ByteSize()
                    if pending and (
                        len(pending) >= FETCH_MESSAGE_ITEMS or size + item_size > FETCH_MESSAGE_BYTES
                    ):
                        yield pb.FetchResponse(items=pending, missing_ids=missing if first else [])
                        first, pending, size = False, [], 0
                    pending.append(item)
                    size += item_size
                yield pb.FetchResponse(items=pending, missing_ids=missing if first else [])
                first = False

    # ---- listing ------------------------------------------------------------
    async def ListStored(self, request: pb.ListStoredRequest, context):
        principal = tenancy.current()
        try:
            if request.device_id:
                problem = _check_id(request.device_id, "device_id")
                if problem:
                    raise Refused(grpc.StatusCode.INVALID_ARGUMENT, problem)
                if not principal.may_read(request.device_id):
                    raise _denied(principal, "read", request.device_id)
            elif not principal.reads_all and not principal.devices:
                raise Refused(
                    grpc.StatusCode.PERMISSION_DENIED, f"{principal.describe()} may not read stored items"
                )
            rows = await self._store(self.store.summaries, request.device_id)
        except Refused as exc:
            await self._abort(context, exc)
        if not principal.reads_all:
            rows = [r for r in rows if principal.may_read(r.device_id)]
        resp = pb.ListStoredResponse(
            summaries=[
                pb.StoredSummary(
                    device_id=r.device_id,
                    bundle_id=r.bundle_id,
                    items=r.items,
                    payload_bytes=r.payload_bytes,
                    bundle_available=self.registry.get(r.bundle_id) is not None,
                )
                for r in rows
            ]
        )
        resp.total_items = sum(r.items for r in rows)
        resp.total_payload_bytes = sum(r.payload_bytes for r in rows)
        return resp

"""The Storage gRPC service: durable Ingest, Fetch and ListStored over a Store.

Ack semantics: each IngestRequest gets exactly one IngestAck, in request order, sent only after the
request's items are validated (cloud/ingest_validation.py: the bundle is held, the payloads decode)
and committed in one transaction. A request the server cannot take aborts the stream with a status
naming the field, and the refused item's index when one is at fault (the edge quarantines it);
nothing of that request is stored, and everything acknowledged before it stays stored. A store
that fails answers UNAVAILABLE, or RESOURCE_EXHAUSTED when it is out of space: both retryable, so
devices keep their items spooled and resend.

Tenancy (cloud/tenancy.py): a token writes and reads only the devices it is bound to; an operator
token reads all and writes none; anything else is PERMISSION_DENIED. Items of other devices are
never returned, not even as "exists": a Fetch by id reports them missing.

Store calls run on the store's thread pool and validation and decoding (cloud/fetch_decode.py) on the
decode pool, within the budget all decoding shares, so a slow database or a large fetch never stalls
other calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc

from latent_codec import framing
from latent_codec.rejection import REJECTED_ITEM_KEY
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

from . import tenancy
from .audit import Audit
from .bundles import BundleRegistry
from .decoding_service import FORMATS
from .fetch_decode import FETCH_MESSAGE_BYTES, FETCH_MESSAGE_ITEMS, decode_stored, fetch_chunks, price
from .ingest_validation import Plan, Refused, check_id, plan_ingest, validate_payloads
from .interceptors.wrapping import WriteTimeout, end_unread, write_within
from .limits import Cost, DecodeBudget, InFlight, Limits
from .metrics import CodecMetrics
from .search import plan_search, query_code, search_response, stored_item, with_binary_codes
from .store import ItemConflict, NewItem, Store, StoredRecord, StoreError, StoreFull, StoreUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_FETCH_LIMIT = 10_000
MAX_FETCH_LIMIT = 100_000


def _now_ms() -> int:
    return int(time.time() * 1000)


def _denied(principal: tenancy.Principal, verb: str, device_id: str) -> Refused:
    return Refused(
        grpc.StatusCode.PERMISSION_DENIED,
        f"{principal.describe()} may not {verb} items of device {device_id[:80]!r}",
    )


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
        in_flight: DecodeBudget | None = None,
        write_timeout: float = 0.0,
    ):
        self.write_timeout = write_timeout  # a client that does not take a reply within it has its call ended
        self.audit = audit
        self.store = store
        self.registry = registry
        self.store_executor = store_executor
        self.decode_executor = decode_executor
        self.limits = limits or Limits()
        self.metrics = metrics
        self.in_flight = in_flight or DecodeBudget(self.limits, self.limits.decode_runs)
        # Fetch replies from decoding until their client takes them: one request's budget across all Fetch calls
        # (as DecodeStream's, cloud/decoding_service.py), so clients that do not read cannot hold the memory.
        self.replies = InFlight(self.limits.max_decode_bytes)

    def close(self) -> None:
        self.store.close()

    async def _on(self, executor: Executor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)

    async def _store(self, fn: Callable[..., T], *args: Any) -> T:
        """A store call on the store's threads; store failures become Refused with a retryable status."""
        try:
            return await self._on(self.store_executor, fn, *args)
        except ItemConflict:
            raise
        except StoreFull as exc:
            log.error("store out of space: %s", exc)
            raise Refused(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"the store is out of space, retry later ({exc})"
            ) from None
        except StoreUnavailable as exc:
            log.warning("store unavailable: %s", exc)
            raise Refused(
                grpc.StatusCode.UNAVAILABLE, f"the store is unavailable, retry later ({exc})"
            ) from None
        except StoreError as exc:
            log.error("store failed: %s", exc)
            raise Refused(grpc.StatusCode.UNAVAILABLE, f"the store failed, retry later ({exc})") from None

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext, exc: Refused) -> None:
        if exc.item is not None:  # the client can set this one item aside and send the rest
            context.set_trailing_metadata(((REJECTED_ITEM_KEY, str(exc.item)),))
        await context.abort(exc.code, str(exc))

    # ---- ingest -------------------------------------------------------------
    def _validated_items(self, req: pb.IngestRequest, n: int, plan: Plan) -> list[NewItem]:
        """The request's items, validated (their audit errors kept), with the binary codes of bundles that carry
        them (cloud/search.py)."""
        return with_binary_codes(validate_payloads(req, n, plan, self.audit), self.registry)

    async def Ingest(self, request_iterator: AsyncIterator[pb.IngestRequest], context):
        principal = tenancy.current()
        n = 0
        async for req in request_iterator:
            try:
                problem = check_id(req.device_id, "device_id")
                if problem:
                    raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"request {n}: {problem}")
                if not principal.may_write(req.device_id):
                    raise _denied(principal, "write", req.device_id)
                plan = plan_ingest(req, n, self.registry, self.limits)
                async with self.in_flight.hold(plan.cost):
                    items = await self._on(self.decode_executor, self._validated_items, req, n, plan)
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
            try:  # the items named the way the request named them
                await write_within(context, framing.ack(req, dup), self.write_timeout)
            except WriteTimeout as exc:
                await end_unread(context, exc)  # nothing is held while an ack is written
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
                problem = check_id(item_id, f"item_ids[{k}]")
                if problem:
                    raise bad(problem)
            if req.device_id:
                problem = check_id(req.device_id, "device_id")
                if problem:
                    raise bad(problem)
                if not principal.may_read(req.device_id):
                    raise _denied(principal, "read", req.device_id)
            records = await self._store(self.store.get, list(req.item_ids), req.device_id)
            if not principal.reads_all:  # other devices' items do not exist for this token
                records = [r for r in records if principal.may_read(r.device_id)]
            found = {r.item_id for r in records}
            return records, [i for i in dict.fromkeys(req.item_ids) if i not in found]
        problem = check_id(req.device_id, "device_id")
        if problem:
            raise bad(f"{problem}: give item_ids, or a device_id and optionally a time range")
        if not principal.may_read(req.device_id):
            raise _denied(principal, "read", req.device_id)
        if req.since_ms < 0 or req.until_ms < 0:
            raise bad("since_ms and until_ms must not be negative")
        if req.until_ms and req.until_ms <= req.since_ms:
            raise bad(f"until_ms {req.until_ms} is not after since_ms {req.since_ms}")
        return await self._store(self.store.query, req.device_id, req.since_ms, req.until_ms, limit), []

    async def _stored_items(
        self, records: list[StoredRecord], prices: list[Cost | str], req: pb.FetchRequest
    ) -> list[pb.StoredItem]:
        out = [stored_item(r) for r in records]
        by_bundle: dict[str, list[int]] = {}
        for k, (r, p) in enumerate(zip(records, prices)):
            if isinstance(p, str):
                out[k].error = p
            elif not req.codes_only:
                by_bundle.setdefault(r.bundle_id, []).append(k)
        for bundle_id, idx in by_bundle.items():
            lb = self.registry.get(bundle_id)
            if lb is None:  # removed since it was priced
                for k in idx:
                    out[
                        k
                    ].error = f"bundle {bundle_id} is not held by this server; the stored payload is returned undecoded"
                continue
            chunk = min(p.run_items for k in idx if isinstance(p := prices[k], Cost))
            await self._on(
                self.decode_executor,
                decode_stored,
                lb.codec,
                [records[k] for k in idx],
                [out[k] for k in idx],
                req.reconstruction_format,
                chunk,
            )
        return out

    async def Fetch(self, request: pb.FetchRequest, context):
        try:
            records, missing = await self._records(request)
        except Refused as exc:
            await self._abort(context, exc)
        if not records:
            await context.write(pb.FetchResponse(missing_ids=missing))
            return
        try:
            await self._fetch(request, records, missing, context)
        except WriteTimeout as exc:  # out of the budgets' blocks: what this call held is back already
            await end_unread(context, exc)

    async def _fetch(
        self,
        request: pb.FetchRequest,
        records: list[StoredRecord],
        missing: list[str],
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Fetch's items, a budget at a time (WriteTimeout when the client stops reading)."""
        first = True
        prices = [price(self.registry, r, request, self.limits) for r in records]
        costs = [p.nbytes if isinstance(p, Cost) else 0 for p in prices]
        for a, b in fetch_chunks(costs, FETCH_MESSAGE_ITEMS, self.limits.max_decode_bytes):
            held = [p for p in prices[a:b] if isinstance(p, Cost)]
            cost = Cost(sum(p.nbytes for p in held), sum(p.seconds for p in held))
            # Decoded a budget at a time within the budget all decoding shares, held until its messages are
            # written: a client that does not read holds one budget, not every item it asked for.
            async with self.replies.hold(cost.nbytes):
                async with self.in_flight.hold(cost):
                    items = await self._stored_items(records[a:b], prices[a:b], request)
                pending: list[pb.StoredItem] = []
                size = 0
                for item in items:
                    item_size = item.ByteSize()
                    if pending and (
                        len(pending) >= FETCH_MESSAGE_ITEMS or size + item_size > FETCH_MESSAGE_BYTES
                    ):
                        await self._send(
                            context, pb.FetchResponse(items=pending, missing_ids=missing if first else [])
                        )
                        first, pending, size = False, [], 0
                    pending.append(item)
                    size += item_size
                await self._send(
                    context, pb.FetchResponse(items=pending, missing_ids=missing if first else [])
                )
                first = False

    async def _send(self, context: grpc.aio.ServicerContext, message: pb.FetchResponse) -> None:
        await write_within(context, message, self.write_timeout)

    # ---- listing ------------------------------------------------------------
    async def ListStored(self, request: pb.ListStoredRequest, context):
        principal = tenancy.current()
        try:
            if request.device_id:
                problem = check_id(request.device_id, "device_id")
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

    # ---- search -------------------------------------------------------------
    async def Search(self, request: pb.SearchRequest, context):
        """Semantic-hashing search (cloud/search.py): validated, the query priced like a decode, then the store's
        multi-index (or scan)."""
        try:
            plan = plan_search(request, self.registry, tenancy.current(), self.limits)
            async with self.in_flight.hold(plan.cost):
                query = await self._on(self.decode_executor, query_code, plan)
            hits, searched = await self._store(
                self.store.search, plan.bundle_id, plan.devices, query, plan.limit
            )
        except Refused as exc:
            await self._abort(context, exc)
        if self.metrics is not None:
            self.metrics.search_items.inc(searched)
        return search_response(hits, searched, plan.spec.bits)

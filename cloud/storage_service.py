"""The Storage gRPC service: durable Ingest, Fetch and ListStored over a Store; validation, status codes, decode-on-read.

Ack semantics: each IngestRequest gets exactly one IngestAck, in request order,
sent only after the request's items are committed in one transaction. A
request the server cannot take (bad field, conflicting item id) aborts the
stream with a status naming the field; nothing of that request is stored, and
everything acknowledged before it stays stored.

Items for bundles this server does not hold are accepted and stored: during
a rollout a device can be ahead of a replica, and refusing would leave data
stuck on the device. Fetch then reports them with an error instead of a
reconstruction. Items for held bundles are checked against the manifest
(size, symbols, entropy-coded stream) before they are stored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import grpc

from latent_codec import framing
from latent_codec.rejection import REJECTED_ITEM_KEY
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

from .bundles import BundleRegistry, LoadedBundle
from .decoding_service import FORMATS, reconstruction_tensor
from .store import ItemConflict, NewItem, Store, StoredRecord, StoreError, StoreUnavailable, open_store

log = logging.getLogger(__name__)

MAX_ID_CHARS = 256
MAX_ITEMS_PER_REQUEST = 10_000
MAX_PAYLOAD_BYTES = 1 << 20
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: what every store and datetime library can hold
DEFAULT_FETCH_LIMIT = 10_000
MAX_FETCH_LIMIT = 100_000
FETCH_CHUNK = 256  # items per FetchResponse message
DECODE_CHUNK = 1024  # items per decoder run


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


class StorageService(pb_grpc.StorageServicer):
    def __init__(self, store: Store, registry: BundleRegistry):
        self.store = store
        self.registry = registry

    @classmethod
    def from_url(cls, url: str, registry: BundleRegistry) -> StorageService:
        return cls(open_store(url), registry)

    def close(self) -> None:
        self.store.close()

    # ---- ingest -------------------------------------------------------------
    def _items_of(self, req: pb.IngestRequest, n: int, context) -> list[NewItem]:
        """Validated items of the n-th request of a stream; aborts with INVALID_ARGUMENT naming the field."""

        def bad(msg: str, item: int | None = None):
            if item is not None:  # the client can set this one item aside and send the rest
                context.set_trailing_metadata(((REJECTED_ITEM_KEY, str(item)),))
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"request {n}: {msg}")

        problem = _check_id(req.device_id, "device_id")
        if problem:
            bad(problem)
        if not req.items:
            bad("items is empty: send at least one item")
        if len(req.items) > MAX_ITEMS_PER_REQUEST:
            bad(f"{len(req.items)} items in one request; the limit is {MAX_ITEMS_PER_REQUEST}")
        if req.captured_base_ms < 0:
            bad(f"captured_base_ms is negative ({req.captured_base_ms})")
        seen: set[str] = set()
        by_bundle: dict[str, list[int]] = {}
        bundle_of = [it.bundle_id or req.bundle_id for it in req.items]  # empty: the request's bundle
        ids = []
        for k, it in enumerate(req.items):
            where = f"items[{k}]"
            if it.HasField("item_seq") and it.item_id:
                bad(f"{where} gives both item_id and item_seq: give one", k)
            item_id = framing.item_id(req, it)  # compact ids: the request's prefix + the decimal number
            for value, field in ((item_id, "item_id"), (bundle_of[k], "bundle_id")):
                problem = _check_id(value, f"{where}.{field}")
                if problem:
                    bad(
                        problem + (" (and the request's bundle_id is empty)" if field == "bundle_id" else ""),
                        k,
                    )
            if item_id in seen:
                bad(f"{where}.item_id {item_id!r} appears twice in this request", k)
            seen.add(item_id)
            ids.append(item_id)
            # An empty payload is not refused here: an entropy-coded code of near-certain symbols takes zero
            # bytes. Payloads of held bundles are checked against their format below.
            if len(it.payload) > MAX_PAYLOAD_BYTES:
                bad(f"{where}.payload is {len(it.payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}", k)
            if it.captured_at_ms < 0:
                bad(f"{where}.captured_at_ms is negative ({it.captured_at_ms})", k)
            if req.captured_base_ms + it.captured_at_ms > MAX_TIME_MS:
                bad(f"{where}.captured_at_ms + captured_base_ms is past the year 9999", k)
            by_bundle.setdefault(bundle_of[k], []).append(k)
        for bundle_id, idx in by_bundle.items():
            lb = self.registry.get(bundle_id)
            if lb is None:
                continue  # stored as is; see the module docstring
            codec = lb.codec
            if codec.item_bytes is not None:
                for k in idx:
                    size = len(req.items[k].payload)
                    if size != codec.item_bytes:
                        bad(
                            f"items[{k}].payload is {size} bytes; bundle {bundle_id} ({codec.format}) "
                            f"needs exactly {codec.item_bytes}",
                            k,
                        )
            first = codec.first_invalid([req.items[k].payload for k in idx])
            if first is not None:
                k = idx[first]
                bad(
                    f"items[{k}].payload does not fit bundle {bundle_id} ({codec.format}): "
                    f"{codec.problem(req.items[k].payload)}",
                    k,
                )
        return [
            NewItem(
                req.device_id,
                ids[k],
                bundle_of[k],
                bytes(it.payload),
                int(req.captured_base_ms + it.captured_at_ms),
            )
            for k, it in enumerate(req.items)
        ]

    def Ingest(self, request_iterator: Iterator[pb.IngestRequest], context) -> Iterator[pb.IngestAck]:
        for n, req in enumerate(request_iterator):
            items = self._items_of(req, n, context)
            try:
                dup = self.store.put_many(items, _now_ms())
            except ItemConflict as exc:
                k = next((k for k, it in enumerate(items) if it.item_id == exc.item_id), None)
                if k is not None:
                    context.set_trailing_metadata(((REJECTED_ITEM_KEY, str(k)),))
                context.abort(grpc.StatusCode.ALREADY_EXISTS, f"request {n}: {exc}")
            except StoreUnavailable as exc:
                log.warning("ingest: %s", exc)
                context.abort(grpc.StatusCode.UNAVAILABLE, f"the store is unavailable, retry later ({exc})")
            except StoreError as exc:
                log.error("ingest: %s", exc)
                context.abort(grpc.StatusCode.INTERNAL, f"storing failed: {exc}")
            yield framing.ack(req, dup)  # the items named the way the request named them

    # ---- fetch --------------------------------------------------------------
    def _records(self, req: pb.FetchRequest, context) -> tuple[list[StoredRecord], list[str]]:
        def bad(msg: str):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, msg)

        if req.reconstruction_format not in FORMATS:
            bad(f"reconstruction_format {req.reconstruction_format} is unknown")
        if req.limit > MAX_FETCH_LIMIT:
            bad(f"limit {req.limit} exceeds the maximum of {MAX_FETCH_LIMIT}")
        limit = req.limit or DEFAULT_FETCH_LIMIT
        if req.item_ids:
            if req.since_ms or req.until_ms:
                bad("give either item_ids or a time range (since_ms/until_ms), not both")
            if len(req.item_ids) > limit:
                bad(f"{len(req.item_ids)} item_ids; the limit is {limit}")
            for k, item_id in enumerate(req.item_ids):
                problem = _check_id(item_id, f"item_ids[{k}]")
                if problem:
                    bad(problem)
            if req.device_id:
                problem = _check_id(req.device_id, "device_id")
                if problem:
                    bad(problem)
            records = self.store.get(list(req.item_ids), req.device_id)
            found = {r.item_id for r in records}
            return records, [i for i in dict.fromkeys(req.item_ids) if i not in found]
        problem = _check_id(req.device_id, "device_id")
        if problem:
            bad(f"{problem}: give item_ids, or a device_id and optionally a time range")
        if req.since_ms < 0 or req.until_ms < 0:
            bad("since_ms and until_ms must not be negative")
        if req.until_ms and req.until_ms <= req.since_ms:
            bad(f"until_ms {req.until_ms} is not after since_ms {req.since_ms}")
        return self.store.query(req.device_id, req.since_ms, req.until_ms, limit), []

    def _stored_items(self, records: list[StoredRecord], req: pb.FetchRequest) -> list[pb.StoredItem]:
        out = [
            pb.StoredItem(
                item_id=r.item_id,
                device_id=r.device_id,
                bundle_id=r.bundle_id,
                captured_at_ms=r.captured_at_ms,
                stored_at_ms=r.stored_at_ms,
                payload=r.payload,
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
                    out[k].error = (
                        f"bundle {bundle_id} is not held by this server; the stored payload is "
                        f"returned undecoded"
                    )
                continue
            for s in range(0, len(idx), DECODE_CHUNK):
                self._decode_into(
                    lb,
                    [idx[j] for j in range(s, min(s + DECODE_CHUNK, len(idx)))],
                    records,
                    out,
                    req.reconstruction_format,
                )
        return out

    def _decode_into(
        self,
        lb: LoadedBundle,
        idx: list[int],
        records: list[StoredRecord],
        out: list[pb.StoredItem],
        fmt: int,
    ) -> None:
        try:
            rec = lb.codec.decode([records[k].payload for k in idx], unit=True)
        except Exception:  # one bad stored payload must not hide the others: decode one by one
            if len(idx) > 1:
                for k in idx:
                    self._decode_into(lb, [k], records, out, fmt)
                return
            k = idx[0]
            out[k].error = f"cannot decode with bundle {lb.bundle_id}: {lb.codec.problem(records[k].payload)}"
            return
        for j, k in enumerate(idx):
            t = reconstruction_tensor(lb.codec, rec[j : j + 1], fmt)
            if t is not None:
                out[k].reconstruction.CopyFrom(t)

    def Fetch(self, request: pb.FetchRequest, context) -> Iterator[pb.FetchResponse]:
        try:
            records, missing = self._records(request, context)
        except StoreUnavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the store is unavailable, retry later ({exc})")
        except StoreError as exc:
            context.abort(grpc.StatusCode.INTERNAL, f"reading the store failed: {exc}")
        if not records:
            yield pb.FetchResponse(missing_ids=missing)
            return
        for s in range(0, len(records), FETCH_CHUNK):
            chunk = records[s : s + FETCH_CHUNK]
            yield pb.FetchResponse(
                items=self._stored_items(chunk, request), missing_ids=missing if s == 0 else []
            )

    # ---- listing ------------------------------------------------------------
    def ListStored(self, request: pb.ListStoredRequest, context) -> pb.ListStoredResponse:
        if request.device_id:
            problem = _check_id(request.device_id, "device_id")
            if problem:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        try:
            rows = self.store.summaries(request.device_id)
        except StoreUnavailable as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the store is unavailable, retry later ({exc})")
        except StoreError as exc:
            context.abort(grpc.StatusCode.INTERNAL, f"reading the store failed: {exc}")
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

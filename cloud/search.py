"""Semantic-hashing search over stored items: binary codes computed on ingest, the Search RPC's validation, scope
and reply (Storage service, cloud/storage_service.py).

On ingest, each item of a held bundle whose manifest carries binary codes (latent_codec/binary_code.py) gets
its code's bits stored beside its payload. Search takes a query item's payload (encoded at the edge; the
same bits are computed from it as on ingest) or a binary code, and returns the stored items of that bundle
nearest by Hamming distance among the devices the caller may read: a token bound to devices searches those
(or the ones it names), an operator every device (or the ones it names), exactly as Fetch scopes reads.
The query is validated and priced like any decode (cloud/limits.py) before it is touched; the scan is
the store's (cloud/store/base.py, Store.search), on the store's threads.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import grpc
import numpy as np

from latent_codec.binary_code import BinaryCode, binary_codes
from latent_codec.errors import PayloadError
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb

from . import tenancy
from .bundles import BundleRegistry
from .ingest_validation import MAX_PAYLOAD_BYTES, Refused, check_id
from .limits import Cost, Limits, OverBudget
from .store import NewItem, StoredRecord

DEFAULT_LIMIT = 10
MAX_LIMIT = 1000
MAX_DEVICES = 1000  # device_ids named in one request


@dataclass
class SearchPlan:
    bundle_id: str  # the content id
    spec: BinaryCode
    codec: object
    devices: list[str] | None  # None: every device
    limit: int
    payload: bytes | None
    code: np.ndarray | None
    cost: Cost  # what computing the query's bits holds and takes (nothing for a code given as bits)


def _bad(msg: str) -> Refused:
    return Refused(grpc.StatusCode.INVALID_ARGUMENT, msg)


def plan_search(
    req: pb.SearchRequest, registry: BundleRegistry, principal: tenancy.Principal, limits: Limits
) -> SearchPlan:
    """A checked request: the bundle, the scope, the query; Refused with the status and a message naming the field."""
    problem = check_id(req.bundle_id, "bundle_id")
    if problem:
        raise _bad(problem)
    lb = registry.get(req.bundle_id)
    if lb is None:
        raise Refused(grpc.StatusCode.NOT_FOUND, f"bundle {req.bundle_id[:80]!r} is not held by this server")
    codec = lb.codec
    spec = codec.manifest.binary_code if codec.manifest is not None else None
    if spec is None:
        raise Refused(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"bundle {lb.bundle_id} has no binary codes, so its items cannot be searched "
            "(export a bundle with --binary-code, e.g. one trained with a noisy sigmoid code)",
        )
    if req.limit > MAX_LIMIT:
        raise _bad(f"limit {req.limit} exceeds the maximum of {MAX_LIMIT}")
    if len(req.device_ids) > MAX_DEVICES:
        raise _bad(f"{len(req.device_ids)} device_ids; the limit is {MAX_DEVICES}")
    for k, device in enumerate(req.device_ids):
        problem = check_id(device, f"device_ids[{k}]")
        if problem:
            raise _bad(problem)
        if not principal.may_read(device):
            raise Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{principal.describe()} may not read items of device {device[:80]!r}",
            )
    if req.device_ids:
        devices: list[str] | None = sorted(set(req.device_ids))
    elif principal.reads_all:
        devices = None
    elif principal.devices:
        devices = sorted(principal.devices)
    else:
        raise Refused(grpc.StatusCode.PERMISSION_DENIED, f"{principal.describe()} may not read stored items")
    which = req.WhichOneof("query")
    payload = code = None
    cost = Cost(0, 0.0)
    if which is None:
        raise _bad("the query is empty: give payload (an item's code payload) or code (a binary code)")
    if which == "code":
        try:
            code = spec.check(req.code)
        except PayloadError as exc:
            raise _bad(f"code: {exc}") from None
    else:
        payload = bytes(req.payload)
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise _bad(f"payload is {len(payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}")
        if codec.item_bytes is not None and len(payload) != codec.item_bytes:
            raise _bad(
                f"payload is {len(payload)} bytes; bundle {lb.bundle_id} ({codec.format}) needs exactly {codec.item_bytes}"
            )
        try:
            cost = limits.check(codec, [payload], "the query", reply_itemsize=0)
        except OverBudget as exc:
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)) from None
        except PayloadError as exc:
            raise _bad(f"payload: {exc}") from None
    return SearchPlan(lb.bundle_id, spec, codec, devices, req.limit or DEFAULT_LIMIT, payload, code, cost)


def query_code(plan: SearchPlan) -> np.ndarray:
    """The query's packed bits: the code as given, or the payload's as on ingest (on the decode threads)."""
    if plan.code is not None:
        return plan.code
    assert plan.payload is not None
    problem = plan.codec.problem(plan.payload)  # type: ignore[attr-defined]
    if problem is not None:
        raise _bad(f"payload does not fit bundle {plan.bundle_id}: {problem}")
    return binary_codes(plan.codec, [plan.payload])[0]


def with_binary_codes(items: list[NewItem], registry: BundleRegistry) -> list[NewItem]:
    """Items with their binary codes set where their bundle is held and carries binary codes (validated payloads)."""
    by_bundle: dict[str, list[int]] = {}
    for k, it in enumerate(items):
        by_bundle.setdefault(it.bundle_id, []).append(k)
    out = list(items)
    for bundle_id, idx in by_bundle.items():
        lb = registry.get(bundle_id)
        if lb is None or lb.codec.manifest is None or lb.codec.manifest.binary_code is None:
            continue
        bits = binary_codes(lb.codec, [items[k].payload for k in idx])
        for k, row in zip(idx, bits):
            out[k] = replace(items[k], binary_code=row.tobytes())
    return out


def stored_item(r: StoredRecord) -> pb.StoredItem:
    item = pb.StoredItem(
        item_id=r.item_id,
        device_id=r.device_id,
        bundle_id=r.bundle_id,
        captured_at_ms=r.captured_at_ms,
        stored_at_ms=r.stored_at_ms,
        payload=r.payload,
        name=r.name,
    )
    if r.audit_mse is not None:
        item.audit_mse = r.audit_mse
    return item


def search_response(hits: list[tuple[StoredRecord, int]], searched: int, bits: int) -> pb.SearchResponse:
    return pb.SearchResponse(
        hits=[pb.SearchHit(item=stored_item(r), distance=d) for r, d in hits],
        searched=searched,
        code_bits=bits,
    )

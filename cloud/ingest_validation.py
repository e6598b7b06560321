"""What Ingest checks before it acknowledges anything: fields, the bundle each item names, its payload.

An item is stored only when this server holds the bundle it names, under that bundle's content id
(``conv``, ``conv@3`` and the content id all resolve to the bytes that made the payload), and when its
payload decodes under that bundle's format. A reference this server does not resolve is refused with
the item's index (latent_codec/rejection.py), so the edge sets that item aside in its quarantine with
the reason, and can requeue it once the server holds the bundle: an acknowledgement means "stored and
decodable", never "stored as sent". Validation is priced like a decode (cloud/limits.py) and runs within
the budget all decoding shares.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import grpc

from latent_codec import framing
from latent_codec.codec import Codec
from latent_codec.container import from_tensor
from latent_codec.errors import PayloadError
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb

from .audit import Audit
from .bundles import BundleRegistry, describe_ref
from .limits import Cost, Limits, OverBudget
from .store import NewItem

MAX_ID_CHARS = 256
MAX_ITEMS_PER_REQUEST = 10_000
MAX_PAYLOAD_BYTES = 1 << 20
MAX_TIME_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: what every store and datetime library can hold


class Refused(Exception):
    """A request the service refuses: the status, the message, and the refused item's index if one is at fault."""

    def __init__(self, code: grpc.StatusCode, message: str, item: int | None = None):
        super().__init__(message)
        self.code, self.item = code, item


def check_id(value: str, field: str) -> str | None:
    if not value:
        return f"{field} is empty"
    if len(value) > MAX_ID_CHARS:
        return f"{field} is {len(value)} characters; the limit is {MAX_ID_CHARS}"
    if not value.isprintable():
        return f"{field} {value[:40]!r} contains control characters"
    return None


@dataclass
class Group:
    """The items of one request that name one bundle: its codec and their indices."""

    codec: Codec
    idx: list[int]
    cost: Cost


@dataclass
class Plan:
    """One IngestRequest checked without decoding: the items to store and what validating them will cost."""

    items: list[NewItem]
    groups: list[Group] = field(default_factory=list)

    @property
    def cost(self) -> Cost:
        return Cost(
            sum(g.cost.nbytes for g in self.groups),
            sum(g.cost.seconds for g in self.groups),
            min((g.cost.run_items for g in self.groups), default=256),
        )


def plan_ingest(req: pb.IngestRequest, n: int, registry: BundleRegistry, limits: Limits) -> Plan:
    """The n-th request of a stream checked field by field and priced; Refused naming the field and the item.

    Items are stored under their bundle's content id, whatever name the request used.
    """

    def bad(msg: str, item: int | None = None, code=grpc.StatusCode.INVALID_ARGUMENT) -> Refused:
        return Refused(code, f"request {n}: {msg}", item)

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
        for value, name in ((item_id, "item_id"), (bundle_of[k], "bundle_id")):
            problem = check_id(value, f"{where}.{name}")
            if problem:
                raise bad(
                    problem + (" (and the request's bundle_id is empty)" if name == "bundle_id" else ""), k
                )
        if it.name and (len(it.name) > MAX_ID_CHARS or not it.name.isprintable()):
            raise bad(f"{where}.name must be printable and at most {MAX_ID_CHARS} characters", k)
        if item_id in seen:
            raise bad(f"{where}.item_id {item_id!r} appears twice in this request", k)
        seen.add(item_id)
        ids.append(item_id)
        # An empty payload is not refused here: an entropy-coded code of near-certain symbols takes zero bytes.
        if len(it.payload) > MAX_PAYLOAD_BYTES:
            raise bad(f"{where}.payload is {len(it.payload)} bytes; the limit is {MAX_PAYLOAD_BYTES}", k)
        if it.captured_at_ms < 0:
            raise bad(f"{where}.captured_at_ms is negative ({it.captured_at_ms})", k)
        if req.captured_base_ms + it.captured_at_ms > MAX_TIME_MS:
            raise bad(f"{where}.captured_at_ms + captured_base_ms is past the year 9999", k)
        by_bundle.setdefault(bundle_of[k], []).append(k)
    groups = []
    for ref, idx in by_bundle.items():
        lb = registry.get(ref)
        if lb is None:
            k = idx[0]
            problem = describe_ref(
                ref
            )  # malformed (INVALID_ARGUMENT) or well-formed but not held (NOT_FOUND)
            code = grpc.StatusCode.INVALID_ARGUMENT if problem else grpc.StatusCode.NOT_FOUND
            held = ", ".join(f"{e.bundle_id} ({e.ref})" for e in registry.entries()) or "none"
            why = problem or f"is not held by this server (held: {held})"
            raise bad(f"items[{k}].bundle_id {ref[:80]!r} {why}; nothing of this request is stored", k, code)
        codec = lb.codec
        for k in idx:
            bundle_of[k] = lb.bundle_id  # by content id, whatever name the request used
        if codec.item_bytes is not None:
            for k in idx:
                size = len(req.items[k].payload)
                if size != codec.item_bytes:
                    raise bad(
                        f"items[{k}].payload is {size} bytes; bundle {lb.bundle_id} ({codec.format}) "
                        f"needs exactly {codec.item_bytes}",
                        k,
                    )
        payloads = [req.items[k].payload for k in idx]
        try:  # validating decodes the symbols (and audited items whole): priced like a decode
            cost = limits.check(codec, payloads, f"request {n}", reply_itemsize=0)
        except PayloadError as exc:  # a size header that does not parse
            first = codec.first_invalid(payloads)
            k = idx[first if first is not None else 0]
            raise bad(f"items[{k}].payload: {exc}", k) from None
        except (
            OverBudget
        ) as exc:  # an item too large alone is named (the edge sets it aside); else send fewer
            alone = codec.decode_costs(payloads).item_bytes() > limits.max_decode_bytes
            culprit = idx[int(alone.argmax())] if alone.any() else None
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), culprit) from None
        groups.append(Group(codec, idx, cost))
    items = [
        NewItem(
            req.device_id,
            ids[k],
            bundle_of[k],
            bytes(it.payload),
            int(req.captured_base_ms + it.captured_at_ms),
            name=it.name,
        )
        for k, it in enumerate(req.items)
    ]
    return Plan(items, groups)


def validate_payloads(req: pb.IngestRequest, n: int, plan: Plan, audit: Audit | None = None) -> list[NewItem]:
    """Decode every planned item's symbols (Refused naming the first that does not fit its bundle) and the
    audited items whole, adding their error to the bundle's figures (originals are not stored); -> the planned
    items, each audited one with its error (stored with it: its anomaly score, docs/anomaly.md)."""

    def bad(msg: str, item: int | None = None) -> Refused:
        return Refused(grpc.StatusCode.INVALID_ARGUMENT, f"request {n}: {msg}", item)

    scores: dict[int, float] = {}
    for g in plan.groups:
        codec = g.codec
        first = codec.first_invalid([req.items[k].payload for k in g.idx])
        if first is not None:
            k = g.idx[first]
            raise bad(
                f"items[{k}].payload does not fit bundle {codec.bundle_id} ({codec.format}): "
                f"{codec.problem(req.items[k].payload)}",
                k,
            )
        audited = [k for k in g.idx if req.items[k].HasField("original")]
        if audited:
            scores.update(zip(audited, audit_items(req, audited, codec, audit, bad)))
    return [replace(it, audit_mse=scores[k]) if k in scores else it for k, it in enumerate(plan.items)]


def audit_items(
    req: pb.IngestRequest, idx: list[int], codec: Codec, audit: Audit | None, bad: Callable
) -> list[float]:
    """Decode the audited items of one bundle and add their error to its figures (originals are not stored);
    -> each item's error."""
    payloads = [req.items[k].payload for k in idx]
    shapes = codec.output_shapes(payloads)
    originals = []
    for k, want in zip(idx, shapes.tolist()):
        try:
            original = from_tensor(req.items[k].original, f"items[{k}].original")
        except PayloadError as exc:
            raise bad(str(exc), k) from None
        if list(original.shape) != list(want) or original.dtype.name != codec.input.dtype:
            raise bad(
                f"items[{k}].original is {list(original.shape)} {original.dtype.name}; its payload decodes to "
                f"{list(want)} {codec.input.dtype} (bundle {codec.bundle_id})",
                k,
            )
        originals.append(original)
    rec = codec.decode_each(payloads)  # items may differ in size: the codec groups them
    errors = [float(codec.squared_error(o[None], r[None])[0]) for o, r in zip(originals, rec)]
    if audit is not None:
        audit.add(codec.bundle_id, errors)
    return errors


__all__ = ["MAX_ITEMS_PER_REQUEST", "Plan", "Refused", "check_id", "plan_ingest", "validate_payloads"]

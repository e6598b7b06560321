"""Decode on read: Fetch's stored items priced like a decode, decoded a budget at a time, each failure its own.

A stored payload is priced by its bundle's codec from its header (cloud/limits.py); one that would hold more
than a request's budget, or whose header does not parse, is returned undecoded with an error naming why.
The rest are decoded in consecutive runs of at most FETCH_MESSAGE_ITEMS items and one budget of working
memory (a larger item alone), each run within the budget all decoding shares; a payload that does not
decode gets an error of its own instead of hiding the others.
"""

from __future__ import annotations

from latent_codec.codec import Codec
from latent_codec.errors import PayloadError
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb

from .bundles import BundleRegistry
from .decoding_service import reconstruction_tensor
from .limits import Cost, Limits, OverBudget
from .store import StoredRecord

FETCH_MESSAGE_ITEMS = 256  # items per FetchResponse message at most ...
FETCH_MESSAGE_BYTES = 8 << 20  # ... and about this many bytes (large images: fewer items per message)
ITEMSIZE = {pb.RECONSTRUCTION_FORMAT_FLOAT32: 4, pb.RECONSTRUCTION_FORMAT_NONE: 0}


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


def price(registry: BundleRegistry, record: StoredRecord, req: pb.FetchRequest, limits: Limits) -> Cost | str:
    """What decoding this stored item will hold and take, or why it is returned undecoded."""
    if req.codes_only:
        return Cost(0, 0.0)
    lb = registry.get(record.bundle_id)
    if lb is None:
        return (
            f"bundle {record.bundle_id} is not held by this server; the stored payload is returned undecoded"
        )
    try:
        return limits.check(
            lb.codec,
            [record.payload],
            f"stored item {record.item_id[:80]!r}",
            ITEMSIZE.get(req.reconstruction_format, 1),
        )
    except (OverBudget, PayloadError) as exc:
        return f"not decoded with bundle {lb.bundle_id}: {exc}"


def decode_stored(
    codec: Codec, records: list[StoredRecord], out: list[pb.StoredItem], fmt: int, chunk: int
) -> None:
    """Decode records of one bundle into out (the matching StoredItems); items may differ in size."""
    if not records:
        return
    try:
        rec = codec.decode_each([r.payload for r in records], unit=True, chunk=chunk)
    except Exception:
        if len(records) > 1:
            for r, o in zip(records, out):
                decode_stored(codec, [r], [o], fmt, chunk)
            return
        out[0].error = f"cannot decode with bundle {codec.bundle_id}: {codec.problem(records[0].payload)}"
        return
    for item, x in zip(out, rec):
        t = reconstruction_tensor(codec, x[None], fmt)
        if t is not None:
            item.reconstruction.CopyFrom(t)


__all__ = ["FETCH_MESSAGE_BYTES", "FETCH_MESSAGE_ITEMS", "decode_stored", "fetch_chunks", "price"]

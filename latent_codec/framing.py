"""Ingest framing: how a batch of item payloads travels in one IngestRequest, and how its ack names them.

What items share is sent once per request: the bundle id; the start of the item ids (each item then
carries only its number, ``item_seq``, a 1-3 byte varint: ``8hex#index`` ids all share ``8hex#``);
the earliest capture time (each item carries its offset from it). The cloud rebuilds the same id
strings (``item_ids``), so idempotency does not depend on the form sent. Edge and cloud both use
this module; the payloads themselves are ``latent_codec.codec.Codec``'s.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol

from .wire.aecodec.v2 import codec_pb2 as pb

_SEQ_ID = re.compile(r"(.*?)(0|[1-9][0-9]{0,18})")  # a prefix, then a decimal number that str() gives back


class ItemToSend(Protocol):
    """What framing reads of an item (edge/spool.py's SpooledItem is one)."""

    @property
    def item_id(self) -> str: ...
    @property
    def bundle_id(self) -> str: ...
    @property
    def payload(self) -> bytes: ...
    @property
    def captured_at_ms(self) -> int: ...
    @property
    def original(self) -> bytes | None: ...  # a serialised Tensor, for field audit; None for most items
    @property
    def name(self) -> str: ...  # the item's source name (a photo's file name), or ""


def ingest_request(device_id: str, batch: Sequence[ItemToSend]) -> pb.IngestRequest:
    """One IngestRequest with as little framing per item as the batch allows."""
    common = batch[0].bundle_id if all(it.bundle_id == batch[0].bundle_id for it in batch) else ""
    parts = [_SEQ_ID.fullmatch(it.item_id) for it in batch]
    prefix = None
    if all(parts) and len({m.group(1) for m in parts if m}) == 1:
        prefix = parts[0].group(1) if parts[0] else None
    base = min(it.captured_at_ms for it in batch)
    items = []
    for it, m in zip(batch, parts):
        item = pb.IngestItem(
            bundle_id="" if common else it.bundle_id,
            payload=it.payload,
            captured_at_ms=it.captured_at_ms - base,
            name=it.name,
        )
        if prefix is None or m is None:
            item.item_id = it.item_id
        else:
            item.item_seq = int(m.group(2))
        if it.original is not None:
            item.original.ParseFromString(it.original)
        items.append(item)
    return pb.IngestRequest(
        device_id=device_id, bundle_id=common, item_id_prefix=prefix or "", captured_base_ms=base, items=items
    )


def item_id(req: pb.IngestRequest, item: pb.IngestItem) -> str:
    """The full id of one item of a request, whichever form it was sent in."""
    return req.item_id_prefix + str(item.item_seq) if item.HasField("item_seq") else item.item_id


def ack(req: pb.IngestRequest, duplicates: int) -> pb.IngestAck:
    """The acknowledgement of a whole request: its items named the way the request named them, in order."""
    by_seq = [it.HasField("item_seq") for it in req.items]
    return pb.IngestAck(
        item_ids=[it.item_id for it, s in zip(req.items, by_seq) if not s],
        item_seqs=[it.item_seq for it, s in zip(req.items, by_seq) if s],
        duplicates=duplicates,
    )


def acknowledges(req: pb.IngestRequest, received: pb.IngestAck) -> bool:
    """True when an ack names exactly the request's items, in order, the way the request named them."""
    want = ack(req, received.duplicates)
    return list(received.item_ids) == list(want.item_ids) and list(received.item_seqs) == list(want.item_seqs)

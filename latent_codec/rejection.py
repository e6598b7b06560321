"""Which item of an IngestRequest the cloud refused: a trailing-metadata key both ends share.

The status (INVALID_ARGUMENT for a bad item, ALREADY_EXISTS for an id reused
with other content) and its message say what is wrong; this key says which
item, as its index in the refused request, so the device can set that one
item aside (edge/spool.py quarantine) and send the rest. A refusal without
it concerns the whole request (a bad device id, too many items) and is not
the item's fault. Documented next to Ingest in proto/aecodec/v2/codec.proto.
"""

from __future__ import annotations

REJECTED_ITEM_KEY = "aecodec-rejected-item"


def rejected_item(error) -> int | None:
    """The refused item's index from a grpc.RpcError's trailing metadata, or None."""
    try:
        metadata = error.trailing_metadata() or ()
    except Exception:  # not a call error (e.g. raised before the call started)
        return None
    for key, value in metadata:
        if key == REJECTED_ITEM_KEY:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None

"""What one request may cost the server, checked before any work: bytes it decodes to, symbols it entropy-decodes.

A few hundred bytes can ask for 65,536 empty entropy-coded items; decoding them would allocate
gigabytes. Every decoding request (Decode, each DecodeStream message, Ingest validation, Fetch) is
measured against these budgets from its item count and the bundle's manifest alone, and refused
with RESOURCE_EXHAUSTED naming the limit before anything is decoded. Concurrency is bounded
separately: decoding runs on a fixed pool of threads (--decode-workers), so at most that many
budgets are spent at once; docs/deployment.md states the resulting memory bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from latent_codec.codec import Codec
from latent_codec.errors import CodecError

MIB = 1 << 20


class OverBudget(CodecError):
    """A request would cost more than a per-request budget (answered RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class Limits:
    max_items: int = 65536  # items per decode request (codes.count)
    max_decode_bytes: int = 32 * MIB  # float32 reconstruction bytes one request may decode to
    max_symbols: int = 1 << 24  # code symbols one request may entropy-decode (items x code values)
    decode_chunk: int = 256  # items per decoder-graph run: bounds the graph's activations
    max_reply_bytes: int = 64 * MIB  # the server's --max-message-mib: a larger reply could not be sent

    def check(self, codec: Codec, count: int, what: str = "request") -> None:
        """Refuse a request of `count` items for this codec when it is over a budget; cheap, decodes nothing."""
        if count > self.max_items:
            raise OverBudget(f"{what} has {count:,} items; the limit is {self.max_items:,} items per request")
        per_item = math.prod(codec.input.shape) * 4
        if count * per_item > self.max_decode_bytes:
            raise OverBudget(
                f"{what} would decode to {count:,} items x {per_item:,} bytes = {count * per_item:,} bytes; "
                f"the per-request budget is {self.max_decode_bytes:,} bytes (--max-decode-mib): "
                f"send at most {self.max_decode_bytes // per_item:,} items of bundle {codec.bundle_id} per request"
            )
        symbols = count * codec.payload.code_dims
        if symbols > self.max_symbols:
            raise OverBudget(
                f"{what} would entropy-decode {symbols:,} code symbols; the per-request budget is "
                f"{self.max_symbols:,} (send at most {self.max_symbols // codec.payload.code_dims:,} items)"
            )

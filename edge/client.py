"""The Python client of the cloud: numpy arrays in, numpy arrays out.

    from latent_codec.codec import Codec
    from edge.client import CloudClient

    codec = Codec.open("bundles/conv", need=("encoder",))
    with CloudClient("127.0.0.1:50051") as cloud:
        result = cloud.decode(codec, codec.encode(x), originals=x)   # reconstructions + MSE/PSNR
        items = cloud.fetch(device_id="cam-7")                        # stored items, decoded
        summary = cloud.list_stored()
        hits = cloud.search(codec, payload=codec.encode(x[:1])[0])    # stored items nearest by binary code

``ingest`` (durable upload through the device's spool) is ``edge.ingest.run(IngestConfig(...))``;
``CloudClient.ingest`` is the same call with this client's address and credentials.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from latent_codec.codec import Codec
from latent_codec.container import from_tensor, to_batch, to_tensor
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

from .channel import CloudError, Security, describe, open_channel

if TYPE_CHECKING:
    from .ingest import IngestConfig, IngestReport


@dataclass
class Decoded:
    """What Decode returns: reconstructions (raw dtype, or [0, 1] with unit=True) and, with originals, the error."""

    items: np.ndarray | None
    mse: np.ndarray | None = None  # per item, [0, 1] scale
    psnr: np.ndarray | None = None  # per item, dB
    batch_psnr: float | None = None


@dataclass
class FetchedItem:
    item_id: str
    device_id: str
    bundle_id: str
    captured_at_ms: int
    stored_at_ms: int
    payload: bytes
    item: np.ndarray | None  # the reconstruction (C, H, W), unless codes only or not decodable
    error: str = ""
    audit_mse: float | None = None  # the item's reconstruction error when it was audited: an anomaly score
    name: str = ""  # the item's source name (a photo's file name), when the device sent one


@dataclass
class SearchHit:
    """One stored item a Search found, nearest first: its Hamming distance to the query and its stored fields."""

    distance: int
    item_id: str
    device_id: str
    bundle_id: str
    captured_at_ms: int
    stored_at_ms: int
    payload: bytes
    audit_mse: float | None = None
    name: str = ""


@dataclass
class StoredSummary:
    device_id: str
    bundle_id: str
    items: int
    payload_bytes: int
    bundle_available: bool


class CloudClient:
    """One channel to one cloud; every method raises CloudError with a readable message on failure."""

    def __init__(
        self,
        target: str,
        security: Security | None = None,
        connect_timeout: float = 10.0,
        timeout: float | None = 60.0,
    ):
        self.target = target
        self.security = security or Security()
        self.channel = open_channel(target, self.security)
        self.decoding = pb_grpc.DecodingStub(self.channel)
        self.storage = pb_grpc.StorageStub(self.channel)
        self.connect_timeout = connect_timeout
        self.timeout = timeout

    def __enter__(self) -> CloudClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _fail(self, exc: grpc.RpcError) -> CloudError:
        return CloudError(describe(exc, self.target))

    def wait_ready(self) -> None:
        """One call to the cloud: it answers, or a CloudError names why not (refused, DNS, TLS, not gRPC, the
        deadline) as soon as that is known, instead of waiting out the whole connect timeout."""
        try:
            self.decoding.ModelInfo(pb.ModelInfoRequest(), timeout=self.connect_timeout)
        except grpc.RpcError as exc:
            raise self._fail(exc) from None

    # ---- decoding ------------------------------------------------------------------------------------------
    def model_info(self) -> dict[str, str]:
        """Bundle id -> manifest JSON of every bundle the cloud holds."""
        try:
            resp = self.decoding.ModelInfo(pb.ModelInfoRequest(), timeout=self.connect_timeout)
        except grpc.RpcError as exc:
            raise self._fail(exc) from None
        return {b.bundle_id: b.manifest_json for b in resp.bundles}

    @staticmethod
    def decode_request(
        codec: Codec,
        payloads: Sequence[bytes],
        originals: np.ndarray | None = None,
        unit: bool = False,
        reconstructions: bool = True,
    ) -> pb.DecodeRequest:
        """The DecodeRequest for payloads (and, for evaluation, their originals)."""
        if not reconstructions:
            fmt = pb.RECONSTRUCTION_FORMAT_NONE
        else:
            fmt = pb.RECONSTRUCTION_FORMAT_FLOAT32 if unit else pb.RECONSTRUCTION_FORMAT_UINT8
        req = pb.DecodeRequest(codes=to_batch(codec, payloads), reconstruction_format=fmt)
        if originals is not None:
            CloudClient.attach_originals(req, originals)
        return req

    @staticmethod
    def attach_originals(req: pb.DecodeRequest, originals: np.ndarray) -> int:
        """Add the originals to a DecodeRequest (for evaluation); returns the bytes they add to it."""
        before = req.ByteSize()
        req.originals.CopyFrom(to_tensor(originals))
        return req.ByteSize() - before

    @staticmethod
    def decoded(resp: pb.DecodeResponse) -> Decoded:
        out = Decoded(
            from_tensor(resp.reconstructions, "reconstructions") if resp.HasField("reconstructions") else None
        )
        if resp.HasField("quality"):
            out.mse = np.asarray(resp.quality.mse)
            out.psnr = np.asarray(resp.quality.psnr)
            out.batch_psnr = resp.quality.batch_psnr
        return out

    def decode(
        self, codec: Codec, payloads: Sequence[bytes], originals: np.ndarray | None = None, unit: bool = False
    ) -> Decoded:
        """Decode payloads of codec's bundle in the cloud; with originals, also get the error per item."""
        try:
            resp = self.decoding.Decode(
                self.decode_request(codec, payloads, originals, unit), timeout=self.timeout
            )
        except grpc.RpcError as exc:
            raise self._fail(exc) from None
        return self.decoded(resp)

    def decode_stream(
        self, requests: Iterable[pb.DecodeRequest], timeout: float | None = None
    ) -> Iterator[pb.DecodeResponse]:
        """Many DecodeRequests over one stream; yields one response per request, in order.

        gRPC reads `requests` on a thread of its own. When the call ends early (its deadline, a refusal), that
        thread may be inside the iterator (encoding the next batch in ONNX Runtime): it is told to stop and
        waited for before this returns, so the channel is never closed, nor the process ended, under it (that
        ended in "terminate called without an active exception", exit 134)."""
        started, done, stop = threading.Event(), threading.Event(), threading.Event()

        def guarded() -> Iterator[pb.DecodeRequest]:
            started.set()
            try:
                for r in requests:
                    if stop.is_set():
                        return
                    yield r
            finally:
                done.set()

        call = self.decoding.DecodeStream(guarded(), timeout=timeout)
        try:
            yield from call
        except grpc.RpcError as exc:
            raise self._fail(exc) from None
        finally:
            stop.set()
            call.cancel()
            if started.is_set():
                done.wait(timeout=120)

    # ---- storage -------------------------------------------------------------------------------------------
    def fetch(
        self,
        item_ids: Sequence[str] = (),
        device_id: str = "",
        since_ms: int = 0,
        until_ms: int = 0,
        codes_only: bool = False,
        unit: bool = False,
        limit: int = 0,
    ) -> list[FetchedItem]:
        """Stored items by id, or a device's items in a capture-time range, decoded unless codes_only."""
        if codes_only:
            fmt = pb.RECONSTRUCTION_FORMAT_NONE
        else:
            fmt = pb.RECONSTRUCTION_FORMAT_FLOAT32 if unit else pb.RECONSTRUCTION_FORMAT_UINT8
        req = pb.FetchRequest(
            item_ids=list(item_ids),
            device_id=device_id,
            since_ms=since_ms,
            until_ms=until_ms,
            codes_only=codes_only,
            reconstruction_format=fmt,
            limit=limit,
        )
        out: list[FetchedItem] = []
        try:
            for resp in self.storage.Fetch(req, timeout=self.timeout):
                for it in resp.items:
                    rec = (
                        from_tensor(it.reconstruction, "reconstruction")[0]
                        if it.HasField("reconstruction")
                        else None
                    )
                    out.append(
                        FetchedItem(
                            it.item_id,
                            it.device_id,
                            it.bundle_id,
                            it.captured_at_ms,
                            it.stored_at_ms,
                            bytes(it.payload),
                            rec,
                            it.error,
                            it.audit_mse if it.HasField("audit_mse") else None,
                            it.name,
                        )
                    )
        except grpc.RpcError as exc:
            raise self._fail(exc) from None
        return out

    def search(
        self,
        bundle: Codec | str,
        payload: bytes | None = None,
        code: bytes | None = None,
        device_ids: Sequence[str] = (),
        limit: int = 0,
    ) -> tuple[list[SearchHit], int]:
        """Stored items nearest a query by Hamming distance of their binary codes (semantic hashing).

        The query is an item's payload (``codec.encode(x)[0]``: encoded here, thresholded in the cloud as on
        ingest) or a binary code (packed bits). ``bundle`` is the codec or a bundle id / name; ``device_ids``
        narrow the search to these devices (default: every device this client may read); ``limit`` 0 = 10.
        -> (hits nearest first, how many stored items were compared).
        """
        if (payload is None) == (code is None):
            raise ValueError("give one query: payload (an encoded item) or code (a binary code)")
        req = pb.SearchRequest(
            bundle_id=bundle if isinstance(bundle, str) else bundle.bundle_id,
            device_ids=list(device_ids),
            limit=limit,
        )
        if payload is not None:
            req.payload = payload
        else:
            req.code = bytes(code or b"")
        try:
            resp = self.storage.Search(req, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self._fail(exc) from None
        hits = [
            SearchHit(
                h.distance,
                h.item.item_id,
                h.item.device_id,
                h.item.bundle_id,
                h.item.captured_at_ms,
                h.item.stored_at_ms,
                bytes(h.item.payload),
                h.item.audit_mse if h.item.HasField("audit_mse") else None,
                h.item.name,
            )
            for h in resp.hits
        ]
        return hits, int(resp.searched)

    def list_stored(self, device_id: str = "") -> list[StoredSummary]:
        """Items and payload bytes stored per device and bundle."""
        try:
            resp = self.storage.ListStored(pb.ListStoredRequest(device_id=device_id), timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self._fail(exc) from None
        return [
            StoredSummary(s.device_id, s.bundle_id, s.items, s.payload_bytes, s.bundle_available)
            for s in resp.summaries
        ]

    def ingest(self, config: IngestConfig, items: np.ndarray | None = None, **overrides: Any) -> IngestReport:
        """Durable upload (edge.ingest.run) to this client's cloud with its credentials."""
        from dataclasses import replace

        from .ingest import run

        return run(replace(config, server=self.target, security=self.security, **overrides), items)

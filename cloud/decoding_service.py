"""The Decoding gRPC service: Decode, DecodeStream, ModelInfo.

A DecodeRequest's payloads go through the bundle's ``Codec`` (latent_codec/codec.py), the one
decode path; when the request carries originals, the reply carries the error of what the caller
receives (uint8-rounded for uint8 data). Each request is checked against the per-request budgets
(cloud/limits.py) before anything is decoded; decoding runs on the server's decode thread pool so
the event loop keeps answering other calls. Domain errors map to status codes naming the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor

import grpc
import numpy as np

from latent_codec import metrics
from latent_codec.codec import Codec, Side
from latent_codec.container import from_batch, from_tensor, to_tensor
from latent_codec.errors import CodecError, PayloadError
from latent_codec.parallel import Workers
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

from .audit import Audit
from .batching import Batcher, Batching, in_order
from .bundles import BundleRegistry, LoadedBundle
from .interceptors.wrapping import WriteTimeout, end_unread, write_within
from .limits import RELEASE_BYTES, Cost, DecodeBudget, InFlight, Limits, OverBudget
from .metrics import CodecMetrics

log = logging.getLogger(__name__)

SMALL = (
    16  # requests of at most this many items are unpacked and answered on the event loop, larger on a thread
)
FORMATS = (pb.RECONSTRUCTION_FORMAT_UINT8, pb.RECONSTRUCTION_FORMAT_FLOAT32, pb.RECONSTRUCTION_FORMAT_NONE)


def reconstruction_tensor(codec: Codec, rec_unit: np.ndarray, fmt: int, raw: np.ndarray | None = None):
    """The reply's reconstructions in the requested format (raw: codec.unscale(rec_unit), if already computed)."""
    if fmt == pb.RECONSTRUCTION_FORMAT_NONE:
        return None
    if fmt == pb.RECONSTRUCTION_FORMAT_FLOAT32:
        return to_tensor(rec_unit.astype(np.float32))
    return to_tensor(codec.unscale(rec_unit) if raw is None else raw)


def check_request(codec: Codec, req: pb.DecodeRequest, limits: Limits) -> Cost:
    """Everything about a request that can be refused without decoding (PayloadError / OverBudget).
    -> what decoding it will hold and take (the codec prices it from the payloads' headers)."""
    if req.codes.count == 0:
        raise PayloadError("codes.count is 0: send at least one item")
    if req.reconstruction_format not in FORMATS:
        raise PayloadError(f"reconstruction_format {req.reconstruction_format} is unknown")
    reply_itemsize = {pb.RECONSTRUCTION_FORMAT_FLOAT32: 4, pb.RECONSTRUCTION_FORMAT_NONE: 0}.get(
        req.reconstruction_format, 1
    )
    if req.codes.count > limits.max_items:  # before splitting what may be a huge count of empty payloads
        raise OverBudget(
            f"codes has {req.codes.count:,} items; the limit is {limits.max_items:,} items per request"
        )
    return limits.check(codec, from_batch(codec, req.codes), "codes", reply_itemsize, split=True)


def checked_originals(codec: Codec, req: pb.DecodeRequest, payloads: list[bytes]) -> np.ndarray | None:
    """The request's originals, if any, checked against what its payloads decode to (PayloadError)."""
    originals = None
    if req.HasField("originals"):
        originals = from_tensor(req.originals, "originals")
        shapes = codec.output_shapes(payloads)  # what each payload decodes to; one request holds one size
        want = [len(payloads), *(shapes[0].tolist() if len(shapes) else codec.input.shape)]
        if list(originals.shape) != want:
            raise PayloadError(
                f"originals.shape is {list(originals.shape)}, expected {want} (count x the items' size)"
            )
        if originals.dtype.name != codec.input.dtype:
            raise PayloadError(
                f"originals.dtype is {originals.dtype.name}, the manifest's input dtype is {codec.input.dtype}"
            )
    return originals


def prepare(codec: Codec, req: pb.DecodeRequest) -> tuple[np.ndarray, Side, np.ndarray | None]:
    """The request's codes and side fields (unpacked, entropy-decoded, dequantised) and its originals, checked."""
    payloads = from_batch(codec, req.codes)
    originals = checked_originals(codec, req, payloads)
    symbols, side = codec.symbols(payloads)
    return codec.dequantise(symbols, side), side, originals


def respond(
    codec: Codec, req: pb.DecodeRequest, rec: np.ndarray, originals: np.ndarray | None
) -> pb.DecodeResponse:
    """The reply to a decoded request: reconstructions in the requested format, the error with originals."""
    float_reply = req.reconstruction_format == pb.RECONSTRUCTION_FORMAT_FLOAT32
    raw = None if float_reply else codec.unscale(rec)  # once: for the reply and for the error
    resp = pb.DecodeResponse(bundle_id=codec.bundle_id, count=len(rec))
    t = reconstruction_tensor(codec, rec, req.reconstruction_format, raw)
    if t is not None:
        resp.reconstructions.CopyFrom(t)
    if originals is not None:
        # Error of what the user receives: uint8-rounded for uint8 data.
        mse = (
            codec.squared_error(originals, rec, unit=True)
            if raw is None
            else codec.squared_error(originals, raw)
        )
        batch_mse = float(mse.mean())
        resp.quality.CopyFrom(
            pb.Quality(
                mse=mse.tolist(),
                psnr=np.asarray(metrics.psnr_from_mse(mse)).tolist(),
                batch_mse=batch_mse,
                batch_psnr=float(metrics.psnr_from_mse(batch_mse)),
            )
        )
    return resp


def batcher_of(lb: LoadedBundle, executor: Executor, batching: Batching, observe=None) -> Batcher:
    """The bundle's batcher on this server (made on first use; a reloaded bundle gets a new one)."""
    b = lb.extras.get("batcher")
    if b is None:
        b = lb.extras["batcher"] = Batcher(
            lb.codec,
            executor,
            batching.max_items,
            batching.max_delay,
            batching.chunk,
            observe,
            batching.max_runs,
        )
    return b


async def lookup(registry: BundleRegistry, bundle_id: str, context: grpc.aio.ServicerContext) -> LoadedBundle:
    """The bundle named by a request, or abort: INVALID_ARGUMENT when unnamed, NOT_FOUND when not held."""
    if not bundle_id:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "codes.bundle_id is empty")
    lb = registry.get(bundle_id)
    if lb is None:
        held = ", ".join(f"{e.bundle_id} ({e.ref})" for e in registry.entries()) or "none"
        await context.abort(
            grpc.StatusCode.NOT_FOUND, f"bundle {bundle_id[:80]!r} is not held by this server (held: {held})"
        )
    assert lb is not None  # abort raises
    return lb


async def run_checked(context: grpc.aio.ServicerContext, executor: Executor, fn, *args):
    """fn(*args) on a worker thread; its domain errors become the status codes they mean."""
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    except OverBudget as exc:
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
    except PayloadError as exc:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    except CodecError as exc:
        await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    except Exception as exc:  # an ORT failure on well-formed input is our bug, not the caller's
        log.exception("decoding failed")
        await context.abort(grpc.StatusCode.INTERNAL, f"decoding failed: {type(exc).__name__}")


class DecodingService(pb_grpc.DecodingServicer):
    def __init__(
        self,
        registry: BundleRegistry,
        executor: Executor,
        limits: Limits | None = None,
        metrics: CodecMetrics | None = None,
        batching: Batching | None = None,
        audit: Audit | None = None,
        in_flight: DecodeBudget | None = None,
        write_timeout: float = 0.0,
    ):
        self.write_timeout = write_timeout  # a stream whose client does not take a reply within it ends
        self.registry = registry
        self.executor = executor
        self.limits = limits or Limits()
        self.metrics = metrics
        self.batching = batching or Batching()
        # What one request's decoding is split over: the decode threads (latent_codec/parallel.py; the caller's
        # thread works too, so a busy pool never stalls a request)
        self.workers = Workers(max(1, self.batching.max_runs), executor)
        self.audit = audit
        # The working bytes and CPU seconds all requests may hold at once: one budget per decode thread (shared with
        # Ingest's validation and Fetch when the server passes its own).
        self.in_flight = in_flight or DecodeBudget(self.limits, self.batching.max_runs)
        # The bytes streams' replies hold from decoding until their client takes them (cloud/batching.py in_order):
        # one request's budget across all streams. Clients that do not read can hold it and stall other streams'
        # decoding (until they go away, or --max-connection-age), never the server's memory.
        self.stream_replies = InFlight(self.limits.max_decode_bytes)

    async def _decode_one(
        self, request: pb.DecodeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DecodeResponse:
        admitted, _ = await self._admit(request, context)
        return await self._work(admitted, context)

    async def _admit(
        self, request: pb.DecodeRequest, context: grpc.aio.ServicerContext
    ) -> tuple[tuple[LoadedBundle, pb.DecodeRequest, Cost], int]:
        """What can be refused before decoding (aborts); -> (what _work needs, the bytes decoding will hold)."""
        if not request.HasField("codes"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "codes is missing")
        lb = await lookup(self.registry, request.codes.bundle_id, context)
        try:
            held = check_request(lb.codec, request, self.limits)
        except OverBudget as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except PayloadError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return (lb, request, held), held.nbytes

    async def _work(
        self, admitted: tuple[LoadedBundle, pb.DecodeRequest, Cost], context: grpc.aio.ServicerContext
    ) -> pb.DecodeResponse:
        """Decode an admitted request within the in-flight budget and build its reply."""
        lb, request, held = admitted
        t0 = time.perf_counter()
        async with self.in_flight.hold(held):
            resp = await self._decode_checked(lb, request, held, context)
        size = resp.ByteSize()
        if size > self.limits.max_reply_bytes:  # refused here: the status logged is the one the client sees
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"the reply would be {size:,} bytes, over the {self.limits.max_reply_bytes:,}-byte message limit "
                f"(--max-message-mib): send fewer items per request, or ask for RECONSTRUCTION_FORMAT_NONE",
            )
        if self.metrics is not None:
            self.metrics.decode_seconds.observe(time.perf_counter() - t0)
            self.metrics.decoded_items.inc(resp.count)
            self.metrics.decoded_bytes.inc(len(request.codes.data))
        return resp

    async def _decode_checked(
        self, lb: LoadedBundle, request: pb.DecodeRequest, cost: Cost, context: grpc.aio.ServicerContext
    ) -> pb.DecodeResponse:
        codec = lb.codec
        observe = self.metrics.batch_items.observe if self.metrics is not None else None
        batcher = batcher_of(lb, self.executor, self.batching, observe)
        large = cost.graph_bytes > RELEASE_BYTES
        n = request.codes.count
        split = cost.threads > 1 and Codec.split_runs(n, cost.threads) > 1
        if not batcher.enabled or n >= batcher.max_items or cost.run_items < n or large or split:
            # Decoded whole, every step split over the decode threads when the budgets allow it (cost.threads):
            # unpacking, entropy decoding and table selection too, not only the decoder graph (cloud/batching.py).
            payloads = from_batch(codec, request.codes)
            originals = await run_checked(context, self.executor, checked_originals, codec, request, payloads)
            try:
                rec = await batcher.decode(
                    payloads, cost.run_items, large, self.workers if cost.threads > 1 else None
                )
            except (PayloadError, CodecError) as exc:
                code = (
                    grpc.StatusCode.INVALID_ARGUMENT
                    if isinstance(exc, PayloadError)
                    else grpc.StatusCode.FAILED_PRECONDITION
                )
                await context.abort(code, str(exc))
            except Exception as exc:  # an ORT failure on well-formed codes is our bug, not the caller's
                log.exception("decoding failed")
                await context.abort(grpc.StatusCode.INTERNAL, f"decoding failed: {type(exc).__name__}")
            return await run_checked(context, self.executor, respond, codec, request, rec, originals)
        if request.codes.count <= SMALL:  # a few items: unpacking them here is cheaper than a thread hop
            try:
                codes, side, originals = prepare(codec, request)
            except PayloadError as exc:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        else:
            codes, side, originals = await run_checked(context, self.executor, prepare, codec, request)
        try:
            rec = await batcher.synthesise(codes, side, cost.run_items, cost.graph_bytes > RELEASE_BYTES)
        except Exception as exc:  # an ORT failure on well-formed codes is our bug, not the caller's
            log.exception("decoder graph failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"decoding failed: {type(exc).__name__}")
        if len(rec) <= SMALL:  # a few items: cheaper here than a thread hop
            return respond(codec, request, rec, originals)
        return await run_checked(context, self.executor, respond, codec, request, rec, originals)

    async def Decode(self, request, context):
        return await self._decode_one(request, context)

    async def DecodeStream(self, request_iterator: AsyncIterator[pb.DecodeRequest], context):
        """Replies in request order; up to --stream-window requests of the stream decode at once, so a device
        that pipelines single items gets them batched (cloud/batching.py)."""
        replies = in_order(
            request_iterator,
            context,
            self._admit,
            self._work,
            self.batching.stream_window,
            self.stream_replies,
        )
        try:
            # Closed at once when a write fails (the client went away, or did not read within --write-timeout):
            # what its requests hold comes back now, before the call ends.
            async with contextlib.aclosing(replies):
                async for reply in replies:
                    # Returns once the client's flow-control window has taken it.
                    await write_within(context, reply, self.write_timeout)
        except WriteTimeout as exc:
            await end_unread(context, exc)  # the stream budget is back already: others need not wait for this

    async def ModelInfo(self, request, context):
        bundles = []
        for lb in self.registry.entries():
            info = pb.BundleInfo(
                bundle_id=lb.bundle_id, manifest_json=lb.manifest_json, name=lb.name, version=lb.version
            )
            if self.audit is not None:
                info.audit.CopyFrom(self.audit.figures(lb.bundle_id))
            bundles.append(info)
        return pb.ModelInfoResponse(bundles=bundles)

"""The Decoding gRPC service: Decode, DecodeStream, ModelInfo.

A DecodeRequest's payloads go through the bundle's ``Codec`` (latent_codec/codec.py), the one
decode path; when the request carries originals, the reply carries the error of what the caller
receives (uint8-rounded for uint8 data). Domain errors map to status codes naming the field.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc
import numpy as np

from latent_codec import metrics
from latent_codec.codec import Codec, from_tensor, to_tensor
from latent_codec.errors import CodecError, PayloadError
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

from .bundles import BundleRegistry, LoadedBundle

log = logging.getLogger(__name__)

MAX_BATCH_ITEMS = 65536  # bounds memory per request; clients send batches of hundreds
FORMATS = (pb.RECONSTRUCTION_FORMAT_UINT8, pb.RECONSTRUCTION_FORMAT_FLOAT32, pb.RECONSTRUCTION_FORMAT_NONE)


def payloads_of(batch: pb.CodeBatch, codec: Codec) -> list[bytes]:
    if batch.count == 0:
        raise PayloadError("codes.count is 0: send at least one item")
    if batch.count > MAX_BATCH_ITEMS:
        raise PayloadError(
            f"codes.count {batch.count} exceeds the limit of {MAX_BATCH_ITEMS} items per batch"
        )
    return codec.from_batch(batch)


def reconstruction_tensor(codec: Codec, rec_unit: np.ndarray, fmt: int, raw: np.ndarray | None = None):
    """The reply's reconstructions in the requested format (raw: codec.unscale(rec_unit), if already computed)."""
    if fmt == pb.RECONSTRUCTION_FORMAT_NONE:
        return None
    if fmt == pb.RECONSTRUCTION_FORMAT_FLOAT32:
        return to_tensor(rec_unit.astype(np.float32))
    return to_tensor(codec.unscale(rec_unit) if raw is None else raw)


def decode_request(codec: Codec, req: pb.DecodeRequest) -> pb.DecodeResponse:
    payloads = payloads_of(req.codes, codec)
    originals = None
    if req.HasField("originals"):
        originals = from_tensor(req.originals, "originals")
        want = [len(payloads), *codec.input.shape]
        if list(originals.shape) != want:
            raise PayloadError(
                f"originals.shape is {list(originals.shape)}, expected {want} (count x manifest input.shape)"
            )
        if originals.dtype.name != codec.input.dtype:
            raise PayloadError(
                f"originals.dtype is {originals.dtype.name}, the manifest's input dtype is {codec.input.dtype}"
            )
    if req.reconstruction_format not in FORMATS:
        raise PayloadError(f"reconstruction_format {req.reconstruction_format} is unknown")
    rec = codec.decode(payloads, unit=True)
    float_reply = req.reconstruction_format == pb.RECONSTRUCTION_FORMAT_FLOAT32
    raw = None if float_reply else codec.unscale(rec)  # once: for the reply and for the error
    resp = pb.DecodeResponse(bundle_id=codec.bundle_id, count=len(payloads))
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


def lookup(registry: BundleRegistry, bundle_id: str, context: grpc.ServicerContext) -> LoadedBundle:
    """The bundle named by a request, or abort: INVALID_ARGUMENT when unnamed, NOT_FOUND when not held."""
    if not bundle_id:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "codes.bundle_id is empty")
    lb = registry.get(bundle_id)
    if lb is None:
        held = ", ".join(registry.ids()) or "none"
        context.abort(
            grpc.StatusCode.NOT_FOUND, f"bundle {bundle_id!r} is not held by this server (held: {held})"
        )
    return lb  # type: ignore[return-value]  # abort raises


class DecodingService(pb_grpc.DecodingServicer):
    def __init__(self, registry: BundleRegistry):
        self.registry = registry

    def _decode_one(self, request: pb.DecodeRequest, context) -> pb.DecodeResponse:
        if not request.HasField("codes"):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "codes is missing")
        lb = lookup(self.registry, request.codes.bundle_id, context)
        try:
            return decode_request(lb.codec, request)
        except PayloadError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except CodecError as exc:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except Exception as exc:  # an ORT failure on well-formed input is our bug, not the caller's
            log.exception("decode failed")
            context.abort(grpc.StatusCode.INTERNAL, f"decoding failed: {type(exc).__name__}")
        raise AssertionError("unreachable: abort raises")

    def Decode(self, request, context):
        return self._decode_one(request, context)

    def DecodeStream(self, request_iterator: Iterator[pb.DecodeRequest], context):
        for request in request_iterator:
            yield self._decode_one(request, context)

    def ModelInfo(self, request, context):
        bundles = []
        for bundle_id in self.registry.ids():
            lb = self.registry.get(bundle_id)
            if lb is not None:
                bundles.append(pb.BundleInfo(bundle_id=bundle_id, manifest_json=lb.manifest_json))
        return pb.ModelInfoResponse(bundles=bundles)

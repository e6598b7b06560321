"""The Codec gRPC service: maps requests to decoding and domain errors to status codes."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import grpc

from latent_codec.errors import CodecError, PayloadError
from latent_codec.wire.aecodec.v1 import codec_pb2 as pb
from latent_codec.wire.aecodec.v1 import codec_pb2_grpc as pb_grpc

from .bundles import BundleRegistry, LoadedBundle
from .decoding import decode_request

log = logging.getLogger(__name__)


def _abort(context: grpc.ServicerContext, code: grpc.StatusCode, message: str):
    context.abort(code, message)  # raises; the server keeps serving


class CodecService(pb_grpc.CodecServicer):
    def __init__(self, registry: BundleRegistry, ingest=None):
        self.registry = registry
        self.ingest = ingest  # cloud.ingest.IngestService, when a store is configured

    def _bundle(self, bundle_id: str, context) -> LoadedBundle:
        if not bundle_id:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "codes.bundle_id is empty")
        lb = self.registry.get(bundle_id)
        if lb is None:
            _abort(
                context,
                grpc.StatusCode.NOT_FOUND,
                f"bundle {bundle_id!r} is not held by this server (held: {', '.join(self.registry.ids()) or 'none'})",
            )
        return lb

    def _decode_one(self, request: pb.DecodeRequest, context) -> pb.DecodeResponse:
        if not request.HasField("codes"):
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, "codes is missing")
        lb = self._bundle(request.codes.bundle_id, context)
        try:
            return decode_request(lb, request)
        except PayloadError as exc:
            _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except CodecError as exc:
            _abort(context, grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        except Exception as exc:  # an ORT failure on well-formed input is our bug, not the caller's
            log.exception("decode failed")
            _abort(context, grpc.StatusCode.INTERNAL, f"decoding failed: {type(exc).__name__}")

    def Decode(self, request, context):
        return self._decode_one(request, context)

    def DecodeStream(self, request_iterator: Iterator[pb.DecodeRequest], context):
        for request in request_iterator:
            yield self._decode_one(request, context)

    def ModelInfo(self, request, context):
        return pb.ModelInfoResponse(
            bundles=[
                pb.BundleInfo(bundle_id=i, manifest_json=self.registry.get(i).manifest_json)
                for i in self.registry.ids()
            ]
        )

    # Durable ingest: delegated to cloud.ingest when the server has a store.
    def _need_store(self, context):
        if self.ingest is None:
            _abort(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                "this server was started without a store (--store); ingest and fetch are disabled",
            )

    def Ingest(self, request_iterator, context):
        self._need_store(context)
        yield from self.ingest.ingest(request_iterator, context)

    def Fetch(self, request, context):
        self._need_store(context)
        yield from self.ingest.fetch(request, context)

    def ListStored(self, request, context):
        self._need_store(context)
        return self.ingest.list_stored(request, context)

"""gRPC channel to the cloud, with errors a person can read."""
from __future__ import annotations

import grpc

from latent_codec.errors import CodecError
from latent_codec.wire.aecodec.v1 import codec_pb2 as pb
from latent_codec.wire.aecodec.v1 import codec_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class CloudError(CodecError):
    """The cloud is unreachable or refused a request (the message carries its status)."""


def open_channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(
        target,
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)],
    )


def describe(exc: grpc.RpcError, target: str) -> str:
    code = exc.code()
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return f"cannot reach the cloud at {target} ({code.name}: {exc.details()})"
    return f"cloud at {target} refused the request: {code.name}: {exc.details()}"


class CloudClient:
    def __init__(self, target: str, connect_timeout: float = 10.0):
        self.target = target
        self.channel = open_channel(target)
        self.stub = pb_grpc.CodecStub(self.channel)
        self.connect_timeout = connect_timeout

    def wait_ready(self) -> None:
        try:
            grpc.channel_ready_future(self.channel).result(timeout=self.connect_timeout)
        except grpc.FutureTimeoutError:
            raise CloudError(f"cannot reach the cloud at {self.target} (no connection within "
                             f"{self.connect_timeout:g} s)") from None

    def model_info(self) -> dict[str, str]:
        try:
            resp = self.stub.ModelInfo(pb.ModelInfoRequest(), timeout=self.connect_timeout)
        except grpc.RpcError as exc:
            raise CloudError(describe(exc, self.target)) from None
        return {b.bundle_id: b.manifest_json for b in resp.bundles}

    def decode_stream(self, requests, timeout: float | None = None):
        """Yield one DecodeResponse per request, in order; CloudError on failure."""
        try:
            yield from self.stub.DecodeStream(requests, timeout=timeout)
        except grpc.RpcError as exc:
            raise CloudError(describe(exc, self.target)) from None

    def close(self) -> None:
        self.channel.close()

"""Requests and calls the server tests share: a DecodeRequest of real payloads, the services reflection lists."""

from __future__ import annotations

import grpc

from latent_codec.codec import Codec
from latent_codec.container import to_batch, to_tensor
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb


def make_request(bundle_dir, x, with_originals=True, fmt=pb.RECONSTRUCTION_FORMAT_UINT8):
    """A DecodeRequest of the bundle's payloads of items x (with the originals), and the payloads."""
    enc = Codec.open(bundle_dir)
    payloads = enc.encode(x)
    req = pb.DecodeRequest(codes=to_batch(enc, payloads), reconstruction_format=fmt)
    if with_originals:
        req.originals.CopyFrom(to_tensor(x))
    return req, payloads


def reflected_services(port: int) -> list[str]:
    """The service names a server lists through grpc.reflection (what grpcurl `list` shows)."""
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        (resp,) = list(stub.ServerReflectionInfo(iter([req]), timeout=5))
    return sorted(s.name for s in resp.list_services_response.service)

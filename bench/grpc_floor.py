"""The floor of a gRPC call in Python: a grpc.aio server with no interceptors and empty replies.

    python -m bench.grpc_floor            # prints its port, serves until killed

ModelInfo answers a unary call, DecodeStream each message of a stream, with nothing decoded. bench/serving.py
measures its CPU per call (and per stream message) next to the real server's, so the table shows how much of a
single-item request's cost is grpcio's own work, which no change to cloud/ can remove.
"""

from __future__ import annotations

import argparse
import asyncio
import sys


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.grpc_floor", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--address", default="127.0.0.1:0")
    return p.parse_args(argv)


async def serve(address: str) -> None:
    import grpc

    from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
    from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

    class Empty(pb_grpc.DecodingServicer):
        async def ModelInfo(self, request, context):
            return pb.ModelInfoResponse()

        async def DecodeStream(self, request_iterator, context):
            async for _ in request_iterator:
                await context.write(pb.DecodeResponse())

    server = grpc.aio.server()
    pb_grpc.add_DecodingServicer_to_server(Empty(), server)
    port = server.add_insecure_port(address)
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    asyncio.run(serve(parse_args(argv).address))
    return 0


if __name__ == "__main__":
    sys.exit(main())

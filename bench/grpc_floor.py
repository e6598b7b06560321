"""The floor of a gRPC call in Python: a grpc.aio server with no interceptors and empty replies.

    python -m bench.grpc_floor            # prints its port, serves until killed

ModelInfo answers a unary call, DecodeStream each message of a stream, with nothing decoded. bench/serving.py
measures its CPU per call (and per stream message) next to the real server's, so the table shows how much of a
single-item request's cost is grpcio's own work, which no change to cloud/ can remove.

Decode stands in for a perfect server: it waits --decode-ms on a worker thread (as the real server waits for its
decode threads, no CPU used) and answers with a reply of --reply-bytes. One client calling it back to back shows
what a lone client's round trips cost here on top of the decoding itself.
"""

from __future__ import annotations

import argparse
import asyncio
import sys


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.grpc_floor", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--address", default="127.0.0.1:0")
    p.add_argument("--decode-ms", type=float, default=0.0, help="Decode: how long it waits before answering")
    p.add_argument("--reply-bytes", type=int, default=0, help="Decode: the reply's reconstruction bytes")
    return p.parse_args(argv)


async def serve(address: str, decode_ms: float = 0.0, reply_bytes: int = 0) -> None:
    import time

    import grpc

    from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
    from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

    reply = pb.DecodeResponse(reconstructions=pb.Tensor(data=bytes(reply_bytes)))

    class Empty(pb_grpc.DecodingServicer):
        async def Decode(self, request, context):
            if decode_ms > 0:
                await asyncio.get_running_loop().run_in_executor(None, time.sleep, decode_ms / 1000)
            return reply

        async def ModelInfo(self, request, context):
            return pb.ModelInfoResponse()

        async def DecodeStream(self, request_iterator, context):
            async for _ in request_iterator:
                await context.write(pb.DecodeResponse())

    limit = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    server = grpc.aio.server(options=limit)
    pb_grpc.add_DecodingServicer_to_server(Empty(), server)
    port = server.add_insecure_port(address)
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    asyncio.run(serve(args.address, args.decode_ms, args.reply_bytes))
    return 0


if __name__ == "__main__":
    sys.exit(main())

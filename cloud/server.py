"""Start the decoding server.

    python -m cloud.server --bundles bundles/ --address 127.0.0.1:50051

Loads every bundle under --bundles (hash-verified), registers the Codec
service, grpc.health.v1 and reflection, and shuts down cleanly on SIGTERM or
SIGINT (in-flight RPCs get a grace period).
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from latent_codec.errors import CodecError
from latent_codec.wire.aecodec.v1 import codec_pb2 as pb
from latent_codec.wire.aecodec.v1 import codec_pb2_grpc as pb_grpc

from .bundles import BundleRegistry
from .interceptors.logging_interceptor import LoggingInterceptor
from .service import CodecService

log = logging.getLogger("cloud")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Codec"].full_name
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass
class Running:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    service: CodecService

    def stop(self, grace: float = 5.0) -> None:
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self.service.ingest is not None:
            self.service.ingest.close()


def build_server(bundles: Path | str, address: str = "127.0.0.1:0", workers: int = 8, threads: int = 0,
                 store: str | None = None) -> Running:
    """Build and start a server; returns it with the bound port (address port 0 = ephemeral)."""
    registry = BundleRegistry(threads=threads)
    registry.load_dir(bundles)
    ingest = None
    if store:
        from .ingest import IngestService  # only with a store

        ingest = IngestService.from_url(store, registry)
    service = CodecService(registry, ingest)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers),
        interceptors=[LoggingInterceptor()],
        options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                 ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)],
    )
    pb_grpc.add_CodecServicer_to_server(service, server)
    hs = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise CodecError(f"cannot bind {address}")
    server.start()
    hs.set("", health_pb2.HealthCheckResponse.SERVING)
    hs.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    return Running(server, port, hs, service)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="aecodec-cloud", description=__doc__.split("\n")[0])
    p.add_argument("--bundles", required=True, type=Path, help="a bundle directory, or a directory of bundles")
    p.add_argument("--address", default="127.0.0.1:50051", help="host:port to listen on (port 0 = any free port)")
    p.add_argument("--workers", type=int, default=8, help="RPC worker threads")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads per decoder (0 = default)")
    p.add_argument("--store", default=None,
                   help="where ingested items are kept: a SQLite file path or sqlite:///path, or postgresql://...")
    p.add_argument("--port-file", type=Path, default=None, help="write the bound port here once serving")
    p.add_argument("--log-level", default="INFO")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s",
                        stream=sys.stderr)
    try:
        running = build_server(args.bundles, args.address, args.workers, args.threads, args.store)
    except CodecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:  # grpc raises RuntimeError when a port cannot be bound
        print(f"error: cannot listen on {args.address} ({exc})", file=sys.stderr)
        return 2
    ids = running.service.registry.ids()
    log.info("serving %d bundle(s) on port %d: %s", len(ids), running.port, ", ".join(ids))
    if args.port_file:
        tmp = args.port_file.with_suffix(".tmp")
        tmp.write_text(str(running.port))
        tmp.replace(args.port_file)
    stop = threading.Event()

    def _on_signal(signum, _frame):
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    stop.wait()
    running.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Ask a cloud server's grpc.health.v1 service whether it is SERVING; exit 0 if so, 1 if not.

    python -m cloud.healthcheck --address 127.0.0.1:50051

For container HEALTHCHECKs and scripts: no grpcurl or grpc_health_probe binary
needs to be in the image. Health is open even when the server requires tokens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="aecodec-healthcheck", description=__doc__.split("\n")[0])
    p.add_argument("--address", default="127.0.0.1:50051", help="server host:port")
    p.add_argument("--service", default="", help="service name to ask about ('' = the whole server)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds")
    p.add_argument("--tls-ca", type=Path, default=None, help="connect with TLS, trusting this CA (PEM)")
    p.add_argument("--tls-server-name", default=None, help="name to verify in the server certificate")
    return p.parse_args(argv)


def check(
    address: str,
    service: str = "",
    timeout: float = 3.0,
    ca_pem: bytes | None = None,
    server_name: str | None = None,
) -> str:
    """The status name (SERVING, NOT_SERVING, ...) or 'UNREACHABLE: why'."""
    opts = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    channel = (
        grpc.secure_channel(address, grpc.ssl_channel_credentials(ca_pem), options=opts)
        if ca_pem is not None
        else grpc.insecure_channel(address)
    )
    try:
        resp = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    except grpc.RpcError as exc:
        return f"UNREACHABLE: {exc.code().name}: {exc.details()}"
    finally:
        channel.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ca = None
    if args.tls_ca:
        try:
            ca = args.tls_ca.read_bytes()
        except OSError as exc:
            print(f"error: --tls-ca: cannot read {args.tls_ca} ({exc.strerror or exc})", file=sys.stderr)
            return 2
    status = check(args.address, args.service, args.timeout, ca, args.tls_server_name)
    print(f"{args.address}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    sys.exit(main())

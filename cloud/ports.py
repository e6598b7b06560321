"""Port probing before grpc binds: a port in use is a one-line error, not a C-level log line and a traceback."""

from __future__ import annotations

import errno
import socket

from latent_codec.errors import CodecError


def check_address_free(address: str) -> None:
    """A one-line error when another process listens on address (before grpc tries, and logs a C-level error)."""
    host, _, port = address.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return
    try:
        infos = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise CodecError(f"cannot listen on {address}: {exc.strerror}") from None
    for family, kind, proto, _name, addr in infos:
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
            )  # as grpc does: TIME_WAIT is not "in use"
            try:
                sock.bind(addr)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise CodecError(
                        f"cannot listen on {address}: the address is in use (another server? --reuse-port "
                        f"shares a port on purpose)"
                    ) from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the kernel's pick), for a process that must be told its port before
    it starts (benchmarks, tests); a server started in this process binds port 0 and reports its port instead."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])

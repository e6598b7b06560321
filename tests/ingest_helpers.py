"""Shared pieces of the ingest tests: a PostgreSQL schema per session, real server/edge processes."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from conftest import IN_CI, ROOT

PG_BASE = os.environ.get("AECODEC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_admin():
    import psycopg

    return psycopg.connect(PG_BASE, autocommit=True, connect_timeout=3)


@pytest.fixture(scope="session")
def pg_url():
    """A fresh schema in the test database, as a store URL; dropped after the session.

    Without a server: skip with the reason, except under CI=true, where it fails.
    """
    try:
        import psycopg  # noqa: F401

        admin = _pg_admin()
    except Exception as exc:  # ImportError or OperationalError: say which
        msg = f"no PostgreSQL at {PG_BASE} ({type(exc).__name__}: {str(exc).strip()[:200]}); run `make postgres`"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    schema = f"aecodec_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    finally:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()


def pg_fresh_schema() -> str:
    """Not a fixture: a second schema for a test that needs an empty database (dropped by the caller)."""
    schema = f"aecodec_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with _pg_admin() as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    return schema


def pg_drop_schema(schema: str) -> None:
    with _pg_admin() as admin:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def fixed_size_variant(bundle: Path, out_dir: Path) -> Path:
    """The same trained model with plain (not entropy-coded) codes: a fixed payload size per item."""
    from latent_codec.manifest import DECODER_NAME, ENCODER_NAME, Manifest, write_manifest

    dst = out_dir / (bundle.name + "-fixed")
    if dst.exists():
        return dst
    shutil.copytree(bundle, dst)
    m = Manifest.from_json((dst / "manifest.json").read_text())
    m.payload.prior = None
    m.seal((dst / ENCODER_NAME).read_bytes(), (dst / DECODER_NAME).read_bytes())
    write_manifest(dst, m)
    return dst


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env


class ServerProcess:
    """`python -m cloud.server` in a child process; start() waits until it writes its port."""

    def __init__(self, bundles: Path, store: str, workdir: Path, port: int = 0):
        self.bundles, self.store, self.workdir, self.port = bundles, store, workdir, port
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> ServerProcess:
        port_file = self.workdir / f"port-{uuid.uuid4().hex[:6]}"
        self.log = open(self.workdir / "server.log", "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cloud.server",
                "--bundles",
                str(self.bundles),
                "--store",
                self.store,
                "--address",
                f"127.0.0.1:{self.port}",
                "--port-file",
                str(port_file),
                "--log-level",
                "WARNING",
                "--workers",
                "4",
            ],
            cwd=ROOT,
            env=child_env(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while not port_file.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}: {self.log_text()[-2000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"server did not start within {timeout} s: {self.log_text()[-2000:]}")
            time.sleep(0.05)
        self.port = int(port_file.read_text())
        return self

    def log_text(self) -> str:
        return (self.workdir / "server.log").read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        if self.proc is not None:
            self.log.close()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


def edge_cmd(bundle: Path, target: str, data: Path, spool: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "edge.cli",
        "ingest",
        "--bundle",
        str(bundle),
        "--server",
        target,
        "--data",
        str(data),
        "--spool",
        str(spool),
        "--source-id",
        "cam",
        "--device-id",
        "phone-1",
        "--no-progress",
        *extra,
    ]


def start_edge(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def wait_until(pred, timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")

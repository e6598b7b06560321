"""The server as a real process: starts from the CLI, answers health checks, stops cleanly on signals."""

from __future__ import annotations

import signal
import subprocess
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.helpers import ROOT, server_cmd


def start(bundles_dir, tmp_path):
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        server_cmd(bundles_dir, "--port-file", str(port_file)),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server did not start: {proc.communicate()[1]}")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_clean_shutdown_on_signal(bundles_dir, tmp_path, sig):
    proc, port = start(bundles_dir, tmp_path)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "shutting down" in err and "stopped" in err and "Traceback" not in err


def test_bad_bundle_dir_is_one_line_error(tmp_path):
    proc = subprocess.run(
        server_cmd(tmp_path / "none"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: bundle directory not found")

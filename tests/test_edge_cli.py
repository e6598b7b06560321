"""The real edge CLI in a subprocess against a real server: report, no torch, one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, fashion_test_items

# Runs edge.cli.main and then checks torch never got imported (the device has no torch).
RUNNER = (
    "import sys\n"
    "from edge.cli import main\n"
    "rc = main(sys.argv[1:])\n"
    "if 'torch' in sys.modules:\n"
    "    print('TORCH IMPORTED BY EDGE', file=sys.stderr); sys.exit(99)\n"
    "sys.exit(rc)\n"
)


def run_edge(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", RUNNER, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env=env,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_evaluate_reports_bytes_ratio_and_quality(server, fashion_bundle, tmp_path):
    out = tmp_path / "report.json"
    proc = run_edge(
        "evaluate",
        "--bundle",
        str(fashion_bundle),
        "--server",
        f"127.0.0.1:{server.port}",
        "--limit",
        "1000",
        "--batch-size",
        "300",
        "--no-progress",
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["items"] == 1000 and r["raw_bytes"] == 1000 * 784 and r["payload_bytes"] == 1000 * 32
    assert r["ratio_payload"] == pytest.approx(24.5)
    # Wire bytes: serialised requests, slightly more than the payloads (framing), well under raw.
    assert 1000 * 32 < r["wire_bytes"] < 1000 * 33
    assert r["ratio_wire"] == pytest.approx(784_000 / r["wire_bytes"])
    assert 12 < r["psnr"] < 40 and r["mse"] == pytest.approx(10 ** (-r["psnr"] / 10), rel=1e-9)
    for label in ("ratio raw/payload", "ratio raw/wire", "PSNR (server)", "wire bytes"):
        assert label in proc.stdout


def test_keep_reconstructions(server, fashion_bundle, tmp_path):
    out = tmp_path / "rec.npy"
    proc = run_edge(
        "evaluate",
        "--bundle",
        str(fashion_bundle),
        "--server",
        f"127.0.0.1:{server.port}",
        "--limit",
        "20",
        "--no-progress",
        "--keep-reconstructions",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    rec = np.load(out)
    assert rec.shape == (20, 1, 28, 28) and rec.dtype == np.uint8
    x = fashion_test_items(20).astype(float)
    assert np.abs(rec - x).mean() < np.abs(x - x.mean()).mean()  # closer than a flat grey image


def test_missing_bundle(tmp_path):
    proc = run_edge("evaluate", "--bundle", str(tmp_path / "nope"), "--server", "127.0.0.1:1")
    assert_one_line_error(proc, "bundle not found", "nope")


def test_corrupt_bundle(fashion_bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(fashion_bundle, b)
    (b / "encoder.onnx").write_bytes(b"\x00garbage")
    assert_one_line_error(
        run_edge("evaluate", "--bundle", str(b), "--server", "127.0.0.1:1"), "content hash mismatch"
    )


def test_wrong_shape_inputs(server, fashion_bundle, tmp_path):
    np.save(tmp_path / "big.npy", np.zeros((3, 32, 32), np.uint8))
    proc = run_edge(
        "evaluate",
        "--bundle",
        str(fashion_bundle),
        "--server",
        f"127.0.0.1:{server.port}",
        "--data",
        str(tmp_path / "big.npy"),
    )
    assert_one_line_error(proc, "1x32x32", "expects 1x28x28")


def test_unreachable_server(fashion_bundle):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_edge(
        "evaluate",
        "--bundle",
        str(fashion_bundle),
        "--server",
        f"127.0.0.1:{port}",
        "--connect-timeout",
        "2",
        "--limit",
        "10",
    )
    assert_one_line_error(proc, "cannot reach the cloud", f"127.0.0.1:{port}")


def test_bundle_not_held_by_server(server, tmp_path):
    from tests.conftest import train_and_export

    other = train_and_export(
        tmp_path, "dense", {"code_dim": 4}, data="digits", epochs=1, limit=200, test_limit=50, fit_items=200
    )
    proc = run_edge(
        "evaluate",
        "--bundle",
        str(other),
        "--server",
        f"127.0.0.1:{server.port}",
        "--data",
        "digits",
        "--limit",
        "10",
    )
    assert_one_line_error(proc, "does not hold bundle")

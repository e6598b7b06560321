"""The edge CLI in a subprocess, failing if it imported torch, and the shape of its one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.helpers import ROOT

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

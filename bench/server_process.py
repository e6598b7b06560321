"""`python -m cloud.server` as a child process: what the benchmarks and the process tests start and signal.

One implementation for bench/hostile.py, bench/serving.py and tests/helpers.py: start() waits until the
server writes its port (--port-file), kill() sends a real signal, rss_kib() reads its memory from /proc, and
with metrics=True decoded_items() reads its decode counter, so callers wait for work instead of sleeping.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from cloud.ports import free_port

ROOT = Path(__file__).resolve().parents[1]


def child_env() -> dict:
    """The environment for a child that imports the project from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env


class ServerProcess:
    """`python -m cloud.server` in a child process; start() waits until it writes its port."""

    def __init__(
        self,
        bundles: Path,
        store: str | None,
        workdir: Path,
        port: int = 0,
        extra: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        metrics: bool = False,
    ):
        self.bundles, self.store, self.workdir, self.port = bundles, store, workdir, port
        self.extra = extra  # more `python -m cloud.server` flags
        self.metrics_port = free_port() if metrics else None  # Prometheus /metrics on 127.0.0.1, if asked for
        self.env = env or {}  # more environment variables
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
                *(["--store", self.store] if self.store else []),
                "--address",
                f"127.0.0.1:{self.port}",
                "--port-file",
                str(port_file),
                "--log-level",
                "WARNING",
                "--workers",
                "2",
                *(["--metrics-address", f"127.0.0.1:{self.metrics_port}"] if self.metrics_port else []),
                *self.extra,
            ],
            cwd=ROOT,
            env={**child_env(), **self.env},
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

    def kill(self, sig: int = signal.SIGKILL) -> int | None:
        """Send sig (SIGKILL by default) and wait; returns the exit code."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)
        if self.proc is not None and not self.log.closed:
            self.log.close()
        return self.proc.returncode if self.proc is not None else None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rss_kib(self, field: str = "VmRSS") -> int:
        """The child's resident memory (VmRSS, or VmHWM for its peak) in KiB, from /proc."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} for pid {self.proc.pid}")

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the server's Prometheus metrics (needs metrics=True); 0 when it has none yet."""
        import urllib.request

        assert self.metrics_port is not None, "start the server with metrics=True"
        want = {f'{k}="{v}"' for k, v in labels.items()}
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            for line in r.read().decode().splitlines():
                series, _, value = line.rpartition(" ")
                metric, _, rest = series.partition("{")
                if metric == name and want <= set(rest.rstrip("}").split(",")) - {""}:
                    return float(value)
        return 0.0

    def decoded_items(self) -> float:
        """Items the server has decoded so far (its aecodec_decoded_items counter)."""
        return self.metric("aecodec_decoded_items_total")

    def page_faults(self) -> int:
        """The child's minor page faults so far (each a fresh page mapped in and zeroed), from /proc."""
        assert self.proc is not None
        return int(Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[7])

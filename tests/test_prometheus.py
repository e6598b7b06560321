"""Prometheus in the stack: the real promtool checks deploy/prometheus/, its rule unit tests run, and a real
Prometheus scrapes a real server process and returns a series through its HTTP API."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.parse
import urllib.request

import grpc
import pytest

from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
from tests.helpers import IN_CI, ROOT, CloudStub, ServerProcess, free_port, tiny_bundle, wait_until

PROM = ROOT / "deploy" / "prometheus"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        msg = f"needs {tool} (Debian package prometheus; `make prometheus` installs it)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def test_promtool_accepts_the_config_and_the_alert_rules_fire_as_tested(tmp_path):
    promtool = need("promtool")
    for args in (
        ["check", "config", str(PROM / "prometheus.yml")],
        ["test", "rules", str(PROM / "rules_test.yml")],
    ):
        proc = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, cwd=PROM)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    # The checks can fail: a rule with a syntax error is refused.
    (tmp_path / "rules.yml").write_text((PROM / "rules.yml").read_text().replace("> 0.05", "> > 0.05"))
    bad = subprocess.run(
        [promtool, "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode != 0


@pytest.mark.slow
def test_a_real_prometheus_scrapes_a_real_server(tmp_path_factory, tmp_path):
    prometheus = need("prometheus")
    bundle = tiny_bundle(tmp_path_factory)
    mport, pport = free_port(), free_port()
    server = ServerProcess(bundle, None, tmp_path, extra=("--metrics-address", f"127.0.0.1:{mport}")).start()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{PROM / 'rules.yml'}]\n"
        f"scrape_configs: [{{job_name: aecodec, static_configs: [{{targets: ['127.0.0.1:{mport}']}}]}}]\n"
    )
    prom = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{pport}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "prometheus.log", "wb"),
    )

    def query(expr: str) -> list:
        url = f"http://127.0.0.1:{pport}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())["data"]["result"]
        except OSError:
            return []

    try:
        with grpc.insecure_channel(server.target) as ch:
            for _ in range(3):
                CloudStub(ch).ModelInfo(pb.ModelInfoRequest(), timeout=10)
        series = 'aecodec_grpc_server_handled_total{grpc_method="ModelInfo",grpc_code="OK"}'
        result = wait_until(lambda: query(series), 60, "Prometheus to scrape the server")
        assert float(result[0]["value"][1]) == 3.0
        up = query('up{job="aecodec"}')
        assert up and up[0]["value"][1] == "1"
        rules = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{pport}/api/v1/rules", timeout=5).read())
        names = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
        assert {"AecodecErrorRateHigh", "AecodecAuditedQualityDropped", "AecodecReplicaDown"} <= names
    finally:
        prom.send_signal(signal.SIGTERM)
        prom.wait(timeout=30)
        server.kill(signal.SIGTERM)

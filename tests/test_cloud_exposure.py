"""Exposing the cloud: bearer-token auth, TLS, concurrency and message-size limits, the health-check entry point.

Real servers on 127.0.0.1 (ephemeral ports), the real edge CLI in subprocesses,
a self-signed certificate made with the openssl CLI for each session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cloud.healthcheck import main as healthcheck_main
from cloud.interceptors.auth_interceptor import AuthInterceptor
from cloud.server import build_server
from cloud.tenancy import load_tokens
from edge.channel import CloudError, Security
from edge.client import CloudClient
from latent_codec import datasets
from latent_codec.errors import CodecError
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
from tests.helpers import ROOT, CloudStub, server_cmd, tiny_bundle, wait_for_file
from tests.helpers.edge_cli import RUNNER, assert_one_line_error
from tests.helpers.requests import make_request


@pytest.fixture(scope="module")
def digits_bundle(tmp_path_factory):
    """Shadows conftest's: a few epochs are enough to test transport and auth."""
    return tiny_bundle(tmp_path_factory)


TOKENS = ["tok-alpha-0123456789", "tok-beta-9876543210"]
TOKEN_FILE = f"# cloud tokens\n{TOKENS[0]}   devices=*\n\n{TOKENS[1]} devices=*  # trusted gateways\n"


@pytest.fixture(scope="module")
def token_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("auth") / "tokens"
    p.write_text(TOKEN_FILE)
    return p


def _self_signed(d, name: str):
    """A self-signed certificate for 127.0.0.1 and localhost, made with the openssl CLI: (cert path, key path)."""
    crt, key = d / f"{name}.crt", d / f"{name}.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(crt),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return crt, key


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and localhost: (cert path, key path)."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is not installed")
    return _self_signed(tmp_path_factory.mktemp("tls"), "cloud")


@pytest.fixture(scope="module")
def other_cert(tmp_path_factory):
    """A second, unrelated self-signed certificate (a CA the server's certificate does not chain to)."""
    return _self_signed(tmp_path_factory.mktemp("tls-other"), "other")[0]


@pytest.fixture
def auth_server(digits_bundle, token_file, tmp_path):
    running = build_server(
        digits_bundle,
        "127.0.0.1:0",
        workers=4,
        store=str(tmp_path / "store.sqlite"),
        auth_tokens=load_tokens(token_file),
    )
    yield running
    running.stop(grace=1.0)


def digits_request(bundle, n: int = 20) -> pb.DecodeRequest:
    return make_request(bundle, datasets.load("digits", "test").x[:n])[0]


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def run_edge(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "AECODEC_TOKEN"}
    full_env.update({"PYTHONPATH": str(ROOT), **(env or {})})
    return subprocess.run(
        [sys.executable, "-c", RUNNER, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env=full_env,
    )


def _edge_args(command: str, bundle, target: str, limit: int, *extra: str) -> list[str]:
    """The edge CLI's arguments for `command` on the first `limit` digits against `target`."""
    return [
        command,
        "--bundle",
        str(bundle),
        "--server",
        target,
        "--data",
        "digits",
        "--limit",
        str(limit),
        "--no-progress",
        *extra,
    ]


# ---- auth -----------------------------------------------------------------------------------------------------
def test_calls_without_a_valid_token_are_unauthenticated(auth_server, digits_bundle):
    req = digits_request(digits_bundle)
    with grpc.insecure_channel(f"127.0.0.1:{auth_server.port}") as ch:
        stub = CloudStub(ch)
        cases = [
            (None, "missing authorization metadata"),
            ([("authorization", "Basic abc")], "must be 'Bearer"),
            (bearer("tok-alpha-012345678"), "invalid bearer token"),  # a prefix of a real token
            (bearer(TOKENS[0] + "x"), "invalid bearer token"),
        ]
        for metadata, why in cases:
            with pytest.raises(grpc.RpcError) as ei:
                stub.Decode(req, metadata=metadata, timeout=10)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED and why in ei.value.details()
        # every kind of RPC is guarded: server streaming, bidi streaming, unary
        with pytest.raises(grpc.RpcError) as ei:
            list(stub.DecodeStream(iter([req]), timeout=10))
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as ei:
            list(stub.Fetch(pb.FetchRequest(device_id="d"), timeout=10))
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as ei:
            stub.ListStored(pb.ListStoredRequest(), timeout=10)
        assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # both configured tokens work, and the scheme is case-insensitive
        for md in (bearer(TOKENS[0]), bearer(TOKENS[1]), [("authorization", f"bearer {TOKENS[1]}")]):
            assert stub.Decode(req, metadata=md, timeout=30).count == 20
        # health stays open for load balancers
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status
        assert status == health_pb2.HealthCheckResponse.SERVING


def test_auth_interceptor_rejects_empty_token_list():
    with pytest.raises(ValueError):
        AuthInterceptor([])


def test_edge_client_sends_the_token_on_every_kind_of_call(auth_server, digits_bundle):
    target = f"127.0.0.1:{auth_server.port}"
    client = CloudClient(target, Security(token=TOKENS[1]), connect_timeout=10)
    try:
        client.wait_ready()
        assert len(client.model_info()) == 1
        assert (
            sum(r.count for r in client.decode_stream(iter([digits_request(digits_bundle)] * 2), timeout=30))
            == 40
        )
    finally:
        client.close()
    anonymous = CloudClient(target, connect_timeout=10)
    try:
        with pytest.raises(CloudError, match="refused the credentials: missing authorization"):
            anonymous.model_info()
    finally:
        anonymous.close()


@pytest.mark.slow
def test_edge_cli_evaluate_and_ingest_with_token_file_and_env(
    auth_server, digits_bundle, token_file, tmp_path
):
    target = f"127.0.0.1:{auth_server.port}"
    base = _edge_args("evaluate", digits_bundle, target, 50)
    assert_one_line_error(run_edge(*base), "refused the credentials", "AECODEC_TOKEN")
    ok = run_edge(*base, "--auth-token-file", str(token_file))
    assert ok.returncode == 0, ok.stderr
    assert "items             50" in ok.stdout

    spool = str(tmp_path / "spool.sqlite")
    ingest = _edge_args("ingest", digits_bundle, target, 40, "--spool", spool, "--retry-for", "5")
    denied = run_edge(*ingest, env={"AECODEC_TOKEN": "wrong"})
    assert denied.returncode == 2 and "Traceback" not in denied.stderr
    assert "invalid bearer token" in denied.stderr and "40 items stay spooled" in denied.stderr
    done = run_edge(*ingest, env={"AECODEC_TOKEN": TOKENS[0]})
    assert done.returncode == 0, done.stderr
    assert "acknowledged      40" in done.stdout
    stored = auth_server.storage.store
    assert sum(s.items for s in stored.summaries()) == 40


def test_edge_security_flags(tmp_path, monkeypatch, cert):
    import argparse

    def ns(**kw):
        return argparse.Namespace(
            **{"auth_token_file": None, "tls": False, "tls_ca": None, "tls_server_name": None, **kw}
        )

    monkeypatch.delenv("AECODEC_TOKEN", raising=False)
    assert Security.from_args(ns()) == Security()
    assert Security.from_args(argparse.Namespace()) == Security()  # callers that predate the flags
    monkeypatch.setenv("AECODEC_TOKEN", " from-env ")
    assert Security.from_args(ns()).token == "from-env"
    f = tmp_path / "tok"
    f.write_text("# comment\n\n from-file \nsecond\n")
    assert Security.from_args(ns(auth_token_file=f)).token == "from-file"  # the file wins over the env
    sec = Security.from_args(ns(tls_ca=cert[0]))
    assert sec.tls and sec.root_certs == cert[0].read_bytes()
    assert Security.from_args(ns(tls=True)) == Security(token="from-env", tls=True)
    for kw, needle in [
        ({"auth_token_file": tmp_path / "none"}, "--auth-token-file: cannot read"),
        ({"tls_ca": tmp_path / "none"}, "--tls-ca: cannot read"),
        ({"tls_ca": f}, "not a PEM certificate"),
    ]:
        with pytest.raises(CodecError, match=needle):
            Security.from_args(ns(**kw))
    f.write_text("# only a comment\n")
    with pytest.raises(CodecError, match="holds no token"):
        Security.from_args(ns(auth_token_file=f))


@pytest.mark.slow
def test_server_cli_refuses_bad_security_flags(digits_bundle, tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n\n")
    notpem = tmp_path / "cert.txt"
    notpem.write_text("hello")
    cases = [
        (["--auth-token-file", str(tmp_path / "missing")], "cannot read the auth token file"),
        (["--auth-token-file", str(empty)], "holds no token"),
        (["--tls-cert", str(notpem)], "--tls-cert and --tls-key go together"),
        (["--tls-cert", str(notpem), "--tls-key", str(notpem)], "is not a PEM file"),
        (["--max-message-mib", "0"], "--max-message-mib"),
        (["--max-concurrent-rpcs", "-1"], "--max-concurrent-rpcs"),
        (["--metrics-address", "nonsense"], "--metrics-address must be HOST:PORT"),
    ]
    for extra, needle in cases:
        proc = subprocess.run(
            server_cmd(digits_bundle, *extra),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (extra, proc.stderr)
        assert proc.stderr.strip().startswith("error: ") and needle in proc.stderr, (extra, proc.stderr)


# ---- TLS ------------------------------------------------------------------------------------------------------
def test_tls_server_with_token_auth(digits_bundle, cert, other_cert):
    crt, key = cert
    running = build_server(
        digits_bundle, "127.0.0.1:0", workers=4, tls=(key.read_bytes(), crt.read_bytes()), auth_tokens=TOKENS
    )
    target = f"127.0.0.1:{running.port}"
    try:
        good = CloudClient(target, Security(token=TOKENS[0], tls=True, root_certs=crt.read_bytes()), 10)
        try:
            good.wait_ready()
            assert len(good.model_info()) == 1
            assert (
                sum(r.count for r in good.decode_stream(iter([digits_request(digits_bundle)]), timeout=30))
                == 20
            )
        finally:
            good.close()
        # via the name in the certificate instead of the IP
        named = CloudClient(
            target,
            Security(token=TOKENS[0], tls=True, root_certs=crt.read_bytes(), server_name="localhost"),
            10,
        )
        try:
            assert len(named.model_info()) == 1
        finally:
            named.close()
        # a plaintext client, and a client trusting another CA, cannot talk to it
        for sec in (
            Security(token=TOKENS[0]),
            Security(token=TOKENS[0], tls=True, root_certs=other_cert.read_bytes()),
        ):
            bad = CloudClient(target, sec, 3)
            try:
                with pytest.raises(CloudError, match="cannot reach the cloud"):
                    bad.model_info()
            finally:
                bad.close()
        assert healthcheck_main(["--address", target, "--tls-ca", str(crt)]) == 0
        assert healthcheck_main(["--address", target, "--timeout", "2"]) == 1  # plaintext probe of a TLS port
    finally:
        running.stop(grace=1.0)


@pytest.mark.slow
def test_tls_end_to_end_from_the_cli(digits_bundle, cert, token_file, tmp_path):
    crt, key = cert
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        server_cmd(
            digits_bundle,
            *("--port-file", str(port_file), "--tls-cert", str(crt), "--tls-key", str(key)),
            *("--auth-token-file", str(token_file)),
        ),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_file(proc, port_file, 60, "the server to start")
        target = f"127.0.0.1:{port_file.read_text()}"
        extra = ("--auth-token-file", str(token_file), "--connect-timeout", "5")
        base = _edge_args("evaluate", digits_bundle, target, 30, *extra)
        ok = run_edge(*base, "--tls-ca", str(crt))
        assert ok.returncode == 0, ok.stderr
        assert "items             30" in ok.stdout
        assert_one_line_error(run_edge(*base), "cannot reach the cloud")  # plaintext against TLS
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err
    assert "TLS, token auth" in err


# ---- limits ---------------------------------------------------------------------------------------------------
def test_concurrency_bound_answers_resource_exhausted(digits_bundle):
    running = build_server(digits_bundle, "127.0.0.1:0", workers=4, max_concurrent_rpcs=1)
    req = digits_request(digits_bundle, 5)
    release = threading.Event()

    def held_requests():
        yield req
        release.wait(30)  # keep the stream (and its slot) open

    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = CloudStub(ch)
            stream = stub.DecodeStream(held_requests(), timeout=60)
            assert next(stream).count == 5  # the stream is in flight now
            with pytest.raises(grpc.RpcError) as ei:
                stub.Decode(req, timeout=10)
            assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            release.set()
            assert list(stream) == []
            assert stub.Decode(req, timeout=10).count == 5  # the slot is free again
    finally:
        release.set()
        running.stop(grace=1.0)


def test_message_size_limit(digits_bundle):
    running = build_server(digits_bundle, "127.0.0.1:0", workers=2, max_message_bytes=2048)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = CloudStub(ch)
            small = digits_request(digits_bundle, 2)
            small.reconstruction_format = pb.RECONSTRUCTION_FORMAT_NONE
            assert stub.Decode(small, timeout=10).count == 2
            big = digits_request(digits_bundle, 200)
            assert big.ByteSize() > 2048
            with pytest.raises(grpc.RpcError) as ei:
                stub.Decode(big, timeout=10)
            assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        running.stop(grace=1.0)


def test_healthcheck_entry_point(digits_bundle, capsys):
    running = build_server(digits_bundle, "127.0.0.1:0", workers=2, auth_tokens=TOKENS)
    try:
        assert healthcheck_main(["--address", f"127.0.0.1:{running.port}"]) == 0
        assert (
            healthcheck_main(["--address", f"127.0.0.1:{running.port}", "--service", "aecodec.v2.Decoding"])
            == 0
        )
        assert "SERVING" in capsys.readouterr().out
        running.not_serving()
        assert healthcheck_main(["--address", f"127.0.0.1:{running.port}"]) == 1
        assert "NOT_SERVING" in capsys.readouterr().out
    finally:
        running.stop(grace=1.0)
    assert healthcheck_main(["--address", f"127.0.0.1:{running.port}", "--timeout", "1"]) == 1
    assert "UNREACHABLE" in capsys.readouterr().out

"""A rolling restart of two real server processes under load costs no failed idempotent call.

What Envoy does in production (deploy/envoy.yaml: active gRPC health checks, retries on unavailable,
connect-failure and refused-stream for idempotent calls), a gRPC client does here without Envoy: a
round_robin channel over both addresses with client-side health checking and a retry policy for
UNAVAILABLE. Each server is SIGTERMed (it reports NOT_SERVING, keeps serving through --drain, then
finishes in-flight calls) and started again on its port while a client keeps decoding.
"""

from __future__ import annotations

import json
import signal
import threading

import grpc
import pytest

from latent_codec import datasets
from latent_codec.codec import Codec
from latent_codec.container import to_batch
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc
from tests.helpers import ServerProcess, free_port, tiny_bundle, wait_until

SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": "aecodec.v2.Decoding"},  # leave a replica that reports NOT_SERVING
    "methodConfig": [
        {
            "name": [{"service": "aecodec.v2.Decoding"}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.05s",
                "maxBackoff": "0.5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory)


@pytest.mark.slow
def test_rolling_restart_of_two_replicas_fails_no_call(bundle, tmp_path):
    ports = [free_port(), free_port()]
    extra = ("--drain", "1.5", "--grace", "2")
    servers = [
        ServerProcess(bundle, None, tmp_path / f"s{i}", port=p, extra=extra, metrics=True)
        for i, p in enumerate(ports)
    ]
    for i, s in enumerate(servers):
        (tmp_path / f"s{i}").mkdir()
        s.start()
    codec = Codec.open(bundle)
    req = pb.DecodeRequest(codes=to_batch(codec, codec.encode(datasets.load("digits", "test").x[:4])))
    target = "ipv4:" + ",".join(f"127.0.0.1:{p}" for p in ports)
    channel = grpc.insecure_channel(
        target, options=[("grpc.service_config", json.dumps(SERVICE_CONFIG)), ("grpc.enable_retries", 1)]
    )
    stub = pb_grpc.DecodingStub(channel)
    stop = threading.Event()
    done, failures = [0], []

    def load() -> None:
        while not stop.is_set():
            try:
                assert stub.Decode(req, timeout=10).count == 4
                done[0] += 1
            except grpc.RpcError as exc:
                failures.append(f"{exc.code().name}: {exc.details()}")

    workers = [threading.Thread(target=load) for _ in range(4)]
    try:
        for w in workers:
            w.start()

        def serving(server: ServerProcess) -> bool:  # this replica answers the load's calls (its own count)
            return (
                server.metric("aecodec_grpc_server_handled_total", grpc_method="Decode", grpc_code="OK") > 0
            )

        for i, server in enumerate(servers):
            wait_until(lambda s=server: serving(s), 60, f"replica {i} to serve calls")
        for i, port in enumerate(ports):  # one replica at a time, as an orchestrator rolls a deployment
            before = done[0]
            servers[i].kill(signal.SIGTERM)
            assert servers[i].proc is not None and servers[i].proc.returncode == 0
            servers[i] = ServerProcess(
                bundle, None, tmp_path / f"s{i}", port=port, extra=extra, metrics=True
            ).start()
            # Calls kept completing through the restart, and the restarted replica takes its share again before
            # the next one goes (an orchestrator waits for readiness): waited for, not slept on.
            wait_until(lambda s=servers[i]: serving(s), 60, f"replica {i} to serve calls after its restart")
            assert done[0] > before
    finally:
        stop.set()
        for w in workers:
            w.join(60)  # each call has a deadline: a worker that does not stop is a failure, not a hang
        assert not any(w.is_alive() for w in workers), "load threads still running 60 s after stop"
        channel.close()
        for s in servers:
            s.kill(signal.SIGTERM)
    assert not failures, failures[:5]

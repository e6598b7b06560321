"""Fault tests with real processes and real signals: a cloud server and an edge client as children.

Every scenario streams 5,000 items and then checks, through the server's own
ListStored/Fetch, that each item is stored exactly once with the right bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import grpc
import numpy as np
import pytest

from latent_codec import datasets
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
from tests import helpers
from tests.helpers import (
    ROOT,
    CloudStub,
    ServerProcess,
    child_env,
    edge_cmd,
    free_port,
    start_edge,  # noqa: F401
    wait_until,
)

N = 5000
DEVICE = "phone-1"

pytestmark = pytest.mark.slow  # real server and edge processes, killed and restarted


@pytest.fixture(scope="module")
def bundles(digits_bundle, tmp_path_factory):
    d = tmp_path_factory.mktemp("fault-bundles")
    shutil.copytree(digits_bundle, d / digits_bundle.name)
    return d


@pytest.fixture(scope="module")
def bundle(bundles):
    return next(bundles.iterdir())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple:
    """5,000 8x8 digit items (the digits set repeated) as the device's source."""
    x = datasets.load("digits", "train").x
    items = np.concatenate([x] * (N // len(x) + 1))[:N]
    path = tmp_path_factory.mktemp("fault-data") / "items.npy"
    np.save(path, items)
    return path, items


@pytest.fixture(scope="module")
def expected_payloads(bundle, data):
    from latent_codec.codec import Codec

    return Codec.open(bundle).encode(data[1])


def stored_count(target: str) -> int:
    return helpers.stored_count(target, DEVICE)


def check_exactly_once(target: str, payloads: list[bytes]) -> None:
    helpers.check_exactly_once(target, payloads, DEVICE)


def run_edge(cmd, log, timeout=90) -> subprocess.CompletedProcess:
    proc = start_edge(cmd, log)
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc


def read_report(path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "cloud.sqlite")
    # a schema of its own: the counts below are per device and must start at zero
    from tests.helpers import pg_drop_schema, pg_fresh_schema

    request.getfixturevalue("pg_url")  # skip/fail visibly without a server
    schema = pg_fresh_schema()
    request.addfinalizer(lambda: pg_drop_schema(schema))
    base = os.environ.get("AECODEC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
    return f"{base}?options=-csearch_path%3D{schema}"


def test_server_sigkilled_mid_stream_and_restarted(bundles, bundle, data, expected_payloads, store, tmp_path):
    server = ServerProcess(bundles, store, tmp_path).start()
    log = tmp_path / "edge.log"
    edge = start_edge(
        edge_cmd(
            bundle,
            server.target,
            data[0],
            tmp_path / "spool.sqlite",
            "--batch-size",
            "32",
            "--rate",
            "2500",
            "--retry-initial",
            "0.1",
            "--retry-max",
            "0.5",
            "--json",
            str(tmp_path / "report.json"),
        ),
        log,
    )
    try:
        wait_until(lambda: stored_count(server.target) >= 1000, 60, "the first 1,000 items to be stored")
        seen = len(log.read_text())
        server.kill(signal.SIGKILL)
        at_kill = server.proc.returncode
        assert at_kill == -signal.SIGKILL
        wait_until(
            lambda: "retrying" in log.read_text()[seen:] or edge.poll() is not None, 60, "the edge to retry"
        )
        assert edge.poll() is None, log.read_text()  # it notices, spools on, retries
        server = ServerProcess(bundles, store, tmp_path, port=server.port).start()
        assert 0 < stored_count(server.target) < N  # really killed in the middle
        edge.wait(timeout=90)
        assert edge.returncode == 0, log.read_text()
        report = read_report(tmp_path / "report.json")
        assert report["acknowledged"] >= N and report["still_spooled"] == 0 and report["retries"] >= 1
        check_exactly_once(server.target, expected_payloads)
    finally:
        if edge.poll() is None:
            edge.kill()
        server.kill(signal.SIGTERM)


def test_edge_sigkilled_mid_run_and_restarted(bundles, bundle, data, expected_payloads, tmp_path):
    server = ServerProcess(bundles, str(tmp_path / "cloud.sqlite"), tmp_path).start()
    spool = tmp_path / "spool.sqlite"
    log = tmp_path / "edge.log"
    args = ("--batch-size", "32", "--rate", "2500", "--json", str(tmp_path / "report.json"))
    try:
        edge = start_edge(edge_cmd(bundle, server.target, data[0], spool, *args), log)
        wait_until(lambda: stored_count(server.target) >= 1000, 60, "the first 1,000 items to be stored")
        edge.send_signal(signal.SIGKILL)
        edge.wait(timeout=10)
        before = stored_count(server.target)
        assert 0 < before < N
        done = run_edge(edge_cmd(bundle, server.target, data[0], spool, *args), log)
        assert done.returncode == 0, log.read_text()
        report = read_report(tmp_path / "report.json")
        assert report["taken"] + report["resumed"] + before >= N  # resumed from the cursor, not from zero
        assert report["taken"] < N - 900
        assert report["still_spooled"] == 0
        check_exactly_once(server.target, expected_payloads)
    finally:
        server.kill(signal.SIGTERM)


def test_edge_started_while_the_server_is_down_drains_when_it_comes_up(
    bundles, bundle, data, expected_payloads, tmp_path
):
    port = free_port()
    spool = tmp_path / "spool.sqlite"
    log = tmp_path / "edge.log"
    edge = start_edge(
        edge_cmd(
            bundle,
            f"127.0.0.1:{port}",
            data[0],
            spool,
            "--batch-size",
            "128",
            "--retry-initial",
            "0.1",
            "--retry-max",
            "0.5",
            "--retry-for",
            "60",
            "--json",
            str(tmp_path / "report.json"),
        ),
        log,
    )
    server = None
    try:
        # A device started before its server keeps its items spooled and says it is retrying, naming why, until
        # --retry-for: it neither gives up at the first refused connection nor stays silent (only one-shot
        # commands such as evaluate fail fast: tests/test_hostile_round2.py). Waited for, not slept on: the edge
        # may take seconds to start on a busy machine.
        wait_until(
            lambda: "retrying" in log.read_text() or edge.poll() is not None, 60, "the edge to log a retry"
        )
        assert edge.poll() is None, log.read_text()
        assert "connection refused" in log.read_text(), log.read_text()
        server = ServerProcess(bundles, str(tmp_path / "cloud.sqlite"), tmp_path, port=port).start()
        edge.wait(timeout=90)
        assert edge.returncode == 0, log.read_text()
        report = read_report(tmp_path / "report.json")
        assert report["acknowledged"] == N and report["duplicates"] == 0 and report["still_spooled"] == 0
        check_exactly_once(server.target, expected_payloads)
    finally:
        if edge.poll() is None:
            edge.kill()
        if server is not None:
            server.kill(signal.SIGTERM)


def test_full_spool_is_a_clear_error_and_nothing_is_lost(bundles, bundle, data, expected_payloads, tmp_path):
    """Cloud down, small spool: the run stops with an error naming the full spool; a later run sends it all."""
    port = free_port()
    spool = tmp_path / "spool.sqlite"
    log = tmp_path / "edge.log"
    done = run_edge(
        edge_cmd(
            bundle,
            f"127.0.0.1:{port}",
            data[0],
            spool,
            "--batch-size",
            "100",
            "--spool-max-bytes",
            "20k",
            "--retry-initial",
            "0.1",
            "--retry-max",
            "0.3",
            "--retry-for",
            "1.5",
        ),
        log,
        timeout=60,
    )
    out = log.read_text()
    assert done.returncode == 3, out
    assert "spool" in out and "is full" in out and "Traceback" not in out
    assert "items stay spooled" in out
    server = ServerProcess(bundles, str(tmp_path / "cloud.sqlite"), tmp_path, port=port).start()
    try:
        done = run_edge(
            edge_cmd(
                bundle, server.target, data[0], spool, "--batch-size", "100", "--spool-max-bytes", "20k"
            ),
            log,
        )
        assert done.returncode == 0, log.read_text()
        check_exactly_once(server.target, expected_payloads)
    finally:
        server.kill(signal.SIGTERM)


def test_edge_ingest_bad_input_and_no_torch(bundle, data, tmp_path):
    """One-line errors for bad flags and a busy spool; the ingest path never imports torch."""

    def edge(*argv):
        return subprocess.run(
            [sys.executable, "-m", "edge.cli", "ingest", "--bundle", str(bundle), *argv],
            cwd=ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )

    for argv, text in [
        (["--spool-max-bytes", "lots"], "is not a size"),
        (["--batch-size", "0"], "--batch-size"),
        (["--spool", str(tmp_path / "no" / "dir" / "s.sqlite"), "--data", str(data[0])], "does not exist"),
        (["--data", str(tmp_path / "missing.npy")], "not found"),
    ]:
        r = edge(*argv)
        assert r.returncode == 2 and r.stderr.startswith("error: ") and text in r.stderr, (argv, r.stderr)
        assert "Traceback" not in r.stderr
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['edge.cli', 'ingest', '--bundle', sys.argv[1], '--data', sys.argv[2], '--spool', sys.argv[3],"
        " '--server', '127.0.0.1:1', '--retry-for', '0.2', '--limit', '10', '--no-progress']\n"
        "from edge.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "assert 'torch' not in sys.modules, 'edge imported torch'\n"
        "print('exit', code)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", probe, str(bundle), str(data[0]), str(tmp_path / "p.sqlite")],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "exit 3" in r.stdout, r.stdout + r.stderr
    # the spool is owned by one process at a time
    from edge.spool import Spool, SpoolError

    held = Spool(tmp_path / "busy.sqlite", 1 << 20)
    try:
        r = edge("--data", str(data[0]), "--spool", str(tmp_path / "busy.sqlite"))
        assert r.returncode == 2 and "in use by another process" in r.stderr, r.stderr
    finally:
        held.close()
    with pytest.raises(SpoolError):
        Spool(tmp_path / "x.sqlite", 0)


def test_items_the_cloud_refuses_are_quarantined_not_lost_and_do_not_block_the_rest(
    bundles, bundle, data, expected_payloads, tmp_path
):
    """A corrupt item and an id the cloud holds with other content: both set aside in the spool with the
    cloud's reason, every other item stored once, exit 4; `quarantine --requeue` puts them back."""
    from edge.spool import Spool
    from latent_codec.codec import Codec

    n = 300
    bid = Codec.open(bundle).bundle_id
    server = ServerProcess(bundles, str(tmp_path / "cloud.sqlite"), tmp_path).start()
    try:
        with grpc.insecure_channel(server.target) as ch:  # the cloud already holds cam#7 with other bytes
            list(
                CloudStub(ch).Ingest(
                    iter(
                        [
                            pb.IngestRequest(
                                device_id=DEVICE,
                                bundle_id=bid,
                                items=[
                                    pb.IngestItem(
                                        item_id="cam#7", payload=expected_payloads[8], captured_at_ms=1
                                    )
                                ],
                            )
                        ]
                    ),
                    timeout=30,
                )
            )
        spool_path = tmp_path / "spool.sqlite"
        spool = Spool(spool_path, 1 << 26)
        spool.add_many(
            [("cam#junk", bid, b"\1\0", 5)]
        )  # no valid stream of this bundle (ends in a zero byte)
        spool.close()
        report_path = tmp_path / "report.json"
        proc = run_edge(
            edge_cmd(
                bundle,
                server.target,
                data[0],
                spool_path,
                "--limit",
                str(n),
                "--batch-size",
                "64",
                "--json",
                str(report_path),
            ),
            tmp_path / "edge.log",
        )
        log = (tmp_path / "edge.log").read_text()
        assert proc.returncode == 4, log
        report = read_report(report_path)
        assert report["quarantined"] == 2 and report["still_spooled"] == 0, report
        assert "quarantined cam#junk" in log and "quarantined cam#7" in log
        with grpc.insecure_channel(server.target) as ch:
            stub = CloudStub(ch)
            got = {
                it.item_id: it.payload
                for r in stub.Fetch(
                    pb.FetchRequest(device_id=DEVICE, codes_only=True, limit=1000), timeout=60
                )
                for it in r.items
            }
        assert sorted(got) == sorted(f"cam#{i}" for i in range(n))
        assert got["cam#7"] == expected_payloads[8]  # the cloud's copy is not overwritten ...
        assert all(got[f"cam#{i}"] == expected_payloads[i] for i in range(n) if i != 7)
        listing = subprocess.run(
            [sys.executable, "-m", "edge.cli", "quarantine", "--spool", str(spool_path)],
            cwd=ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        lines = sorted(listing.stdout.strip().splitlines())
        assert listing.returncode == 0 and len(lines) == 2, listing
        assert (
            lines[0].startswith("cam#7\t") and "ALREADY_EXISTS" in lines[0]
        )  # ... and the device keeps its own
        assert (
            lines[1].startswith("cam#junk\t")
            and "INVALID_ARGUMENT" in lines[1]
            and "does not fit" in lines[1]
        )
        requeue = subprocess.run(
            [sys.executable, "-m", "edge.cli", "quarantine", "--spool", str(spool_path), "--requeue"],
            cwd=ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert requeue.returncode == 0 and "requeued 2 items" in requeue.stdout
        spool = Spool(spool_path, 1 << 26)
        try:
            assert spool.count == 2 and spool.quarantined() == []
            assert {it.item_id for it in spool.peek(0, 10)} == {"cam#7", "cam#junk"}
        finally:
            spool.close()
        # With no room for refusals the run stops at the first one, and that item stays queued.
        stopped = run_edge(
            edge_cmd(bundle, server.target, data[0], spool_path, "--limit", str(n), "--max-quarantine", "0"),
            tmp_path / "edge2.log",
        )
        assert stopped.returncode == 2 and "--max-quarantine" in (tmp_path / "edge2.log").read_text()
        spool = Spool(spool_path, 1 << 26)
        try:
            assert spool.count == 2
        finally:
            spool.close()
    finally:
        server.kill(signal.SIGTERM)

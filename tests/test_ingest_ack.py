"""A batch leaves the device's spool only when its acknowledgement names its items (edge/sender.py; issue 25).

A real gRPC server on 127.0.0.1 (an ephemeral port) plays a cloud that acknowledges the wrong items; the sender
must stop with a CloudError that says so and keep every unacknowledged item in the real SQLite spool.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import pytest

from edge.channel import CloudError
from edge.sender import Sender
from edge.spool import Spool
from latent_codec import framing
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

BATCH = 3
Acker = Callable[[int, pb.IngestRequest], pb.IngestAck | None]


class FakeStorage(pb_grpc.StorageServicer):
    """Answers each IngestRequest with what `acker(k, request)` returns (None: the true acknowledgement)."""

    def __init__(self, acker: Acker):
        self.acker = acker
        self.requests: list[pb.IngestRequest] = []
        self.target = ""

    def Ingest(self, request_iterator: Iterator[pb.IngestRequest], context) -> Iterator[pb.IngestAck]:
        for k, req in enumerate(request_iterator):
            self.requests.append(req)
            got = self.acker(k, req)
            yield framing.ack(req, 0) if got is None else got


@pytest.fixture
def cloud():
    """-> start(acker) -> (stub, FakeStorage); every server started is stopped at the end."""
    started: list[tuple[grpc.Server, grpc.Channel]] = []

    def start(acker: Acker):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        fake = FakeStorage(acker)
        pb_grpc.add_StorageServicer_to_server(fake, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        fake.target = f"127.0.0.1:{port}"
        channel = grpc.insecure_channel(fake.target)
        grpc.channel_ready_future(channel).result(timeout=30)
        started.append((server, channel))
        return pb_grpc.StorageStub(channel), fake

    yield start
    for server, channel in started:
        channel.close()
        server.stop(grace=None).wait(timeout=30)


def _spool(tmp_path, n: int) -> Spool:
    spool = Spool(tmp_path / "spool.db", 1 << 20)
    spool.add_many([(f"cam#{i}", "bundle-x", bytes([i]) * 10, 1000 + i) for i in range(n)])
    return spool


def _send(stub, spool: Spool) -> Sender:
    return Sender(stub, spool, "dev-1", BATCH, window=1, ack_timeout=20.0, wake=threading.Condition())


def _run_with_deadline(fn: Callable[[], object], seconds: float = 60.0) -> BaseException | object:
    """fn() on a thread; its result or exception, or an AssertionError when it does not return in time."""
    box: list = []

    def target() -> None:
        try:
            box.append(fn())
        except BaseException as exc:  # handed back to the test
            box.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    assert box, f"the sender did not return within {seconds} s"
    return box[0]


def _wrong_items(req: pb.IngestRequest) -> pb.IngestAck:
    right = framing.ack(req, 0)
    return pb.IngestAck(item_ids=list(right.item_ids)[:-1], item_seqs=[s + 1 for s in right.item_seqs])


@pytest.mark.parametrize(
    "name, acker",
    [
        ("the wrong items", lambda k, req: _wrong_items(req)),
        ("one item short", lambda k, req: pb.IngestAck(item_seqs=list(framing.ack(req, 0).item_seqs)[:-1])),
        ("nothing", lambda k, req: pb.IngestAck()),
    ],
)
def test_a_mismatched_acknowledgement_leaves_the_batch_in_the_spool_and_is_reported(
    tmp_path, cloud, name, acker
):
    stub, fake = cloud(acker)
    spool = _spool(tmp_path, 7)
    sender = _send(stub, spool)
    got = _run_with_deadline(sender.stream_once)
    assert isinstance(got, CloudError), f"acknowledging {name}: expected a CloudError, got {got!r}"
    assert "did not send" in str(got)
    assert spool.count == 7 and [it.item_id for it in spool.peek(0, 100)] == [f"cam#{i}" for i in range(7)]
    assert sender.stats.acknowledged == 0 and len(fake.requests) >= 1
    spool.close()


def test_batches_acknowledged_before_a_mismatch_leave_and_the_rest_stay(tmp_path, cloud):
    stub, fake = cloud(lambda k, req: _wrong_items(req) if k == 1 else None)
    spool = _spool(tmp_path, 7)
    sender = _send(stub, spool)
    got = _run_with_deadline(sender.stream_once)
    assert isinstance(got, CloudError), got
    assert [it.item_id for it in spool.peek(0, 100)] == [f"cam#{i}" for i in range(BATCH, 7)]
    assert sender.stats.acknowledged == BATCH
    spool.close()


def test_an_acknowledgement_for_a_request_never_sent_is_reported_and_loses_nothing(tmp_path, cloud):
    """A second ack for one request: nothing is in flight to match it."""

    class Twice(FakeStorage):
        def Ingest(self, request_iterator, context):
            for req in request_iterator:
                self.requests.append(req)
                yield framing.ack(req, 0)
                yield framing.ack(req, 0)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    pb_grpc.add_StorageServicer_to_server(Twice(lambda k, r: None), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            spool = _spool(tmp_path, 2 * BATCH)
            sender = _send(pb_grpc.StorageStub(channel), spool)
            got = _run_with_deadline(sender.stream_once)
            assert isinstance(got, CloudError), got
            # the first batch was acknowledged properly; the second is still on the device
            assert [it.item_id for it in spool.peek(0, 100)] == [f"cam#{i}" for i in range(BATCH, 2 * BATCH)]
            spool.close()
    finally:
        server.stop(grace=None).wait(timeout=30)


def test_correct_acknowledgements_empty_the_spool(tmp_path, cloud):
    """The control: the same fake cloud answering truthfully drains everything (the tests above can pass)."""
    stub, fake = cloud(lambda k, req: None)
    spool = _spool(tmp_path, 7)
    sender = _send(stub, spool)
    assert _run_with_deadline(sender.stream_once) == 7
    assert spool.count == 0 and sender.stats.acknowledged == 7
    assert [len(r.items) for r in fake.requests] == [3, 3, 1]
    spool.close()


def test_an_ingest_run_stops_on_a_mismatched_acknowledgement_with_everything_still_spooled(tmp_path, cloud):
    """edge.ingest.run end to end (producer, spool, sender): the run ends with IngestStopped naming the cause, and
    its report says every item it took is still on the device."""
    import numpy as np

    from edge.ingest import IngestConfig, IngestStopped, run
    from tests.helpers import ROOT

    stub, fake = cloud(lambda k, req: _wrong_items(req))
    items = np.random.default_rng(0).integers(0, 256, (10, 1, 28, 28), dtype=np.uint8)
    config = IngestConfig(
        bundle=ROOT / "zoo" / "conv-lambda-0.1",
        server=fake.target,
        spool=tmp_path / "spool.sqlite",
        batch_size=4,
        window=2,
        retry_for=20.0,
        ack_timeout=20.0,
        threads=1,
    )
    got = _run_with_deadline(lambda: run(config, items), 120)
    assert isinstance(got, IngestStopped), f"expected IngestStopped, got {got!r}"
    report = got.report
    assert "did not send" in (report.error or "") and report.acknowledged == 0
    # every item taken from the source is still on the device (the rest were never taken: the cursor resumes them)
    assert report.still_spooled == report.taken >= 4, (report.still_spooled, report.taken)
    assert fake.requests, "the fake cloud saw no request"

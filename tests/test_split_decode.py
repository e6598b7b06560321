"""One call's work split over threads (latent_codec/parallel.py): the same bytes as one thread, in every step.

Real zoo bundles, real ONNX Runtime sessions and a real gRPC server on 127.0.0.1. What is compared is exact:
payload bytes, reconstructions, table indices (against bench/map_reference.py's int64 einsum, which shares no
code with the strips), so an item group written to the wrong place, a tile or strip that is skipped or read
one row off, or parts reassembled out of order all fail here.
"""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from bench import map_reference as ref
from latent_codec.codec import Codec
from latent_codec.errors import PayloadError
from latent_codec.families import code_map, hyper_decoder
from latent_codec.parallel import Workers, pieces
from tests.helpers import ROOT, fashion_test_items
from tests.helpers.photos import photo

BUNDLE = ROOT / "zoo" / "spatial-lambda-0.0032"
FACTORIZED = ROOT / "zoo" / "spatial-factorized-lambda-0.0064"
CONV = ROOT / "zoo" / "conv-lambda-0.1"


def _codec(bundle, threads: int) -> Codec:
    codec = Codec.open(bundle, threads=1)
    codec.workers = Workers(threads)
    return codec


# ---- the primitive ------------------------------------------------------------------------------------------
def test_pieces_cover_every_item_once_in_order():
    for n, parts, least in [(256, 8, 32), (100, 8, 32), (63, 4, 32), (1, 4, 32), (0, 4, 32), (1000, 3, 1)]:
        ps = pieces(n, parts, least)
        assert [a for a, _ in ps][1:] == [b for _, b in ps][:-1]  # contiguous, in order
        assert ps[0][0] == 0 and ps[-1][1] == n
        assert len(ps) <= max(1, parts) and all(b - a >= min(least, n) for a, b in ps)


def test_map_returns_results_in_order_and_raises_the_first_failing_parts_error():
    w = Workers(3)
    assert w.map(lambda v: v * v, list(range(50))) == [v * v for v in range(50)]

    def fail(v: int) -> int:
        if v in (7, 30):
            raise ValueError(f"part {v}")
        return v

    with pytest.raises(ValueError, match="part 7"):
        w.map(fail, list(range(50)))


def test_map_on_a_pool_whose_threads_are_all_busy_finishes_on_the_caller():
    """A server's codec splits on the server's own decode pool, from one of its threads: a helper that cannot
    start must not be waited for (no deadlock), the caller runs every part itself."""
    pool = ThreadPoolExecutor(1)
    release = threading.Event()
    pool.submit(release.wait, 30)  # the pool's only thread is busy
    try:
        ran: set[str] = set()

        def part(v: int) -> int:
            ran.add(threading.current_thread().name)
            return v + 1

        assert Workers(2, pool).map(part, list(range(10))) == list(range(1, 11))
        assert ran == {threading.current_thread().name}
    finally:
        release.set()
        pool.shutdown()


def test_map_uses_more_than_one_thread():
    names: set[str] = set()
    gate = threading.Barrier(2, timeout=10)

    def part(v: int) -> None:
        names.add(threading.current_thread().name)
        if v < 2:
            gate.wait()  # the first two parts meet: they can only if two threads run them

    Workers(2).map(part, list(range(6)))
    assert len(names) == 2


# ---- many items ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bundle", [BUNDLE, FACTORIZED, CONV], ids=["hyperprior", "factorized", "conv"])
def test_split_decode_and_encode_give_the_bytes_of_one_thread(bundle):
    x = fashion_test_items(256)
    one = _codec(bundle, 1)
    payloads = one.encode(x)
    want = one.decode(payloads)
    want_unit = one.decode(payloads, unit=True)
    for threads in (2, 3):
        many = _codec(bundle, threads)
        got = many.decode(payloads)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(many.decode(payloads, unit=True), want_unit)
        if many.splits_items:
            assert many.encode(x) == payloads
    # items differ, so a part written to another part's place would show
    assert len({want[i].tobytes() for i in range(len(want))}) > 250


def test_a_bad_payload_in_a_split_decode_names_the_same_item_as_one_thread():
    one, many = _codec(BUNDLE, 1), _codec(BUNDLE, 2)
    payloads = one.encode(fashion_test_items(128))
    payloads[100] = payloads[100] + b"\x00"  # padded: not what the range coder writes
    with pytest.raises(PayloadError) as serial:
        one.decode(payloads)
    with pytest.raises(PayloadError) as split:
        many.decode(payloads)
    assert str(split.value) == str(serial.value)
    assert "item 100" in str(serial.value)


def test_a_split_decode_refuses_items_of_two_sizes_like_one_thread():
    one, many = _codec(BUNDLE, 1), _codec(BUNDLE, 2)
    x = fashion_test_items(64)
    payloads = one.encode(x) + one.encode(np.ascontiguousarray(x[:, :, :20, :24]))
    with pytest.raises(PayloadError, match="share a size") as serial:
        one.decode(payloads)
    with pytest.raises(PayloadError, match="share a size") as split:
        many.decode(payloads)
    assert str(split.value) == str(serial.value)


# ---- one big item -------------------------------------------------------------------------------------------
@pytest.fixture
def small_tiles(monkeypatch):
    monkeypatch.setattr(code_map, "ENCODE_TILE", 128)
    monkeypatch.setattr(code_map, "DECODE_TILE", 24)


def test_strips_on_threads_select_the_reference_indices(monkeypatch):
    """The hyper-decoder's strips run on three threads: every index equals the int64 einsum reference's (a
    strip read one row off, or skipped, would not)."""
    monkeypatch.setattr(hyper_decoder, "STRIP_POSITIONS", 512)  # many strips of a few rows each
    p = _codec(BUNDLE, 1).payload
    assert p.z_tables is not None and p.hyper_decoder is not None
    rng = np.random.default_rng(0)
    z = rng.integers(0, 1 << p.z_grid_bits, (2, p.hyper_channels, 23, 31)).astype(np.uint16)
    z = np.clip(z, (1 << (p.z_grid_bits - 1)) - 3, (1 << (p.z_grid_bits - 1)) + 3).astype(np.uint16)
    shape = (2, p.code_channels, 45, 61)  # odd: the last strip's last row is cropped
    want = ref.table_indices(p, shape, z)
    got = p.table_indices(shape, z, Workers(3))
    np.testing.assert_array_equal(got, want)
    plan = p.hyper_decoder._plan(np.asarray(z, np.int64) - (1 << (p.z_grid_bits - 1)), None, shape[2:])
    assert plan is not None and len(plan.specs) > 6


@pytest.mark.parametrize("bundle", [BUNDLE, FACTORIZED], ids=["hyperprior", "factorized"])
def test_a_big_items_tiles_and_strips_on_threads_give_the_bytes_of_one_thread(
    bundle, small_tiles, monkeypatch
):
    monkeypatch.setattr(hyper_decoder, "STRIP_POSITIONS", 2048)
    x = photo(517, 389)
    one, many = _codec(bundle, 1), _codec(bundle, 2)
    assert one.tiled_encode(517, 389) and one.tiled_decode(517, 389)
    seen: list[tuple[str, int, int]] = []
    many.progress = lambda step, done, total: seen.append((step, done, total))

    def reported_once(step: str) -> None:  # every tile reported once, the count ending at the total
        done = sorted(d for s, d, _ in seen if s == step)
        total = {t for s, _, t in seen if s == step}
        assert len(total) == 1 and done == list(range(1, total.pop() + 1)), step
        seen.clear()

    payloads = one.encode(x)
    assert many.encode(x) == payloads
    reported_once("analyse")
    want = one.decode(payloads)
    np.testing.assert_array_equal(many.decode(payloads), want)
    reported_once("synthesise")
    y, side = one.symbols(payloads)
    np.testing.assert_array_equal(many.synthesise(one.dequantise(y), side), one.decode(payloads, unit=True))


# ---- a real server --------------------------------------------------------------------------------------------
def _spy_splits(monkeypatch) -> list[tuple[int, str]]:
    """Record every Workers.map of two threads or more: (threads, step or the function's name)."""
    seen: list[tuple[int, str]] = []
    real = Workers.map

    def spy(self, fn, parts, report=None, step=""):
        if self.threads > 1:
            seen.append((self.threads, step or getattr(fn, "__name__", "")))
        return real(self, fn, parts, report, step)

    monkeypatch.setattr(Workers, "map", spy)
    return seen


def test_a_server_with_two_threads_decodes_256_items_as_in_process(tmp_path, monkeypatch):
    import grpc

    from cloud.server import build_server
    from latent_codec.container import from_tensor, to_batch
    from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
    from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

    shutil.copytree(BUNDLE, tmp_path / "bundles" / BUNDLE.name)
    codec = Codec.open(BUNDLE, threads=1)
    x = fashion_test_items(256)
    payloads = codec.encode(x)
    local = codec.decode(payloads, unit=True)
    splits = _spy_splits(monkeypatch)
    running = build_server(tmp_path / "bundles", "127.0.0.1:0", workers=2, threads=2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = pb_grpc.DecodingStub(ch)
            for fmt in (pb.RECONSTRUCTION_FORMAT_FLOAT32, pb.RECONSTRUCTION_FORMAT_UINT8):
                resp = stub.Decode(
                    pb.DecodeRequest(codes=to_batch(codec, payloads), reconstruction_format=fmt), timeout=120
                )
                got = from_tensor(resp.reconstructions, "reconstructions")
                want = local if fmt == pb.RECONSTRUCTION_FORMAT_FLOAT32 else codec.unscale(local)
                np.testing.assert_array_equal(got, want)
            assert (2, "part") in splits  # groups of items on the two decode threads
            bad = list(payloads)
            bad[200] = bad[200] + b"\x00"
            with pytest.raises(grpc.RpcError) as refused:
                stub.Decode(pb.DecodeRequest(codes=to_batch(codec, bad)), timeout=120)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "item 200" in (refused.value.details() or "")
    finally:
        running.stop(grace=1.0)


def _served_float32(bundles, codec: Codec, payloads: list[bytes], **server) -> np.ndarray:
    """The float32 reconstructions a real server (build_server(bundles, **server)) sends back for payloads."""
    import grpc

    from cloud.server import build_server
    from latent_codec.container import from_tensor, to_batch
    from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
    from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

    running = build_server(bundles, "127.0.0.1:0", **server)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            resp = pb_grpc.DecodingStub(ch).Decode(
                pb.DecodeRequest(
                    codes=to_batch(codec, payloads), reconstruction_format=pb.RECONSTRUCTION_FORMAT_FLOAT32
                ),
                timeout=120,
            )
        return from_tensor(resp.reconstructions, "reconstructions")
    finally:
        running.stop(grace=1.0)


def test_a_server_decodes_a_big_item_on_its_threads_as_in_process(tmp_path, small_tiles, monkeypatch):
    from cloud.limits import MIB, Limits

    shutil.copytree(BUNDLE, tmp_path / "bundles" / BUNDLE.name)
    codec = Codec.open(BUNDLE, threads=1)
    x = photo(517, 389)
    payloads = codec.encode(x)
    local = codec.decode(payloads, unit=True)
    splits = _spy_splits(monkeypatch)
    got = _served_float32(
        tmp_path / "bundles", codec, payloads, workers=2, limits=Limits(max_decode_bytes=512 * MIB)
    )
    np.testing.assert_array_equal(got, local)
    assert {(2, "synthesise"), (2, "strip")} <= set(splits)  # its tiles and strips on the two threads


def test_what_fits_the_budget_only_on_one_thread_is_still_decoded_on_one(tmp_path, small_tiles, monkeypatch):
    """Two tiles at once hold twice a tile's graph memory: a big item that a default server admitted before the
    split (priced on one thread) is admitted still, priced and decoded on one thread."""
    from cloud.bundles import priced_codec
    from cloud.limits import Limits

    # strips of 2^13 positions (the size before 2026-12-07's smaller strips): what puts this item's decode on two
    # threads just over the default budget (smaller strips hold less, and the item would fit on two)
    monkeypatch.setattr(hyper_decoder, "STRIP_POSITIONS", 1 << 13)
    shutil.copytree(BUNDLE, tmp_path / "bundles" / BUNDLE.name)
    codec = priced_codec(BUNDLE, 1, need=("encoder", "decoder"))
    payloads = codec.encode(photo(517, 389))
    limits = Limits()
    assert limits._refusal(codec.decode_costs(payloads, 2), 4) == "bytes"  # over the budget on two threads
    assert limits.check(codec, payloads, split=True).threads == 1
    local = codec.decode(payloads, unit=True)
    splits = _spy_splits(monkeypatch)
    np.testing.assert_array_equal(_served_float32(tmp_path / "bundles", codec, payloads, workers=2), local)
    assert not splits

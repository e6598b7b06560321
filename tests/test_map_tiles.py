"""Big items in tiles: the same payload as the whole item, bounded memory, a decode's cost known in advance.

Real zoo bundles and ONNX Runtime sessions on scikit-image's photographs; tile sizes are made small here so
a photo-sized item crosses many tile borders in a second.
"""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest

from bench.hostile import claim
from edge.progress import StepProgress
from latent_codec.codec import Codec
from latent_codec.errors import PayloadError
from latent_codec.families import code_map
from latent_codec.tiling import probe_radius, tiles
from tests.helpers import ROOT
from tests.helpers.photos import photo

BUNDLE = ROOT / "zoo" / "spatial-lambda-0.0032"
FACTORIZED = ROOT / "zoo" / "spatial-factorized-lambda-0.0064"


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


@pytest.fixture
def small_tiles(monkeypatch):
    monkeypatch.setattr(code_map, "ENCODE_TILE", 128)
    monkeypatch.setattr(code_map, "DECODE_TILE", 24)


@pytest.mark.parametrize("bundle", [BUNDLE, FACTORIZED], ids=["hyperprior", "factorized"])
@pytest.mark.parametrize("size", [(517, 389), (300, 700)])
def test_tiles_give_the_whole_item_payload_and_reconstruction(bundle, size, small_tiles, monkeypatch):
    codec = Codec.open(bundle, threads=1)
    x = photo(*size)
    assert codec.tiled_encode(*size) and codec.tiled_decode(*size)
    tiled = codec.encode(x)
    rec_tiled = codec.decode(tiled, unit=True)
    monkeypatch.setattr(code_map, "ENCODE_TILE", 1 << 20)
    monkeypatch.setattr(code_map, "DECODE_TILE", 1 << 20)
    whole = codec.encode(x)
    rec_whole = codec.decode(whole, unit=True)
    y_t, y_w = codec.payload.unpack(tiled)[1], codec.payload.unpack(whole)[1]
    # the graphs see the same inputs for every kept output: at most a rounding at an exact half may differ
    assert (y_t != y_w).mean() <= 1e-5
    assert abs(_psnr(x, codec.unscale(rec_tiled)) - _psnr(x, codec.unscale(rec_whole))) <= 0.05
    if tiled == whole:
        assert np.abs(rec_tiled - rec_whole).max() <= 1e-4


def test_a_margin_short_of_the_receptive_field_would_show(small_tiles, monkeypatch):
    """The check above can fail: tiles read without their margin change many code elements."""
    codec = Codec.open(BUNDLE, threads=1)
    x = photo(517, 389)
    good = codec.payload.unpack(codec.encode(x))[1]
    codec._margins["encode"] = 0
    bad = codec.payload.unpack(codec.encode(x))[1]
    assert (good != bad).mean() > 1e-3


def test_the_receptive_field_is_measured_on_the_graph():
    codec = Codec.open(BUNDLE, threads=1)
    # g_a: three convolutions (5x5/2, 5x5/2, 3x3) reach about ±11 pixels; h_a adds two more (±23)
    r_y = probe_radius(lambda x: [codec.transforms.analysis(x)[0]], (1, 128, 128), [4])
    assert r_y is not None and 8 <= r_y <= 16
    assert codec._encode_margin() >= 24 and codec._encode_margin() % 8 == 0
    assert 2 <= codec._decode_margin() <= 8
    # a graph whose output depends on the whole input has no finite radius: it is not tiled
    assert probe_radius(lambda x: [np.full((1, 1, 32, 32), x.mean())], (1, 128, 128), [4]) is None


def test_tiles_cover_the_map_once_and_read_inside_it():
    ts = tiles(1000, 700, 256, 32, 8)
    cover = np.zeros((1000, 700), np.int64)
    for t in ts:
        cover[t.kr0 : t.kr1, t.kc0 : t.kc1] += 1
        assert 0 <= t.r0 <= t.kr0 and t.kr1 <= t.r1 <= 1000 and t.r0 % 8 == 0 and t.kr0 % 8 == 0
    assert (cover == 1).all()
    with pytest.raises(ValueError):
        tiles(100, 100, 30, 8, 8)


def test_progress_reports_each_tile_and_pass(small_tiles):
    codec = Codec.open(BUNDLE, threads=1)
    seen: list[tuple[str, int, int]] = []
    codec.progress = lambda step, done, total: seen.append((step, done, total))
    payloads = codec.encode(photo(300, 420))
    codec.decode(payloads)
    steps = {s for s, _, _ in seen}
    assert {"analyse", "entropy-code", "entropy-decode", "synthesise"} <= steps
    for step in steps:
        mine = [(d, t) for s, d, t in seen if s == step]
        assert [d for d, _ in mine] == list(range(1, len(mine) + 1)) and mine[-1][0] == mine[-1][1]
    assert len([1 for s, _, _ in seen if s == "analyse"]) == len(
        tiles(300, 420, 128, codec._encode_margin(), 8)
    )


def test_step_progress_draws_bars_and_stays_quiet_when_asked(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    bar = StepProgress(delay=0)
    for i in range(1, 5):
        bar("synthesise", i, 4)
    assert "synthesise" in err.getvalue() and "4/4" in err.getvalue()
    quiet = io.StringIO()
    monkeypatch.setattr("sys.stderr", quiet)
    off = StepProgress(enabled=False, delay=0)
    off("analyse", 1, 2)
    assert quiet.getvalue() == ""


# ---- what a decode costs ---------------------------------------------------------------------------------
def _header(h: int, w: int) -> bytes:
    return claim(h, w, Codec.open(BUNDLE, need=(), threads=1))


def _measured(bundle=BUNDLE) -> Codec:
    """The codec with its decoder graph measured, as the server holds it (cloud/bundles.py)."""
    from latent_codec.bundle import load_bundle
    from latent_codec.decode_cost import measure_graph

    codec = Codec.open(bundle, threads=1)
    codec.graph_cost = measure_graph(load_bundle(bundle).decoder_bytes or b"")
    return codec


def test_decode_costs_count_one_tile_of_graph_memory_and_every_tile_of_work(monkeypatch):
    codec = _measured()
    g = codec.graph_cost
    assert g is not None
    twelve = codec.decode_costs([_header(3000, 4000)])
    many = codec.decode_costs([_header(6000, 8000)])
    # a bigger photo: more output, codes and CPU, the same graph working memory (one tile at a time)
    assert many.graph_bytes[0] == twelve.graph_bytes[0] < g.bytes(np.asarray([100 * 100 * 16]))[0]
    assert many.out_bytes[0] == 4 * twelve.out_bytes[0] == 4 * 3000 * 4000 * 4
    assert many.seconds[0] > 3.5 * twelve.seconds[0]
    assert twelve.symbols[0] == codec.payload.symbols_per_item(3000, 4000)
    assert twelve.working_bytes(2) < 600 << 20  # a 12 MP photo decodes in a few hundred MB
    # the tiles' overlap is work: more graph seconds than the whole item in one run would take
    assert (
        twelve.seconds[0] - codec.unpack_costs([_header(3000, 4000)])[1][0] > g.seconds(np.asarray([12e6]))[0]
    )
    # without tiles the same item's graph would hold its whole size: what tiling saves
    monkeypatch.setattr(code_map, "DECODE_TILE", 1 << 20)
    whole = codec.decode_costs([_header(3000, 4000)])
    assert whole.graph_bytes[0] > 20 * twelve.graph_bytes[0]
    # small items are not tiled: their graph cost is the base's (per output pixel)
    small = codec.decode_costs([_header(28, 28)] * 4)
    np.testing.assert_array_equal(small.graph_bytes, g.bytes(np.full(4, 28 * 28)))


def test_a_forged_size_header_is_refused_before_any_decoding():
    codec = _measured()
    for h, w in ((40000, 10), (20000, 20000), (0, 5)):
        with pytest.raises(PayloadError, match="payload claims"):
            codec.decode_costs([_header(h, w)])
    with pytest.raises(PayloadError):
        codec.decode_costs([b"\xff\xff\xff\xff\xff"])


@pytest.mark.parametrize("size,n", [((900, 700), 1), ((28, 28), 64)])
def test_decode_costs_cover_what_decoding_allocates(size, n, monkeypatch):
    """numpy's own allocations along the server's decode path (symbols, dequantise, synthesise, unscale;
    tracemalloc sees them, ONNX Runtime's arena it does not) stay within the unpacking and output figures."""
    monkeypatch.setattr(code_map, "DECODE_TILE", 64)
    codec = _measured()
    payloads = codec.encode(np.repeat(photo(*size), n, axis=0))
    costs = codec.decode_costs(payloads)
    codec.decode(payloads[:1])  # warm up: the receptive-field probe and the models are built once
    tracemalloc.start()
    y, side = codec.symbols(payloads)
    codes = codec.dequantise(y)
    del y
    codec.unscale(codec.synthesise(codes, side))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak <= int(costs.out_bytes.sum() + costs.unpack_bytes.sum()) + costs.run_bytes


def test_the_server_decode_path_runs_big_items_in_tiles(small_tiles, tmp_path):
    """The cloud's two decode paths tile a big item: symbols -> dequantise -> synthesise (merged requests) and
    Codec.decode (a request decoded whole, cloud/batching.py), and a real server returns what the codec decodes
    locally."""
    import shutil

    from latent_codec.container import from_tensor
    from tests.helpers import decode_through_server

    shutil.copytree(BUNDLE, tmp_path / "bundles" / BUNDLE.name)
    codec = Codec.open(BUNDLE, threads=1)
    x = photo(517, 389)
    payloads = codec.encode(x)
    seen: list[str] = []
    codec.progress = lambda step, done, total: seen.append(step)
    y, side = codec.symbols(payloads)
    local = codec.synthesise(codec.dequantise(y), side)
    assert "synthesise" in seen  # tiled
    np.testing.assert_allclose(local, codec.decode(payloads, unit=True), atol=1e-6)
    resp = decode_through_server(tmp_path / "bundles", codec, payloads, x)
    np.testing.assert_allclose(from_tensor(resp.reconstructions, "reconstructions"), local, atol=1e-5)
    assert resp.quality.psnr[0] > 25


def test_unscale_in_blocks_equals_the_whole_conversion(monkeypatch):
    codec = Codec.open(BUNDLE, need=())
    x = np.random.default_rng(0).random((2, 1, 301, 157), dtype=np.float32) * 1.2 - 0.1
    want = codec.input.from_unit(x)
    monkeypatch.setattr(code_map, "UNSCALE_BLOCK", 1000)
    got = codec.unscale(x)
    assert got.dtype == want.dtype == np.uint8
    np.testing.assert_array_equal(got, want)


def test_several_big_items_in_one_call_go_one_at_a_time_and_round_trip(small_tiles):
    codec = Codec.open(BUNDLE, threads=1)
    x = np.concatenate([photo(300, 260), photo(300, 260)[:, :, ::-1].copy()])
    together = codec.encode(x)
    assert together == codec.encode(x[:1]) + codec.encode(x[1:])
    rec = codec.decode(together)
    np.testing.assert_array_equal(rec[1:], codec.decode(together[1:]))
    assert _psnr(x, rec) > 25
    with pytest.raises(PayloadError, match="share a size"):
        codec.decode([together[0], codec.encode(photo(300, 200))[0]])

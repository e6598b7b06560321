"""Spatial code maps: items of any size and channel count, the map payload, and decoding that cannot diverge.

Real bundles trained briefly (a grey Fashion-MNIST model with a hyperprior and one with a factorised
prior; the session's colour model on crops of scikit-image's photographs, tests/conftest.py), real ONNX Runtime sessions, a real
server on an ephemeral port, a second Python process for the cross-process check.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from bench.hostile import claim
from cloud.limits import Limits
from latent_codec.bundle import Manifest, load_bundle
from latent_codec.codec import Codec
from latent_codec.container import to_batch, to_tensor
from latent_codec.errors import BundleError, DataError, PayloadError
from latent_codec.families.code_map import MapCodec, MapPayload
from latent_codec.families.hyper_decoder import IntegerHyperDecoder
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc
from tests.helpers import fashion_test_items
from tests.helpers.code_maps import floats_nudged_one_ulp, in_another_process, small_map_bundle

pytestmark = pytest.mark.slow  # trains three small models (~1 min on 2 cores)


@pytest.fixture(scope="module")
def hyper_bundle(tmp_path_factory) -> Path:
    return small_map_bundle(tmp_path_factory, "map-hyper", "hyperprior")


@pytest.fixture(scope="module")
def factorized_bundle(tmp_path_factory) -> Path:
    return small_map_bundle(tmp_path_factory, "map-fact", "factorized")


def _flat_colour_psnr(x: np.ndarray) -> float:
    """PSNR of the items' own mean colour: what a codec that keeps nothing but 3 numbers achieves."""
    return _psnr(x, np.broadcast_to(x.mean(axis=(2, 3), keepdims=True).round(), x.shape))


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


# ---- any size ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(13, 37), (1, 1), (1, 9), (4, 4), (5, 3), (28, 28), (30, 41)])
def test_items_of_any_size_come_back_at_their_size(hyper_bundle, size):
    codec = Codec.open(hyper_bundle)
    assert isinstance(codec, MapCodec)
    h, w = size
    x = np.ascontiguousarray(fashion_test_items(4)[:, :, :h, :w]) if h <= 28 and w <= 28 else None
    if x is None:
        x = np.random.default_rng(1).integers(0, 256, (4, 1, h, w), dtype=np.uint8)
    payloads = codec.encode(x)
    assert codec.output_shapes(payloads).tolist() == [[1, h, w]] * 4  # the size travels in the payload
    rec = codec.decode(payloads)
    assert rec.shape == x.shape and rec.dtype == np.uint8


def test_padding_replicates_edges_and_the_crop_keeps_the_top_left(hyper_bundle):
    """A 13x37 item is coded as its edge-replicated 16x40 padding; decoding crops that back exactly."""
    codec = Codec.open(hyper_bundle)
    x = np.random.default_rng(2).integers(0, 256, (3, 1, 13, 37), dtype=np.uint8)
    padded = np.pad(x, ((0, 0), (0, 0), (0, 3), (0, 3)), mode="edge")
    small = codec.decode(codec.encode(x), unit=True)
    big = codec.decode(codec.encode(padded), unit=True)
    np.testing.assert_array_equal(small, big[:, :, :13, :37])


def test_quality_of_a_trained_map_bundle_beats_its_mean_image(hyper_bundle):
    codec = Codec.open(hyper_bundle)
    x = fashion_test_items(300)
    rec = codec.decode(codec.encode(x))
    mean_image = np.broadcast_to(x.mean(0, keepdims=True).round(), x.shape)
    assert _psnr(x, rec) > _psnr(x, mean_image) + 3.0


def test_one_batch_must_share_a_size_and_decode_each_takes_a_mix(hyper_bundle):
    codec = Codec.open(hyper_bundle)
    items = fashion_test_items(2)
    a = codec.encode(items[:, :, :10, :12])
    b = codec.encode(items[:, :, :28, :20])
    with pytest.raises(PayloadError, match="share a size.*10x12 and 28x20"):
        codec.decode([a[0], b[0]])
    mixed = codec.decode_each([a[0], b[0], a[1]])
    assert [m.shape for m in mixed] == [(1, 10, 12), (1, 28, 20), (1, 10, 12)]
    np.testing.assert_array_equal(mixed[2], codec.decode([a[1]])[0])
    assert codec.first_invalid([a[0], b[0], a[1]]) is None
    # garbage in the stream may decode to other symbols (an efficient code has little redundancy to notice)
    assert codec.first_invalid([a[0], b[0][:-2] + b"\xff\xff", a[1]]) in (1, None)
    assert codec.first_invalid([a[0], b[0] + b"\x00", a[1]]) == 1  # padding: not what the encoder wrote
    assert codec.first_invalid([a[0], b"\x05\x00", a[1]]) == 1  # not what the range coder writes


def test_factorized_map_bundle_round_trips_any_size(factorized_bundle):
    codec = Codec.open(factorized_bundle)
    assert codec.format == "map+factorized"
    x = fashion_test_items(5)[:, :, 3:22, 2:27]
    rec = codec.decode(codec.encode(x))
    assert rec.shape == x.shape
    # well above what each item's own flat mean gives (a content-relative bar: the tiny model's absolute PSNR
    # moves by a few tenths of a dB with the order it saw its 3,000 items in)
    assert _psnr(x, rec) > _flat_colour_psnr(x) + 3.0


def test_colour_items_and_a_real_photograph(colour_bundle):
    from skimage import data

    codec = Codec.open(colour_bundle)
    assert codec.input.shape[0] == 3 and codec.input.any_size
    photo = np.moveaxis(data.astronaut(), -1, 0)[None]  # 512 x 512 colour, never seen in training
    payloads = codec.encode(photo)
    rec = codec.decode(payloads)
    assert rec.shape == photo.shape
    assert len(payloads[0]) < photo.nbytes / 8  # compressed, not stored
    assert _psnr(photo, rec) > _flat_colour_psnr(photo) + 5
    with pytest.raises(DataError, match="3-channel"):
        codec.encode(fashion_test_items(1))


def test_a_photograph_through_the_edge_client_and_the_cloud_server(colour_bundle, tmp_path):
    """edge.cli evaluate over a real photograph file against a real server holding the colour bundle."""
    from PIL import Image
    from skimage import data

    from cloud.server import build_server
    from edge.cli import main as edge_main

    photo = data.coffee()[:301, :413]  # 301 x 413: neither side a multiple of the stride
    Image.fromarray(photo).save(tmp_path / "coffee.png")
    running = build_server(colour_bundle, "127.0.0.1:0", workers=2)
    try:
        report = tmp_path / "report.json"
        rc = edge_main(
            [
                "evaluate",
                "--bundle",
                str(colour_bundle),
                "--server",
                f"127.0.0.1:{running.port}",
                "--data",
                str(tmp_path / "coffee.png"),
                "--json",
                str(report),
                "--no-progress",
                "--keep-reconstructions",
                str(tmp_path / "rec.npy"),
            ]
        )
    finally:
        running.stop(grace=1.0)
    assert rc == 0
    r = json.loads(report.read_text())
    rec = np.load(tmp_path / "rec.npy")
    assert rec.shape == (1, 3, 301, 413)
    local = _psnr(np.moveaxis(photo, -1, 0)[None], rec)
    assert r["psnr"] == pytest.approx(local, abs=0.05)  # the cloud measured what the edge received
    assert r["psnr"] > _flat_colour_psnr(np.moveaxis(photo, -1, 0)[None]) + 5


# ---- the server's view: budgets from the size header, sizes per request ------------------------------------------
def test_server_decodes_maps_and_refuses_what_the_size_header_would_cost(hyper_bundle):
    from cloud.server import build_server

    codec = Codec.open(hyper_bundle)
    x = fashion_test_items(3)[:, :, :17, :26]
    payloads = codec.encode(x)
    running = build_server(hyper_bundle, "127.0.0.1:0", workers=2)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            stub = pb_grpc.DecodingStub(ch)
            resp = stub.Decode(
                pb.DecodeRequest(codes=to_batch(codec, payloads), originals=to_tensor(x)), timeout=30
            )
            assert list(resp.reconstructions.shape) == [3, 1, 17, 26]
            assert resp.quality.batch_psnr == pytest.approx(_psnr(x, codec.decode(payloads)), abs=0.01)
            # A few bytes that claim a large item: over the server's budgets, refused from the header before any
            # decoding, naming the budget the server's own price of it is over; 30000 x 30000 is over what any map
            # payload may claim.
            priced = running.registry.get(
                codec.bundle_id
            ).codec  # the server's codec: its graph measured at load
            limits = Limits(decode_runs=2)  # the server's defaults with its 2 decode threads

            def square(side: int) -> bytes:
                return claim(side, side, codec)

            def refused(payload: bytes) -> str:
                with pytest.raises(grpc.RpcError) as err:
                    stub.Decode(pb.DecodeRequest(codes=to_batch(codec, [payload])), timeout=30)
                assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value
                return err.value.details()

            def working(side: int) -> int:
                return priced.decode_costs([square(side)]).working_bytes(1)

            # 8000 x 8000: more code symbols than one request may entropy-decode (and far more working memory).
            costs = priced.decode_costs([square(8000)])
            symbols = int(costs.symbols.sum())
            assert symbols > limits.max_symbols and working(8000) > limits.max_decode_bytes
            details = refused(square(8000))
            assert f"{symbols:,} code symbols" in details and f"{limits.max_symbols:,}" in details, details
            # The smallest square item over the working-memory budget (its symbols within theirs): the memory
            # budget names what decoding it would hold, as the codec prices it.
            lo, hi = 8, 8000
            while lo < hi:
                mid = (lo + hi) // 2
                lo, hi = (lo, mid) if working(mid) > limits.max_decode_bytes else (mid + 1, hi)
            assert int(priced.decode_costs([square(lo)]).symbols.sum()) <= limits.max_symbols
            details = refused(square(lo))
            assert f"would hold {working(lo):,} bytes" in details and "--max-decode-mib" in details, details
            assert f"{limits.max_decode_bytes:,} bytes" in details
            # One pixel less on each side fits the budget: it is decoded, not refused.
            ok = stub.Decode(
                pb.DecodeRequest(
                    codes=to_batch(codec, codec.encode(np.zeros((1, 1, lo - 1, lo - 1), np.uint8))),
                    reconstruction_format=pb.RECONSTRUCTION_FORMAT_NONE,
                ),
                timeout=120,
            )
            assert ok.count == 1
            with pytest.raises(grpc.RpcError) as err:
                stub.Decode(
                    pb.DecodeRequest(codes=to_batch(codec, [claim(30000, 30000, codec)])),
                    timeout=30,
                )
            assert (
                err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "30000x30000" in err.value.details()
            )
            with pytest.raises(grpc.RpcError) as err:
                stub.Decode(
                    pb.DecodeRequest(codes=to_batch(codec, [payloads[0], codec.encode(x[:1, :, :5, :5])[0]]))
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "share a size" in err.value.details()
            sized = [claim(h, w, codec) for h, w in ((4, 0), (40000, 1), (0, 4))]
            for bad in (b"\x80\x00", b"\x01\x00", *sized):
                with pytest.raises(grpc.RpcError) as err:
                    stub.Decode(pb.DecodeRequest(codes=to_batch(codec, [bad])), timeout=30)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
            with pytest.raises(grpc.RpcError) as err:  # originals must match the items' own size
                stub.Decode(
                    pb.DecodeRequest(codes=to_batch(codec, payloads), originals=to_tensor(x[:, :, :16]))
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "[3, 1, 17, 26]" in err.value.details()
    finally:
        running.stop(grace=1.0)


# ---- the payload format -------------------------------------------------------------------------------------
def test_map_manifest_round_trips_and_refuses_inconsistent_tables(hyper_bundle, tmp_path):
    m = load_bundle(hyper_bundle).manifest
    assert isinstance(m.payload, MapPayload)
    again = Manifest.from_json(m.to_json())
    assert again.payload.to_dict() == m.payload.to_dict()
    assert again.compute_hash(b"e", b"d") == m.compute_hash(b"e", b"d")
    d = json.loads(m.to_json())
    d["payload"]["hyper_decoder"]["thresholds"] = d["payload"]["hyper_decoder"]["thresholds"][:-1]
    with pytest.raises(BundleError, match="thresholds"):
        Manifest.from_dict(d)
    d = json.loads(m.to_json())
    d["payload"]["grid_bits"] += 1
    with pytest.raises(BundleError, match="grid"):
        Manifest.from_dict(d)


# ---- decoding cannot diverge: table selection is integer arithmetic ---------------------------------------------------
def _reference_indices(hd: IntegerHyperDecoder, z: np.ndarray) -> np.ndarray:
    """The integer hyper-decoder written out with Python ints, loop by loop (an independent implementation)."""
    n, c, hz, wz = z.shape
    up = [
        [[[int(z[i, ch, u // 2, v // 2]) for v in range(2 * wz)] for u in range(2 * hz)] for ch in range(c)]
        for i in range(n)
    ]

    def conv(x, w, b):
        out = []
        for xi in x:
            h, wd = len(xi[0]), len(xi[0][0])
            o = [[[int(b[oc]) for _ in range(wd)] for _ in range(h)] for oc in range(w.shape[0])]
            for oc in range(w.shape[0]):
                for ic in range(len(xi)):
                    for u in range(h):
                        for v in range(wd):
                            acc = 0
                            for a in range(3):
                                for bb in range(3):
                                    uu, vv = u + a - 1, v + bb - 1
                                    if 0 <= uu < h and 0 <= vv < wd:
                                        acc += xi[ic][uu][vv] * int(w[oc, ic, a, bb])
                            o[oc][u][v] += acc
            out.append(o)
        return out

    a1 = [[[[max(v, 0) for v in row] for row in ch] for ch in item] for item in conv(up, hd.w1, hd.b1)]
    units = conv(a1, hd.w2, hd.b2)
    thr = [int(t) for t in hd.thresholds]
    return np.asarray(
        [[[[sum(1 for t in thr if t <= v) for v in row] for row in ch] for ch in item] for item in units]
    )


def _adversarial_decoder(seed: int = 0) -> tuple[IntegerHyperDecoder, np.ndarray]:
    """Random weights, and thresholds placed exactly on values the output takes: every such element sits on a
    table boundary, where any rounding difference in a floating-point hyper-decoder would flip its table."""
    rng = np.random.default_rng(seed)
    nh, m = 3, 4
    hd = IntegerHyperDecoder.from_float(
        rng.normal(0, 0.3, (nh, nh, 3, 3)),
        rng.normal(0, 0.1, nh),
        rng.normal(0, 0.3, (m, nh, 3, 3)),
        rng.normal(0, 0.1, m),
        [0.0],
        frac_bits=10,
    )
    z = rng.integers(-6, 7, (5, nh, 3, 4))
    units = hd.log_scale_units(z)
    hd.thresholds = np.unique(units)[:: max(1, units.size // 40)]
    return hd, z


def test_integer_hyper_decoder_matches_an_independent_integer_implementation():
    hd, z = _adversarial_decoder()
    np.testing.assert_array_equal(hd.indices(z, (6, 8)), _reference_indices(hd, z))


def test_a_float_hyper_decoder_would_flip_tables_on_a_one_ulp_change_and_the_integer_one_cannot():
    """The hazard this design removes, shown on the adversarial input: the same hyper-decoder in float32 with its
    weights one ulp up or down selects different tables; the integer decoder's selection is a function of
    integers only and equals the independent reference."""
    import torch

    hd, z = _adversarial_decoder()
    f = float(1 << hd.frac_bits)
    conv = torch.nn.functional.conv2d

    def float_indices(w1, b1, w2, b2):
        x = torch.from_numpy(z.astype(np.float32).repeat(2, axis=2).repeat(2, axis=3))
        a = torch.relu(conv(x, torch.from_numpy(w1), torch.from_numpy(b1), padding=1))
        s = conv(a, torch.from_numpy(w2), torch.from_numpy(b2), padding=1).numpy()
        return np.searchsorted((hd.thresholds / (f * f)).astype(np.float32), s, side="right")

    w1, b1 = (hd.w1 / f).astype(np.float32), (hd.b1 / f).astype(np.float32)
    w2, b2 = (hd.w2 / f).astype(np.float32), (hd.b2 / (f * f)).astype(np.float32)
    up = float_indices(np.nextafter(w1, np.float32(9)), b1, np.nextafter(w2, np.float32(9)), b2)
    down = float_indices(np.nextafter(w1, np.float32(-9)), b1, np.nextafter(w2, np.float32(-9)), b2)
    assert (up != down).any(), "the adversarial input should expose a float hyper-decoder"
    np.testing.assert_array_equal(hd.indices(z, (6, 8)), _reference_indices(hd, z))


def test_a_one_ulp_perturbation_of_the_float_path_selects_the_same_tables(hyper_bundle):
    """The encoder's float outputs one ulp up or down: the same symbols, the same payload bytes, the same tables;
    and the decoder's float path (dequantised codes, decoder.onnx) takes no part in parsing a stream."""
    x = fashion_test_items(30)
    codec = Codec.open(hyper_bundle)
    ref = codec.encode(x)
    _, ref_y, ref_z = codec.payload.unpack(ref)
    ref_idx = codec.payload.table_indices(ref_y.shape, ref_z)
    for target in (np.float32(1e9), np.float32(-1e9)):
        with floats_nudged_one_ulp(codec, target):
            assert codec.encode(x) == ref
            _, y, z = codec.payload.unpack(ref)
            np.testing.assert_array_equal(codec.payload.table_indices(y.shape, z), ref_idx)
    codec.payload.dequantise = lambda s: (_ for _ in ()).throw(AssertionError("parsing used floats"))  # type: ignore[method-assign]
    sizes, y, z = codec.payload.unpack(ref)
    np.testing.assert_array_equal(y, ref_y)


def test_symbols_and_tables_are_identical_across_batch_sizes_and_thread_counts(hyper_bundle):
    x = fashion_test_items(40)
    payloads = Codec.open(hyper_bundle).encode(x)
    ref_sizes, ref_y, ref_z = Codec.open(hyper_bundle, threads=1).payload.unpack(payloads)
    for threads in (1, 2):
        codec = Codec.open(hyper_bundle, threads=threads)
        one_by_one = np.concatenate([codec.payload.unpack([p])[1] for p in payloads])
        np.testing.assert_array_equal(one_by_one, ref_y)
        idx_all = codec.payload.table_indices(ref_y.shape, ref_z)
        idx_one = np.concatenate(
            [codec.payload.table_indices(ref_y[i : i + 1].shape, ref_z[i : i + 1]) for i in range(40)]
        )
        np.testing.assert_array_equal(idx_all, idx_one)
        assert len(np.unique(idx_all)) > 3  # the hyperprior really picks different tables


def test_symbols_are_bit_identical_in_another_process(hyper_bundle, tmp_path):
    """Another interpreter, one ORT and BLAS thread, decodes the same payloads to the same symbols."""
    payloads = Codec.open(hyper_bundle).encode(fashion_test_items(25))
    here = Codec.open(hyper_bundle).payload.unpack(payloads)[1]
    printed = in_another_process(
        hyper_bundle,
        payloads,
        "y=c.payload.unpack(p)[1]; print(hashlib.sha256(y.tobytes()).hexdigest())",
        tmp_path,
        timeout=300,
    )
    assert printed == [hashlib.sha256(here.tobytes()).hexdigest()]


def test_float16_weights_halve_the_bundle_and_keep_its_quality(hyper_bundle, tmp_path):
    from training.export import export_bundle

    ckpt = hyper_bundle.parent / "spatial.pt"
    m16 = export_bundle(
        ckpt, tmp_path / "f16", quant="learned", fit_items=2000, test_limit=300, weights="float16"
    )
    m32 = load_bundle(hyper_bundle).manifest
    for name in ("encoder.onnx", "decoder.onnx"):
        assert (tmp_path / "f16" / name).stat().st_size < 0.8 * (
            hyper_bundle / name
        ).stat().st_size  # tiny model: graph overhead
    assert m16.training["weights"] == "float16" and m16.bundle_id != m32.bundle_id
    assert abs(m16.metrics["test"]["psnr"] - m32.metrics["test"]["psnr"]) < 0.2
    assert m16.training["onnx_parity"]["decoder_max_abs_diff"] <= 1e-4


def test_triton_repository_of_a_map_bundle_has_dynamic_height_and_width(hyper_bundle, tmp_path):
    import onnx

    from training.triton import TritonOptions, write_repository

    dirs = write_repository(hyper_bundle, tmp_path / "repo", TritonOptions())
    dec = next(d for d in dirs if d.name.endswith("-decoder"))
    enc = next(d for d in dirs if d.name.endswith("-encoder"))
    assert "dims: [ 8, -1, -1 ]" in (dec / "config.pbtxt").read_text()  # code map: 8 channels, any size
    assert "dims: [ 1, -1, -1 ]" in (enc / "config.pbtxt").read_text()
    for d in (dec, enc):
        graph = onnx.load(str(d / "1" / "model.onnx")).graph
        dims = graph.input[0].type.tensor_type.shape.dim
        assert all(x.dim_param and not x.dim_value for x in (dims[0], dims[2], dims[3]))  # symbolic N, H, W


def test_ingest_audit_and_fetch_of_map_items_of_several_sizes(hyper_bundle, tmp_path):
    """Ingest validates each size group, audits against the item's own size, and Fetch decodes a mix of sizes."""
    from cloud.server import build_server
    from edge.client import CloudClient
    from edge.ingest import IngestConfig

    codec = Codec.open(hyper_bundle)
    items = fashion_test_items(12)
    small, big = np.ascontiguousarray(items[:6, :, :9, :14]), np.ascontiguousarray(items[6:])
    running = build_server(hyper_bundle, "127.0.0.1:0", workers=2, store=str(tmp_path / "store.db"))
    try:
        with CloudClient(f"127.0.0.1:{running.port}") as client:
            for name, x in (("a", small), ("b", big)):
                config = IngestConfig(
                    bundle=hyper_bundle,
                    spool=tmp_path / f"{name}.db",
                    device_id="cam",
                    source_id=name,
                    audit_fraction=1.0,
                )
                assert client.ingest(config, items=x).acknowledged == len(x)
            fetched = {f.item_id: f.item for f in client.fetch(device_id="cam")}
            assert len(fetched) == 12
            assert fetched["a#0"].shape == (1, 9, 14) and fetched["b#0"].shape == (1, 28, 28)
            np.testing.assert_array_equal(fetched["a#5"], codec.decode(codec.encode(small[5:6]))[0])
            info = client.decoding.ModelInfo(pb.ModelInfoRequest(), timeout=10)
        audited = [b.audit for b in info.bundles if b.bundle_id == codec.bundle_id][0]
        assert audited.items == 12 and audited.psnr > 10
    finally:
        running.stop(grace=1.0)

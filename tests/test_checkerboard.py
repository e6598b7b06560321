"""The checkerboard code-map family (latent_codec/families/checkerboard.py): anchors under the mean-and-scale
hyperprior, non-anchors under (μ, σ) that an exact integer context computes from the decoded anchors and the
hyper-decoder's output. Every table and mean is a function of decoded integers only: the same on every thread
count, batch size and process, unmoved by one-ulp changes of the encoder's floats, equal to an independent
int64 reference, and close to what the trained float model computes (which a mutated context is not)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.map_reference import log_scale_units
from latent_codec.bundle import Manifest
from latent_codec.codec import Codec
from latent_codec.errors import BundleError, PayloadError
from latent_codec.families.checkerboard import (
    CheckerboardCodec,
    CheckerboardPayload,
    IntegerContext,
    anchor_mask,
)
from tests.helpers import decode_with_the_edge_client, fashion_test_items
from tests.helpers.code_maps import floats_nudged_one_ulp, in_another_process, small_map_bundle

pytestmark = pytest.mark.slow  # trains a small model (~35 s on 2 cores)


@pytest.fixture(scope="module")
def cb_bundle(tmp_path_factory) -> Path:
    return small_map_bundle(tmp_path_factory, "map-checkerboard", "checkerboard")


@pytest.fixture(scope="module")
def cb_model(cb_bundle):
    from training.train import load_checkpoint

    torch.set_num_threads(1)
    return load_checkpoint(cb_bundle.parent / "spatial.pt")[0]


def _reference(p: CheckerboardPayload, y_sym: np.ndarray, z_sym: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every element's (table index, mean), independently: int64 einsums over the manifest's integers, 25 taps
    read from a zero-padded anchor map (the manifest's zeros at the other taps), shifts as integer floor."""
    hd, d = p.hyper_decoder, p.context
    assert hd is not None and d is not None
    f, m = hd.frac_bits, p.code_channels
    z = z_sym.astype(np.int64) - (1 << (p.z_grid_bits - 1))
    h, w = y_sym.shape[2:]
    units = log_scale_units(hd, z)[:, :, :h, :w]
    grid = (units + (1 << (f - 1))) // (1 << f)
    mask = anchor_mask(h, w)
    r = y_sym.astype(np.int64) - (1 << (p.grid_bits - 1))
    q = np.where(mask, r * (1 << f) + grid[:, :m], 0)
    qp = np.pad(q, ((0, 0), (0, 0), (2, 2), (2, 2)))
    ctx = np.zeros((len(q), d.wc.shape[0], h, w), np.int64)
    for i in range(5):
        for j in range(5):
            ctx += np.einsum("om,nmhw->nohw", d.wc[:, :, i, j], qp[:, :, i : i + h, j : j + w])
    ctx = (ctx + d.bc[None, :, None, None] + (1 << (f - 1))) // (1 << f)
    x = np.concatenate([grid, ctx], axis=1)
    for k, (wk, bk) in enumerate(zip(d.weights, d.biases)):
        x = np.einsum("oi,nihw->nohw", wk, x) + bk[None, :, None, None]
        if k < len(d.weights) - 1:
            x = (np.maximum(x, 0) + (1 << (f - 1))) // (1 << f)
    out = np.where(mask, units, x + grid * (1 << f))  # non-anchors: the hyper-decoder's output, corrected
    idx = np.searchsorted(hd.thresholds, out[:, m:], side="right")
    return idx, (out[:, :m].astype(np.float64) * 2.0 ** (-2 * f)).astype(np.float32)


def _float_params(model, p: CheckerboardPayload, y_sym: np.ndarray, z_sym: np.ndarray):
    """The trained float model's (table index, μ) of every element, fed the codec's decoded anchors and ẑ."""
    from training.models.spatial import log_scale_thresholds

    mu = p.means_of(y_sym, z_sym)
    codes = torch.from_numpy(p.dequantise_with(y_sym, mu))
    z = torch.from_numpy(z_sym.astype(np.float32) - (1 << (p.z_grid_bits - 1)))
    with torch.no_grad():
        mean, scale = model.checkerboard_params(codes, z)
    idx = np.searchsorted(np.asarray(log_scale_thresholds()), torch.log(scale).double().numpy(), side="right")
    return idx, mean.numpy()


def _agreement(model, p: CheckerboardPayload, y_sym: np.ndarray, z_sym: np.ndarray) -> tuple[float, float]:
    """Over the non-anchors: the share of table indices the codec and the float model agree on, and the
    99th percentile of |μ codec - μ float|."""
    idx, mu = p.select_all(y_sym, z_sym)
    f_idx, f_mu = _float_params(model, p, y_sym, z_sym)
    non = ~anchor_mask(*y_sym.shape[2:])
    same = float((idx[:, :, non] == f_idx[:, :, non]).mean())
    return same, float(np.quantile(np.abs(mu[:, :, non] - f_mu[:, :, non]), 0.99))


def test_a_checkerboard_bundle_is_its_own_family_and_round_trips_any_size(cb_bundle):
    codec = Codec.open(cb_bundle)
    assert isinstance(codec, CheckerboardCodec) and codec.kind == "map-checkerboard"
    assert codec.format == "map+checkerboard"
    assert json.loads((cb_bundle / "manifest.json").read_text())["payload"]["kind"] == "map-checkerboard"
    x = fashion_test_items(20)
    for crop in ((28, 28), (13, 22), (5, 9), (4, 4)):
        xc = np.ascontiguousarray(x[:, :, : crop[0], : crop[1]])
        payloads = codec.encode(xc)
        rec = codec.decode(payloads)
        assert rec.shape == xc.shape
        # what the decoder synthesised is symbol + μ of the codec's own two passes
        sizes, y_sym, z_sym = codec.payload.unpack(payloads)
        np.testing.assert_array_equal(
            y_sym, codec.payload.encode_symbols(*_analysed(codec, xc), codec.rounding)
        )
        assert (
            codec.payload.pack(sizes, y_sym, z_sym) == payloads
        )  # tables from the symbols alone: same bytes
        if crop[0] >= 13:
            mse = float(codec.squared_error(xc, rec).mean())
            flat = float(((xc / 255.0 - (xc / 255.0).mean(axis=(2, 3), keepdims=True)) ** 2).mean())
            assert mse < flat / 2


def _analysed(codec: CheckerboardCodec, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y, side = codec.analyse(codec.scale(x))
    return y, codec.payload.z_symbols(side["hyper"])


def test_tables_and_means_are_the_int64_reference_and_codes_are_residual_plus_mean(cb_bundle):
    codec = Codec.open(cb_bundle)
    codec.rounding = 0.0  # plain rint (rate-aware rounding: tests/test_rd_rounding.py)
    x = fashion_test_items(32)
    payloads = codec.encode(x)
    _, y_sym, z_sym = codec.payload.unpack(payloads)
    idx, mu = codec.payload.select_all(y_sym, z_sym)
    ref_idx, ref_mu = _reference(codec.payload, y_sym, z_sym)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_array_equal(mu, ref_mu)
    symbols, side = codec.symbols(payloads)
    np.testing.assert_array_equal(side["mean"], ref_mu)
    half = np.float32(1 << (codec.payload.grid_bits - 1))
    np.testing.assert_array_equal(codec.dequantise(symbols, side), (y_sym.astype(np.float32) - half) + ref_mu)
    # the encoder sends rint(y - μ) of its own float code map, μ from the decoded anchors for the non-anchors
    y, _ = codec.analyse(codec.scale(x))
    r = np.clip(np.rint(y - ref_mu), -half, half - 1) + half
    np.testing.assert_array_equal(y_sym, r.astype(np.uint16))
    # the context does something: the non-anchors' tables differ from what ẑ alone selects
    h_idx = codec.payload.hyper_pass(y_sym.shape, z_sym)[0]
    non = ~anchor_mask(7, 7)
    assert (h_idx[:, :, non] != idx[:, :, non]).mean() > 0.2
    assert codec.payload.context_bound().dtype == np.float64  # the fast path's bound holds for these weights


def test_the_codec_computes_the_trained_models_context_and_a_mutated_one_does_not(cb_bundle, cb_model):
    """The float model (training's checkerboard_params) on the codec's anchors and ẑ picks the codec's tables and
    means, up to the weights' rounding to 2^-F. The check can fail: the context's taps switched off in the codec
    (not in training), or the non-anchors given the anchors' tables, fall far outside it."""
    codec = Codec.open(cb_bundle)
    p = codec.payload
    _, y_sym, z_sym = p.unpack(codec.encode(fashion_test_items(64)))
    same, err = _agreement(cb_model, p, y_sym, z_sym)
    assert same > 0.97 and err < 0.02, (same, err)

    assert p.context is not None
    off = CheckerboardPayload.from_dict(p.to_dict())  # a copy whose context convolution reads nothing
    assert off.context is not None
    off.context = IntegerContext(
        off.context.frac_bits,
        np.zeros_like(off.context.wc),
        off.context.bc,
        off.context.weights,
        off.context.biases,
    )
    same_off, err_off = _agreement(cb_model, off, y_sym, z_sym)
    assert not (same_off > 0.97 and err_off < 0.02), (same_off, err_off)

    anchor_tables = CheckerboardPayload.from_dict(p.to_dict())

    def hyper_only(y_sym, z_sym):
        idx, mu, _ = anchor_tables.hyper_pass(y_sym.shape, z_sym)
        return idx, mu

    anchor_tables.select_all = hyper_only  # type: ignore[method-assign]
    same_h, err_h = _agreement(cb_model, anchor_tables, y_sym, z_sym)
    assert not (same_h > 0.97 and err_h < 0.02), (same_h, err_h)


def test_payloads_and_codes_are_identical_across_threads_batch_sizes_and_processes(cb_bundle, tmp_path):
    x = fashion_test_items(24)
    ref = Codec.open(cb_bundle, threads=1).encode(x)
    ref_codes = None
    for threads in (1, 2):
        codec = Codec.open(cb_bundle, threads=threads)
        assert codec.encode(x) == ref
        assert sum((codec.encode(x[i : i + 5]) for i in range(0, 24, 5)), []) == ref
        assert [codec.encode(x[i : i + 1])[0] for i in range(24)] == ref
        s_all, side_all = codec.symbols(ref)
        codes_all = codec.dequantise(s_all, side_all)
        one = [codec.symbols([p]) for p in ref]
        np.testing.assert_array_equal(
            codes_all, np.concatenate([codec.dequantise(s, side) for s, side in one])
        )
        ref_codes = codes_all if ref_codes is None else ref_codes
        np.testing.assert_array_equal(codes_all, ref_codes)
    assert ref_codes is not None
    codes_hash, bytes_hash = in_another_process(
        cb_bundle,
        ref,
        "s,side=c.symbols(p); print(hashlib.sha256(c.dequantise(s, side).tobytes()).hexdigest());"
        "from latent_codec import datasets; x=datasets.load('fashion-mnist','test').x[:24];"
        "print(hashlib.sha256(b''.join(c.encode(x))).hexdigest())",
        tmp_path,
    )
    assert codes_hash == hashlib.sha256(ref_codes.tobytes()).hexdigest()
    assert bytes_hash == hashlib.sha256(b"".join(ref)).hexdigest()


def test_split_over_two_workers_gives_the_bytes_and_items_of_one_thread(cb_bundle):
    """A device's --threads 2 (Codec.open_split) and a server's decode threads split many items into groups:
    the payloads and the decoded items must be those of one thread (a group written out of place fails)."""
    from latent_codec.parallel import Workers

    x = fashion_test_items(130)
    one = Codec.open(cb_bundle, threads=1)
    ref = one.encode(x)
    split = Codec.open_split(cb_bundle, threads=2)
    assert split.workers.threads == 2
    assert split.encode(x) == ref
    np.testing.assert_array_equal(split.decode(ref, workers=Workers(2)), one.decode(ref))


def test_a_one_ulp_perturbation_of_the_encoders_floats_changes_no_table(cb_bundle):
    x = fashion_test_items(20)
    codec = Codec.open(cb_bundle)
    ref = codec.encode(x)
    _, ref_y, ref_z = codec.payload.unpack(ref)
    ref_idx = codec.payload.select_all(ref_y, ref_z)[0]
    for target in (np.float32(1e9), np.float32(-1e9)):
        with floats_nudged_one_ulp(codec, target):
            got = codec.encode(x)
        # a residual exactly at a rounding boundary may flip; anything more means a float decided a table
        changed = [i for i, (a, b) in enumerate(zip(got, ref)) if a != b]
        assert len(changed) <= 1
        _, y, z = codec.payload.unpack(got)
        np.testing.assert_array_equal(z, ref_z)
        keep = [i for i in range(len(x)) if i not in changed]
        np.testing.assert_array_equal(codec.payload.select_all(y, z)[0][keep], ref_idx[keep])


def test_bad_and_truncated_payloads_are_payload_errors(cb_bundle):
    codec = Codec.open(cb_bundle)
    payloads = codec.encode(fashion_test_items(4))
    good = payloads[0]
    bad = [b"", good[:1], good[:2], *(good[:k] for k in range(3, len(good))), good + b"\x01\x02\x03\x04"]
    bad += [b"\xff" * 12, b"\x1c\x1c" + b"\x00" * 40, b"\x80\x80\x80\x80\x80", b"\x90\x4e\x90\x4e" + good[2:]]
    rng = np.random.default_rng(0)
    for _ in range(40):
        b = bytearray(good)
        b[int(rng.integers(2, len(b)))] ^= 1 << int(rng.integers(0, 8))
        bad.append(bytes(b))
    # The range coder's canonical check: a damaged payload is refused, or (an efficient code has almost no
    # redundancy) it is the one payload of other symbols; it never passes as the item it was made from.
    rec_good = codec.decode([good])
    failed = 0
    for b in bad:
        try:
            rec = codec.decode([b])
            assert rec.shape[:2] == (1, 1)  # never a crash
        except PayloadError:
            pass
        if codec.problem(b) is None:  # validation (what the cloud stores) proves the stream canonical
            assert not np.array_equal(codec.decode([b]), rec_good), b
        else:
            failed += 1
    assert failed >= 4  # the missing and malformed size headers at least
    with pytest.raises(PayloadError):
        codec.decode([good, codec.encode(fashion_test_items(1)[:, :, :13, :22])[0]])  # two sizes, one batch


def test_the_server_decodes_checkerboard_items_with_honest_costs(cb_bundle):
    codec = Codec.open(cb_bundle)
    x = fashion_test_items(12)
    payloads = codec.encode(x)
    costs = codec.decode_costs(payloads)
    ms_bytes = codec.payload.code_channels * 49 * (14 + 4)  # mean-and-scale's unpacking per 7x7 item
    assert np.all(costs.unpack_bytes > ms_bytes) and costs.run_bytes > 0 and np.all(costs.seconds > 0)
    got = decode_with_the_edge_client(cb_bundle.parent, codec, payloads, x)
    np.testing.assert_array_equal(got.items, codec.decode(payloads))
    assert got.mse is not None and np.allclose(got.mse, codec.squared_error(x, codec.decode(payloads)))


def test_manifests_with_a_bad_context_are_refused(cb_bundle):
    d = json.loads((cb_bundle / "manifest.json").read_text())
    bad = json.loads(json.dumps(d))
    del bad["payload"]["context"]
    with pytest.raises(BundleError, match="context"):
        Manifest.from_dict(bad)
    bad = json.loads(json.dumps(d))
    wc = bad["payload"]["context"]["wc"]
    wc["values"][0] = 7  # tap (0, 0): the window's centre colour, not an anchor
    with pytest.raises(BundleError, match="not anchors"):
        Manifest.from_dict(bad)
    bad = json.loads(json.dumps(d))
    bad["payload"]["context"]["layers"][0]["w"]["values"][0] = 1 << 62  # sums could pass int64
    with pytest.raises(BundleError, match="int64"):
        Manifest.from_dict(bad)
    bad = json.loads(json.dumps(d))
    bad["payload"]["entropy"] = "meanscale"
    with pytest.raises(BundleError, match="map-checkerboard.*checkerboard.*meanscale"):
        Manifest.from_dict(bad)


def test_strips_and_the_int64_path_give_the_same_tables_on_a_big_item(cb_bundle, monkeypatch):
    """A photo's map runs through the context in strips of positions, in float64 BLAS products under the bound;
    tiny strips, and int64 products (what weights past 2^53 would get), give the very same integers."""
    from skimage import data

    from latent_codec.families import checkerboard, code_map, hyper_decoder

    codec = Codec.open(cb_bundle, threads=1)
    x = np.ascontiguousarray(data.camera()[None, None, :300, :260])
    monkeypatch.setattr(code_map, "ENCODE_TILE", 96)  # analysed in tiles too
    payloads = codec.encode(x)
    _, y_sym, z_sym = codec.payload.unpack(payloads)
    want = codec.payload.select_all(y_sym, z_sym)
    ref_idx, ref_mu = _reference(codec.payload, y_sym, z_sym)
    np.testing.assert_array_equal(want[0], ref_idx)
    np.testing.assert_array_equal(want[1], ref_mu)
    monkeypatch.setattr(hyper_decoder, "STRIP_POSITIONS", 37)
    got = codec.payload.select_all(y_sym, z_sym)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    monkeypatch.setattr(checkerboard, "FLOAT_EXACT", 1)
    fresh = CheckerboardPayload.from_dict(codec.payload.to_dict())  # no cached bound
    assert fresh.context_bound().dtype == np.int64
    got = fresh.select_all(y_sym, z_sym)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    monkeypatch.setattr(code_map, "DECODE_TILE", 20)  # and synthesised in tiles, from the same codes
    assert codec.tiled_decode(300, 260)
    rec = codec.decode(payloads, unit=True)
    assert rec.shape == (1, 1, 300, 260)
    mse = float(((rec - x / 255.0) ** 2).mean())
    assert mse < float(((x / 255.0 - x.mean() / 255.0) ** 2).mean()) / 2

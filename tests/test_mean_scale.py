"""The mean-and-scale code-map family (latent_codec/families/mean_scale.py): residuals around means that the
integer hyper-decoder predicts from ẑ alone, so every mean (like every table choice) is the same on every
machine, thread count, batch size and process; what the decoder gets is residual + mean exactly."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from bench.map_reference import log_scale_units
from latent_codec.codec import Codec
from latent_codec.errors import BundleError, PayloadError
from latent_codec.families import code_map
from latent_codec.families.mean_scale import MeanScaleCodec
from tests.helpers import decode_with_the_edge_client, fashion_test_items
from tests.helpers.code_maps import floats_nudged_one_ulp, in_another_process, small_map_bundle

pytestmark = pytest.mark.slow  # trains a small model (~30 s on 2 cores)


@pytest.fixture(scope="module")
def ms_bundle(tmp_path_factory) -> Path:
    return small_map_bundle(tmp_path_factory, "map-meanscale", "meanscale")


def _reference_means(codec: MeanScaleCodec, z_sym: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An independent computation: int64 convolutions (the einsum way), units times 2^-2F, one float32 rounding."""
    p = codec.payload
    assert p.hyper_decoder is not None
    z = z_sym.astype(np.int64) - (1 << (p.z_grid_bits - 1))
    units = log_scale_units(p.hyper_decoder, z)[:, : p.code_channels, : size[0], : size[1]]
    return (units.astype(np.float64) * 2.0 ** (-2 * p.hyper_decoder.frac_bits)).astype(np.float32)


def test_a_mean_scale_bundle_is_its_own_family_and_round_trips_any_size(ms_bundle):
    codec = Codec.open(ms_bundle)
    assert (
        isinstance(codec, MeanScaleCodec)
        and codec.kind == "map-meanscale"
        and codec.format == "map+meanscale"
    )
    assert json.loads((ms_bundle / "manifest.json").read_text())["payload"]["kind"] == "map-meanscale"
    x = fashion_test_items(20)
    for crop in ((28, 28), (13, 22)):
        xc = np.ascontiguousarray(x[:, :, : crop[0], : crop[1]])
        rec = codec.decode(codec.encode(xc))
        assert rec.shape == xc.shape
        mse = float(codec.squared_error(xc, rec).mean())
        flat = float(((xc / 255.0 - (xc / 255.0).mean(axis=(2, 3), keepdims=True)) ** 2).mean())
        assert mse < flat / 2  # far better than each item's mean grey


def test_the_means_are_the_integer_reference_and_the_codes_are_residual_plus_mean(ms_bundle):
    codec = Codec.open(ms_bundle)
    codec.rounding = 0.0  # plain rint (rate-aware rounding: tests/test_rd_rounding.py)
    x = fashion_test_items(16)
    payloads = codec.encode(x)
    sizes, y_sym, z_sym = codec.payload.unpack(payloads)
    symbols, side = codec.symbols(payloads)
    np.testing.assert_array_equal(symbols, y_sym)
    mu = _reference_means(codec, z_sym, (7, 7))
    np.testing.assert_array_equal(side["mean"], mu)
    assert np.abs(mu).max() > 0.1  # the means are not all zero: the family does something
    half = np.float32(1 << (codec.payload.grid_bits - 1))
    np.testing.assert_array_equal(codec.dequantise(symbols, side), (y_sym.astype(np.float32) - half) + mu)
    # the encoder sends rint(y - μ): the residual of the encoder's own float code map
    y, enc_side = codec.analyse(codec.scale(x))
    r = np.clip(np.rint(y - mu), -half, half - 1) + half
    np.testing.assert_array_equal(y_sym, r.astype(np.uint16))
    with pytest.raises(PayloadError, match="means"):
        codec.dequantise(symbols)


def test_means_and_tables_are_identical_across_batch_sizes_threads_and_processes(ms_bundle, tmp_path):
    x = fashion_test_items(24)
    payloads = Codec.open(ms_bundle).encode(x)
    ref_codes = None
    for threads in (1, 2):
        codec = Codec.open(ms_bundle, threads=threads)
        s_all, side_all = codec.symbols(payloads)
        codes_all = codec.dequantise(s_all, side_all)
        one = [codec.symbols([p]) for p in payloads]
        codes_one = np.concatenate([codec.dequantise(s, side) for s, side in one])
        np.testing.assert_array_equal(codes_all, codes_one)
        ref_codes = codes_all if ref_codes is None else ref_codes
        np.testing.assert_array_equal(codes_all, ref_codes)
    assert ref_codes is not None
    printed = in_another_process(
        ms_bundle,
        payloads,
        "s,side=c.symbols(p); print(hashlib.sha256(c.dequantise(s, side).tobytes()).hexdigest())",
        tmp_path,
    )
    assert printed == [hashlib.sha256(ref_codes.tobytes()).hexdigest()]


def test_a_one_ulp_perturbation_of_the_encoders_floats_sends_the_same_bytes(ms_bundle):
    x = fashion_test_items(20)
    codec = Codec.open(ms_bundle)
    ref = codec.encode(x)
    for target in (np.float32(1e9), np.float32(-1e9)):
        with floats_nudged_one_ulp(codec, target):
            got = codec.encode(x)
        # a residual exactly at a rounding boundary may flip; anything more means μ is not from integers
        assert sum(a != b for a, b in zip(got, ref)) <= 1


def test_tiles_give_the_whole_items_codes(ms_bundle, monkeypatch):
    from skimage import data

    codec = Codec.open(ms_bundle, threads=1)
    x = np.ascontiguousarray(data.camera()[None, None, :300, :260])
    monkeypatch.setattr(code_map, "ENCODE_TILE", 96)
    monkeypatch.setattr(code_map, "DECODE_TILE", 20)
    assert codec.tiled_encode(300, 260) and codec.tiled_decode(300, 260)
    tiled = codec.encode(x)
    rec_tiled = codec.decode(tiled, unit=True)
    monkeypatch.setattr(code_map, "ENCODE_TILE", 1 << 20)
    monkeypatch.setattr(code_map, "DECODE_TILE", 1 << 20)
    whole = codec.encode(x)
    rec_whole = codec.decode(whole, unit=True)
    y_t, y_w = codec.payload.unpack(tiled)[1], codec.payload.unpack(whole)[1]
    assert (y_t != y_w).mean() <= 1e-4
    if tiled == whole:
        assert np.abs(rec_tiled - rec_whole).max() <= 1e-4


def test_the_server_decodes_and_stores_mean_scale_items(ms_bundle, tmp_path):
    codec = Codec.open(ms_bundle)
    x = fashion_test_items(12)
    payloads = codec.encode(x)
    got = decode_with_the_edge_client(ms_bundle.parent, codec, payloads, x)
    np.testing.assert_array_equal(got.items, codec.decode(payloads))
    assert got.mse is not None and np.allclose(got.mse, codec.squared_error(x, codec.decode(payloads)))


def test_a_scale_only_manifest_is_not_read_as_mean_scale(ms_bundle):
    from latent_codec.bundle import Manifest

    d = json.loads((ms_bundle / "manifest.json").read_text())
    d["payload"]["entropy"] = "hyperprior"
    with pytest.raises(BundleError, match="map-meanscale.*meanscale.*hyperprior"):
        Manifest.from_dict(d)
    d["payload"]["kind"] = "map"  # the scale hyperprior with 2M outputs: the shapes do not fit
    with pytest.raises(BundleError, match="shapes"):
        Manifest.from_dict(d)

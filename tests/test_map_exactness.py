"""The fast table selection and the batched coder give exactly what the old code gave (bench/map_reference.py).

Table selection: BLAS products on integer-valued floats are exact only below a bound proven from the weights
(latent_codec/families/hyper_decoder.py); these tests check the new path against the int64 einsum reference
on every committed zoo bundle over ẑ's whole grid, in strips and across BLAS thread counts, and on
adversarial weights placed at the bound, where one rounding would show. Coding: the runs of one symbol array
produce the same payload bytes as one coder call per item per table group.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from bench import map_reference as ref
from latent_codec import bundle as bundle_mod
from latent_codec.bundle import find_bundles
from latent_codec.codec import Codec
from latent_codec.errors import BundleError
from latent_codec.factorized_prior import FactorizedPrior
from latent_codec.families import code_map, hyper_decoder
from latent_codec.families.code_map import MapPayload
from latent_codec.families.hyper_decoder import FLOAT_EXACT, INT64_EXACT, IntegerHyperDecoder
from tests.helpers import ROOT


def _payload(b) -> dict:
    return json.loads((b / "manifest.json").read_text())["payload"]


MAPS = [b for b in find_bundles(ROOT / "zoo") if _payload(b).get("kind") == "map"]
HYPER = [b for b in MAPS if _payload(b)["entropy"] == "hyperprior"]


def _python_units(hd: IntegerHyperDecoder, z: np.ndarray) -> np.ndarray:
    """The pre-threshold output in Python integers (object arrays): no overflow, no rounding, any size."""
    o = ref.log_scale_units(
        IntegerHyperDecoder(
            hd.frac_bits,
            hd.w1.astype(object),
            hd.b1.astype(object),
            hd.w2.astype(object),
            hd.b2.astype(object),
            hd.thresholds,
        ),
        np.asarray(z).astype(object),
    )
    return o


@pytest.mark.parametrize("bundle", HYPER, ids=[b.name for b in HYPER])
def test_every_zoo_bundle_selects_the_same_tables_as_the_int64_reference(bundle):
    p = Codec.open(bundle, need=()).payload
    hd, half = p.hyper_decoder, 1 << (p.z_grid_bits - 1)
    rng = np.random.default_rng(0)
    for n, hz, wz, size in (
        (64, 4, 4, (7, 7)),
        (3, 9, 13, (17, 25)),
        (2, 1, 1, (1, 1)),
        (1, 30, 70, (59, 140)),
    ):
        z = rng.integers(-half, half, (n, p.hyper_channels, hz, wz))
        z[0, :, :2] = half - 1  # the grid's extremes, where sums are largest
        z[-1, :, -2:] = -half
        want = ref.indices(hd, z, size)
        np.testing.assert_array_equal(hd.indices(z, size, z_max=half), want)
        np.testing.assert_array_equal(p.table_indices((n, p.code_channels, *size), z + half), want)


def test_strips_and_blas_threads_do_not_change_a_single_index(monkeypatch):
    p = Codec.open(HYPER[0], need=()).payload
    hd, half = p.hyper_decoder, 1 << (p.z_grid_bits - 1)
    z = np.random.default_rng(1).integers(-half, half, (2, p.hyper_channels, 23, 31))
    want = ref.indices(hd, z, (45, 62))
    for strip in (1, 7, 64, 1 << 16):  # one ẑ row per strip up to the whole map at once
        monkeypatch.setattr(hyper_decoder, "STRIP_POSITIONS", strip)
        for threads in (1, 2):
            with threadpool_limits(threads):
                np.testing.assert_array_equal(hd.indices(z, (45, 62), z_max=half), want)


def _decoder_at(bound_bits: int, w1_bits: int = 6, seed: int = 0) -> tuple[IntegerHyperDecoder, np.ndarray]:
    """Weights whose layer-2 bound is just below 2^bound_bits, and a ẑ that reaches it: every ẑ at +z_max
    and every weight positive, so each sum is Σ|w|·(max input), the largest the bound allows. Layer 1's
    weights are odd numbers of w1_bits bits (w1_bits=18: layer 1 sums just past float32's 2^24)."""
    rng = np.random.default_rng(seed)
    nh, m, z_max = 3, 2, 4
    w1 = rng.integers(1 << (w1_bits - 1), 1 << w1_bits, (nh, nh, 3, 3)) | 1
    b1 = np.zeros(nh, np.int64)
    layer1 = int(w1.sum(axis=(1, 2, 3)).max()) * z_max
    per = (1 << bound_bits) // (layer1 * nh * 9) - 1
    w2 = np.full((m, nh, 3, 3), per, np.int64)
    w2[1] = per - rng.integers(0, 3, (nh, 3, 3))  # channel 1 a little smaller: a second table
    b2 = np.array([-1, 1], np.int64)
    hd = IntegerHyperDecoder(10, w1, b1, w2, b2, np.array([0], np.int64))
    z = np.full((2, nh, 3, 4), z_max, np.int64)
    z[1, :, 1, 1] = z_max - 1  # one element off the maximum: its sums are exactly one step apart
    units = _python_units(hd, z).astype(np.int64)
    hd.thresholds = np.unique(units)[:: max(1, units.size // 30)]  # on values the output takes: boundaries
    return hd, z


@pytest.mark.parametrize("bits,w1_bits", [(52, 6), (53, 6), (62, 6), (53, 18), (40, 18)])
def test_adversarial_weights_at_the_bound_select_exactly(bits, w1_bits):
    """Sums that reach just below 2^53 run in float64 and are exact; past it int64 takes over; layer 1 runs in
    float32 only below 2^24; all equal Python's integers. A float64 product at the same magnitudes past
    2^53 would round (checked)."""
    hd, z = _decoder_at(bits, w1_bits)
    b = hd.check(4)
    assert b.layer2 < 1 << bits and b.layer2 >= 1 << (bits - 1)
    assert b.path == ("float" if bits <= 53 else "int64")
    assert b.dtypes[0] == (np.float32 if w1_bits == 6 else np.float64)
    units = _python_units(hd, z)
    want = np.searchsorted(hd.thresholds, units.astype(np.int64), side="right")
    np.testing.assert_array_equal(hd.indices(z, (6, 8), z_max=4), want)
    np.testing.assert_array_equal(hd.log_scale_units(z, z_max=4), units.astype(np.int64))
    if bits > 53:  # the hazard the bound guards against: float64 rounds sums of this size
        approx = ref.log_scale_units(
            IntegerHyperDecoder(
                10,
                hd.w1.astype(np.float64),
                hd.b1.astype(np.float64),
                hd.w2.astype(np.float64),
                hd.b2.astype(np.float64),
                hd.thresholds,
            ),
            z.astype(np.float64),
        )
        assert (approx.astype(np.int64) != units.astype(np.int64)).any()


def test_weights_that_could_overflow_int64_are_refused_at_export_and_on_load(tmp_path):
    hd, _ = _decoder_at(52)
    hd.w2 = hd.w2 * (1 << 20)  # sums up to 2^72
    y_tables = FactorizedPrior(np.full((len(hd.thresholds) + 1, 16), 1 << 12, np.int64))
    z_tables = FactorizedPrior(np.full((3, 8), 1 << 13, np.int64))
    with pytest.raises(ValueError, match="beyond int64's exact range"):
        MapPayload("hyperprior", 2, 4, 4, y_tables, 3, 2, 3, z_tables, hd)  # what export builds
    ok = MapPayload("hyperprior", 2, 4, 4, y_tables, 3, 2, 3, z_tables, _decoder_at(52)[0])
    d = ok.to_dict()
    d["hyper_decoder"]["w2"]["values"] = [v * (1 << 20) for v in d["hyper_decoder"]["w2"]["values"]]
    with pytest.raises(ValueError, match="beyond int64's exact range"):
        MapPayload.from_dict(d)
    # a whole bundle: Codec.open refuses it with a BundleError naming the reason
    src = HYPER[0]
    manifest = json.loads((src / "manifest.json").read_text())
    manifest["payload"]["hyper_decoder"]["w2"]["values"] = [
        v * (1 << 40) for v in manifest["payload"]["hyper_decoder"]["w2"]["values"]
    ]
    with pytest.raises(BundleError, match="int64's exact range"):
        bundle_mod.Manifest.from_dict(manifest)


def _random_items(codec: Codec, n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = np.cumsum(rng.integers(-12, 13, size=(n, codec.channels, h, w)), axis=-1)
    return np.clip(smooth - smooth.min() + 40, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("bundle", MAPS, ids=[b.name for b in MAPS])
def test_batched_runs_give_the_old_payload_bytes_and_decode_back(bundle):
    codec = Codec.open(bundle, threads=1)
    p = codec.payload
    for n, h, w in ((40, 28, 28), (2, 61, 90)):
        x = _random_items(codec, n, h, w)
        new = codec.encode(x)
        assert new == ref.encode(codec, x)
        y, z = ref.unpack(p, new)
        _, y2, z2 = p.unpack(new)
        np.testing.assert_array_equal(y2, y)
        if z is not None:
            np.testing.assert_array_equal(z2, z)


def test_segments_and_both_z_codings_give_the_same_bytes(monkeypatch):
    """A big item's ŷ is sorted in segments and its ẑ coded per channel; forced on a small item, both give
    the bytes of the single-segment, single-call coding, and decode back."""
    codec = Codec.open(HYPER[0], threads=1)
    p = codec.payload
    x = _random_items(codec, 3, 45, 67, seed=3)
    want = codec.encode(x)
    y_want = p.unpack(want)[1]
    for segment, small_z in ((1 << 18, 0), (97, 64), (1, 0), (4096, 1 << 20)):
        monkeypatch.setattr(code_map, "SEGMENT", segment)
        monkeypatch.setattr(code_map, "SMALL_Z", small_z)
        monkeypatch.setattr(code_map, "GROUP_ELEMENTS", 5000)  # several passes of items
        p._cache.clear()
        assert codec.encode(x) == want
        np.testing.assert_array_equal(p.unpack(want)[1], y_want)


def test_float_exactness_constants():
    assert float(FLOAT_EXACT - 1) + 1.0 == float(FLOAT_EXACT)  # the last integer float64 steps by one
    assert float(FLOAT_EXACT) + 1.0 == float(FLOAT_EXACT)  # and past it the next integer is lost
    assert INT64_EXACT == 2**63


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
def test_threshold_lookup_equals_searchsorted_at_every_boundary(dtype):
    """The uniform-grid guess with one correction each way: exact at, just below and just above every
    threshold and far outside them; thresholds too uneven for one correction fall back to searchsorted."""
    from latent_codec.families.hyper_decoder import _Thresholds

    rng = np.random.default_rng(4)
    even = np.cumsum(np.full(63, 1000) + rng.integers(-3, 4, 63)) - 20000
    uneven = np.sort(rng.choice(np.arange(-(10**6), 10**6), 63, replace=False))
    for t, fast in ((even, True), (uneven, False)):
        look = _Thresholds(t, dtype)
        assert look.fast == fast
        u = np.concatenate([t - 1, t, t + 1, [-(10**7), 10**7, 0]]).astype(dtype)
        np.testing.assert_array_equal(look(u), np.searchsorted(t, u.astype(np.int64), side="right"))


def test_assigning_new_thresholds_or_weights_is_taken_into_account():
    hd, z = _decoder_at(40)
    first = hd.indices(z, (6, 8), z_max=4)
    units = _python_units(hd, z).astype(np.int64)
    hd.thresholds = np.unique(units)[::3]
    np.testing.assert_array_equal(
        hd.indices(z, (6, 8), z_max=4), np.searchsorted(hd.thresholds, units, side="right")
    )
    hd.w2 = hd.w2 * 2
    assert not np.array_equal(hd.log_scale_units(z, z_max=4), units) and len(np.unique(first)) >= 1


@pytest.mark.parametrize("entropy", ["factorized", "hyperprior"])
def test_the_unpacking_time_is_measured_even_with_tables_that_cannot_code_most_symbols(entropy):
    """MapPayload.seconds_per_symbol codes a synthetic item once (what a server prices decodes with): it picks
    symbols each table can code, so tables with zero-frequency symbols (a briefly trained bundle) still measure."""
    from latent_codec.decode_cost import ENTROPY_SECONDS_PER_SYMBOL

    def peaked(k: int, levels: int) -> FactorizedPrior:
        t = np.zeros((k, levels), np.int64)
        t[:, levels // 2] = (1 << 16) - 2
        t[:, levels // 2 + 1] = 2
        return FactorizedPrior(t)

    hd, _ = _decoder_at(40)
    if entropy == "factorized":
        p = MapPayload("factorized", 2, 4, 4, peaked(2, 16))
    else:
        p = MapPayload("hyperprior", 2, 4, 4, peaked(len(hd.thresholds) + 1, 16), 3, 2, 3, peaked(3, 8), hd)
    seconds = p.seconds_per_symbol()
    assert ENTROPY_SECONDS_PER_SYMBOL / 20 <= seconds < ENTROPY_SECONDS_PER_SYMBOL
    assert p._measure_unpack(64) > 0

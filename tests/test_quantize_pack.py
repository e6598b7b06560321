"""The codec's coding steps (quantise, entropy-code, lay out) and its container: round trips and validation errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latent_codec import ans
from latent_codec.bit_packing import pack_bits, unpack_bits
from latent_codec.container import from_batch, split_payloads, to_batch
from latent_codec.errors import PayloadError
from latent_codec.factorized_prior import FactorizedPrior
from latent_codec.families.flat import FlatPayload, SideField
from latent_codec.quantisation import Quantiser
from tests.helpers import codes_codec, pack_codes, unpack_codes


@pytest.fixture
def codes():
    rng = np.random.default_rng(0)
    return (rng.normal(size=(200, 12)) * np.linspace(0.5, 3, 12)).astype(np.float32)


@pytest.mark.parametrize("bits", [2, 3, 5, 8, 11, 16])
def test_affine_error_within_half_step(codes, bits):
    q = Quantiser.fit_affine(codes, bits)
    s = q.quantise(codes)
    assert s.max() < (1 << bits) and s.dtype == np.uint16
    step = (np.array(q.hi) - np.array(q.lo)) / ((1 << bits) - 1)
    err = np.abs(q.dequantise(s) - codes)
    assert np.all(err <= step / 2 + 1e-5)
    spec = FlatPayload(q, 12)
    payloads = pack_codes(spec, codes)
    assert all(len(p) == (12 * bits + 7) // 8 for p in payloads) and spec.item_bytes == (12 * bits + 7) // 8
    back, _ = unpack_codes(spec, payloads)
    np.testing.assert_array_equal(back, q.dequantise(s))


def test_float16_and_float32(codes):
    for kind, nbytes in (("float16", 24), ("float32", 48)):
        spec = FlatPayload(Quantiser(kind), 12)
        p = pack_codes(spec, codes)
        assert len(p[0]) == nbytes
        back, _ = unpack_codes(spec, p)
        np.testing.assert_array_equal(back, codes.astype(kind).astype(np.float32))


def test_side_fields_are_packed_and_counted(codes):
    rng = np.random.default_rng(3)
    sw = rng.integers(0, 4, size=(200, 2, 3, 3))
    spec = FlatPayload(Quantiser.fit_affine(codes, 4), 12, side=[SideField("switches0", [2, 3, 3], 2)])
    p = pack_codes(spec, codes, {"switches0": sw})
    assert len(p[0]) == (12 * 4 + 18 * 2 + 7) // 8  # 84 bits -> 11 bytes
    _, side = unpack_codes(spec, p)
    np.testing.assert_array_equal(side["switches0"], sw)
    with pytest.raises(PayloadError, match="missing side field"):
        pack_codes(spec, codes)
    with pytest.raises(PayloadError, match="values outside 0..3"):
        pack_codes(spec, codes, {"switches0": sw + 4})


def test_entropy_coded_roundtrip_and_smaller(codes):
    q = Quantiser.fit_affine(codes, 6)
    prior = FactorizedPrior.fit(q.quantise(codes), q.levels)
    assert np.all(prior.tables.sum(axis=1) == 1 << 16) and prior.tables.min() >= 1
    spec = FlatPayload(q, 12, prior)
    p = pack_codes(spec, codes)
    back, _ = unpack_codes(spec, p)
    np.testing.assert_array_equal(back, q.dequantise(q.quantise(codes)))
    # ANS spends close to the ideal code length under the prior (a few bytes of state overhead).
    ideal = prior.bits(q.quantise(codes)) / 8
    assert np.mean([len(x) for x in p]) <= ideal.mean() + 4
    # The manifest form rebuilds an identical coder.
    spec2 = FlatPayload.from_dict(spec.to_dict())
    assert pack_codes(spec2, codes) == p


def test_entropy_coding_pays_off_on_peaked_codes():
    rng = np.random.default_rng(5)
    # Sparse codes: 80% exact zeros, as a sparse autoencoder produces.
    codes = np.where(rng.random((2000, 16)) < 0.8, 0.0, rng.normal(size=(2000, 16))).astype(np.float32)
    q = Quantiser.fit_affine(codes, 8)
    spec = FlatPayload(q, 16, FactorizedPrior.fit(q.quantise(codes), q.levels))
    sizes = [len(x) for x in pack_codes(spec, codes)]
    assert np.mean(sizes) < 0.5 * 16  # half the bytes of 8-bit fixed width


def test_corrupt_entropy_payload_is_reported(codes):
    q = Quantiser.fit_affine(codes, 6)
    spec = FlatPayload(q, 12, FactorizedPrior.fit(q.quantise(codes), q.levels))
    p = pack_codes(spec, codes[:1])[0]
    with ans.verifying(), pytest.raises(PayloadError):  # validation proves range-coded streams canonical
        unpack_codes(spec, [p + b"\xff\xff\xff\xff\x01"])
    with pytest.raises(PayloadError, match="ends in a zero byte"):  # refused by plain decoding too
        unpack_codes(spec, [p + b"\x00"])


def test_split_validation():
    assert split_payloads(b"abcdef", [], 3, 2) == [b"ab", b"cd", b"ef"]
    assert split_payloads(b"abcdef", [1, 5], 2, None) == [b"a", b"bcdef"]
    q = Quantiser.fit_affine(np.zeros((2, 1), np.float32), 4)
    variable = codes_codec(FlatPayload(q, 1, FactorizedPrior.fit(np.zeros((2, 1), np.int64), q.levels)))
    batch = to_batch(variable, [b"a", b"bcd"])
    assert (batch.data, list(batch.sizes), batch.count, batch.format) == (b"abcd", [1, 3], 2, "affine4+range")
    assert from_batch(variable, batch) == [b"a", b"bcd"]
    fixed = codes_codec(FlatPayload(q, 3))  # 12 bits -> 2 bytes per item
    assert list(to_batch(fixed, [b"ab", b"cd"]).sizes) == []
    batch.format = "affine8"
    with pytest.raises(PayloadError, match="codes.format is 'affine8' but bundle  uses 'affine4\\+range'"):
        from_batch(variable, batch)
    with pytest.raises(PayloadError, match="codes.data is 5 bytes; 3 items of 2 bytes need 6"):
        split_payloads(b"abcde", [], 3, 2)
    with pytest.raises(PayloadError, match="codes.sizes has 1 entries for 2 items"):
        split_payloads(b"abc", [3], 2, None)
    with pytest.raises(PayloadError, match="add up to 4 bytes but codes.data is 3"):
        split_payloads(b"abc", [2, 2], 2, None)


def test_wrong_fixed_payload_length(codes):
    spec = FlatPayload(Quantiser.fit_affine(codes, 8), 12)
    with pytest.raises(PayloadError, match="item 0: payload is 11 bytes, format affine8 needs 12"):
        unpack_codes(spec, [b"x" * 11])


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(1, 4),
    groups=st.lists(st.tuples(st.integers(0, 5), st.sampled_from([1, 3, 7, 8, 9, 12, 16, 32])), max_size=4),
    seed=st.integers(0, 2**32 - 1),
)
def test_bit_layout_round_trips_any_widths(n, groups, seed):
    """Whole-byte groups on a byte boundary are read as words, the rest bit by bit: both must invert packing."""
    rng = np.random.default_rng(seed)
    values = [(rng.integers(0, 1 << b, size=(n, k), dtype=np.uint64).astype(np.uint32), b) for k, b in groups]
    data = pack_bits(values, n)
    assert data.shape == (n, (sum(k * b for k, b in groups) + 7) // 8)
    back = unpack_bits(data, [(k, b) for k, b in groups])
    for (v, _), got in zip(values, back):
        assert got.dtype == np.uint32
        np.testing.assert_array_equal(got, v)

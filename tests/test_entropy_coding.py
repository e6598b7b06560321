"""Entropy coding through the shared package: exact round trips, corrupt payloads fail loudly."""

from __future__ import annotations

import numpy as np
import pytest

from latent_codec import ans
from latent_codec.container import from_batch, split_payloads, to_batch
from latent_codec.errors import PayloadError
from latent_codec.factorized_prior import FactorizedPrior
from latent_codec.families.flat import FlatPayload
from latent_codec.quantisation import Quantiser
from tests.helpers import codes_codec, pack_codes, unpack_codes


def _spec(
    dims: int = 12, bits: int = 6, seed: int = 0, coder: str = ans.DEFAULT_CODER
) -> tuple[FlatPayload, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.laplace(0, 1.5, (400, dims)).astype(np.float32)
    z[:, 0] = 0.0  # a collapsed dimension, as rate-distortion training produces
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = Quantiser("affine", bits, [float(lo)] * dims, [float(hi)] * dims)
    probs = np.exp(-np.abs(np.arange(lo, hi + 1))[None, :] / 1.5).repeat(dims, 0)
    prior = FactorizedPrior.from_probabilities(probs)
    prior.coder = coder
    return FlatPayload(q, dims, prior), z


@pytest.mark.parametrize("coder", ans.CODERS)
def test_round_trip_is_exact_on_the_integer_grid(coder):
    spec, z = _spec(coder=coder)
    payloads = pack_codes(spec, z)
    codes, _ = unpack_codes(spec, payloads)
    assert np.array_equal(codes, np.clip(np.rint(z), -32, 31))
    assert spec.format == {ans.ANS_CODER: "affine6+ans", ans.RANGE_CODER: "affine6+range"}[coder]
    # Variable sizes; the ideal code length (+ the coder's termination) bounds them.
    sizes = np.array([len(p) for p in payloads])
    ideal = spec.prior.bits(spec.quantiser.quantise(z)) / 8
    assert np.all(sizes <= np.ceil(ideal) + 4)
    assert sizes.mean() < 12 * 6 / 8  # beats fixed 6-bit packing
    c = codes_codec(spec)
    assert from_batch(c, to_batch(c, payloads)) == payloads


def test_manifest_dict_round_trip_decodes_the_same():
    spec, z = _spec(seed=3)
    payloads = pack_codes(spec, z)
    spec2 = FlatPayload.from_dict(spec.to_dict())
    assert np.array_equal(spec2.prior.tables, spec.prior.tables)
    assert np.array_equal(unpack_codes(spec2, payloads)[0], unpack_codes(spec, payloads)[0])


# Not every coder can tell every damage: the ANS stack reads a changed top byte as other symbols, and a cut
# range-coded stream can be the whole stream of other symbols (the test after this one covers that case).
DAMAGES = [
    (damage, coder)
    for damage in ("append", "truncate", "zeros", "garbage", "flip-last")
    for coder in ans.CODERS
    if (damage, coder) not in {("flip-last", ans.ANS_CODER), ("truncate", ans.RANGE_CODER)}
]


@pytest.mark.parametrize(("damage", "coder"), DAMAGES)
def test_corrupt_payload_raises_payload_error(damage, coder):
    spec, z = _spec(seed=5, coder=coder)
    good = pack_codes(spec, z[:20])
    p = good[7]
    bad = {
        "append": p + b"\x01\x02\x03\x04\x05",
        "truncate": p[: len(p) // 2],
        "zeros": b"\x00" * 8,
        "garbage": b"\xff" * (len(p) + 6),
        "flip-last": p[:-1] + bytes([p[-1] ^ 0x01]),
    }[damage]
    with ans.verifying(), pytest.raises(PayloadError):  # as the cloud validates what it stores
        unpack_codes(spec, good[:7] + [bad] + good[8:])


def test_plain_decoding_of_range_coded_streams_skips_the_canonical_pass():
    """Decoding alone ignores bytes past the ones the symbols need (the second pass costs as much as the
    coder's calls); validation (Codec.first_invalid, ans.verifying) refuses them."""
    spec, z = _spec(seed=5, coder=ans.RANGE_CODER)
    good = pack_codes(spec, z[:20])
    padded = [p + b"\x01" for p in good]
    np.testing.assert_array_equal(unpack_codes(spec, padded)[0], unpack_codes(spec, good)[0])
    c = codes_codec(spec)
    assert c.first_invalid(good) is None and c.first_invalid(good[:3] + padded[3:]) == 3
    assert (
        c.problem(padded[0])
        == "range-coded payload is not what its symbols encode to (corrupt or wrong bundle)"
    )
    with pytest.raises(PayloadError, match="ends in a zero byte"):  # refused always
        unpack_codes(spec, [good[0] + b"\x00"])


def test_a_cut_range_coded_payload_never_decodes_to_its_own_symbols():
    """A prefix of a range-coded stream is often the canonical stream of other symbols (no coder with
    a one-byte termination can tell it), but never of the same ones: the item changes, it is not lost
    silently as the same."""
    spec, z = _spec(seed=5, coder=ans.RANGE_CODER)
    good = pack_codes(spec, z[:20])
    codes, _ = unpack_codes(spec, good)
    for i, p in enumerate(good):
        for cut in range(len(p)):
            try:
                with ans.verifying():
                    other, _ = unpack_codes(spec, [p[:cut]])
            except PayloadError:
                continue
            assert not np.array_equal(other[0], codes[i])


def test_range_termination_costs_under_a_byte_where_ans_costs_three():
    """The shortest termination (ans.RangeEncoder.finish): payload minus ideal length, per item, on the same
    symbols and tables. Switched back to constriction's own seal (one or two whole words) this fails."""
    spec, z = _spec(seed=7, dims=24)
    symbols = spec.quantiser.quantise(z)
    ideal = spec.prior.bits(symbols) / 8
    over = {}
    for coder in ans.CODERS:
        spec.prior.coder = coder
        over[coder] = np.mean([len(p) for p in spec.prior.encode(symbols)]) - ideal.mean()
    assert over[ans.RANGE_CODER] < 1.0 < 2.0 < over[ans.ANS_CODER]


def test_shortest_in_picks_the_value_with_the_most_trailing_zeros():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        lo = int(rng.integers(0, 1 << 20))
        hi = lo + int(rng.integers(0, 1 << int(rng.integers(1, 12))))
        v = ans.shortest_in(lo, hi)
        best = max(range(lo, min(hi, lo + (1 << 20)) + 1), key=lambda x: (x & -x).bit_length() if x else 99)
        assert lo <= v <= hi
        assert (v == 0 and best == 0) or (v & -v) == (best & -best)


def test_wrong_batch_framing_raises_payload_error():
    spec, z = _spec()
    payloads = pack_codes(spec, z[:5])
    batch = to_batch(codes_codec(spec), payloads)
    data, lens = batch.data, list(batch.sizes)
    with pytest.raises(PayloadError):
        split_payloads(data, lens[:-1], 5, None)
    with pytest.raises(PayloadError):
        split_payloads(data + b"x", lens, 5, None)


def test_tables_reject_invalid_rows():
    spec, _ = _spec()
    d = spec.prior.to_dict()
    d["tables"][0][0] += 1  # no longer sums to 2**precision
    with pytest.raises(ValueError):
        FactorizedPrior.from_dict(d)


@pytest.mark.parametrize("coder", ans.CODERS)
def test_an_empty_payload_is_the_code_of_the_most_probable_symbols(coder):
    """Not a corrupt item: when every symbol is near-certain the stream trims to zero bytes, and decoding
    zero bytes gives back exactly those symbols (so the cloud must accept empty payloads)."""

    s = np.zeros((2000, 8), dtype=np.int64)
    s[0, 0] = 1
    prior = FactorizedPrior.fit(s, 16, pseudo_count=1e-6)
    prior.coder = coder
    payloads = prior.encode(s[1:40])
    assert min(len(p) for p in payloads) == 0
    assert np.array_equal(prior.decode([b""]), np.zeros((1, 8)))
    assert np.array_equal(prior.decode(payloads), s[1:40])


def test_ans_streams_stay_byte_identical_for_bundles_that_name_the_ans_stack():
    """Payloads stored under bundles that name constriction-ans32 must keep decoding: the ANS stack's bytes for
    fixed symbols and tables, recorded with the coder as it was before the range coder arrived (commit 9c03bb6).
    The photo zoo pins the map layouts (tests/test_zoo_payloads.py); this pins the per-dimension rows path."""
    import hashlib

    rng = np.random.default_rng(26)
    t = np.maximum(1, np.floor(rng.dirichlet(np.full(16, 0.4), size=8) * (65536 - 16))).astype(np.int64)
    t[:, 0] += 65536 - t.sum(axis=1)
    for row in t:  # (draws that keep the recorded sequence)
        rng.choice(16, size=8, p=row / 65536)
    sym = np.stack([[rng.choice(16, p=t[d] / 65536) for d in range(8)] for _ in range(50)]).astype(np.int32)
    tables = ans.Tables(t, 16)
    h = hashlib.sha256()
    for row in sym:
        enc = ans.encoder(ans.ANS_CODER)
        enc.push_rows(row, tables)
        b = enc.finish()
        h.update(len(b).to_bytes(4, "little") + b)
        dec = ans.decoder(b, ans.ANS_CODER)
        np.testing.assert_array_equal(dec.pop_rows(tables), row)
        dec.finish()
    assert h.hexdigest() == "c5683489f4e6821b1a595ecd1c754bd708d66b0be873e0c2dee75f29ea6871b9"

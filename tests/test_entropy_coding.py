"""Entropy coding through the shared package: exact round trips, corrupt payloads fail loudly."""

from __future__ import annotations

import numpy as np
import pytest

from latent_codec.container import from_batch, split_payloads, to_batch
from latent_codec.errors import PayloadError
from latent_codec.factorized_prior import FactorizedPrior
from latent_codec.families.flat import FlatPayload
from latent_codec.quantisation import Quantiser
from tests.helpers import codes_codec, pack_codes, unpack_codes


def _spec(dims: int = 12, bits: int = 6, seed: int = 0) -> tuple[FlatPayload, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.laplace(0, 1.5, (400, dims)).astype(np.float32)
    z[:, 0] = 0.0  # a collapsed dimension, as rate-distortion training produces
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    q = Quantiser("affine", bits, [float(lo)] * dims, [float(hi)] * dims)
    probs = np.exp(-np.abs(np.arange(lo, hi + 1))[None, :] / 1.5).repeat(dims, 0)
    return FlatPayload(q, dims, FactorizedPrior.from_probabilities(probs)), z


def test_round_trip_is_exact_on_the_integer_grid():
    spec, z = _spec()
    payloads = pack_codes(spec, z)
    codes, _ = unpack_codes(spec, payloads)
    assert np.array_equal(codes, np.clip(np.rint(z), -32, 31))
    assert spec.format == "affine6+ans"
    # Variable sizes; the ideal code length (+ a few bytes of coder termination) bounds them.
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


@pytest.mark.parametrize("damage", ["append", "truncate", "zeros", "garbage"])
def test_corrupt_payload_raises_payload_error(damage):
    spec, z = _spec(seed=5)
    good = pack_codes(spec, z[:20])
    p = good[7]
    bad = {
        "append": p + b"\x01\x02\x03\x04\x05",
        "truncate": p[: len(p) // 2],
        "zeros": b"\x00" * 8,
        "garbage": b"\xff" * (len(p) + 6),
    }[damage]
    with pytest.raises(PayloadError):
        unpack_codes(spec, good[:7] + [bad] + good[8:])


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


def test_an_empty_payload_is_the_code_of_the_most_probable_symbols():
    """Not a corrupt item: when every symbol is near-certain the ANS stream trims to zero bytes, and
    decoding zero bytes gives back exactly those symbols (so the cloud must accept empty payloads)."""

    s = np.zeros((2000, 8), dtype=np.int64)
    s[0, 0] = 1
    prior = FactorizedPrior.fit(s, 16, pseudo_count=1e-6)
    payloads = prior.encode(s[1:40])
    assert min(len(p) for p in payloads) == 0
    assert np.array_equal(prior.decode([b""]), np.zeros((1, 8)))
    assert np.array_equal(prior.decode(payloads), s[1:40])

"""The code-map payload on its own (no training): exact round trips for both entropy models, and hostile bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latent_codec.errors import PayloadError
from latent_codec.factorized_prior import FactorizedPrior
from latent_codec.families.code_map import MapPayload
from latent_codec.families.hyper_decoder import IntegerHyperDecoder
from latent_codec.varint import put_varint


def _tables(rng, k: int, levels: int) -> FactorizedPrior:
    return FactorizedPrior.from_probabilities(rng.dirichlet(np.full(levels, 0.3), size=k))


def _payload(entropy: str, seed: int = 0) -> MapPayload:
    rng = np.random.default_rng(seed)
    m, nh = 4, 3
    if entropy == "factorized":
        return MapPayload("factorized", m, 4, 4, _tables(rng, m, 16))
    hd = IntegerHyperDecoder.from_float(
        rng.normal(0, 0.3, (nh, nh, 3, 3)),
        rng.normal(0, 0.1, nh),
        rng.normal(0, 0.3, (m, nh, 3, 3)),
        rng.normal(0, 0.1, m),
        np.linspace(-2, 2, 7),
        frac_bits=10,
    )
    return MapPayload("hyperprior", m, 4, 4, _tables(rng, 8, 16), nh, 2, 3, _tables(rng, nh, 8), hd)


@pytest.mark.parametrize("entropy", ["factorized", "hyperprior"])
@pytest.mark.parametrize("size", [(1, 1), (5, 9), (16, 16), (17, 3)])
def test_pack_and_unpack_are_exact_inverses(entropy, size):
    p = _payload(entropy)
    rng = np.random.default_rng(1)
    n, (h, w) = 3, size
    hy, wy = p.code_size(h, w)
    y = rng.integers(0, 16, (n, 4, hy, wy)).astype(np.uint16)
    z = rng.integers(0, 8, (n, 3, *p.hyper_size(h, w))).astype(np.uint16) if entropy == "hyperprior" else None
    payloads = p.pack(np.tile([h, w], (n, 1)), y, z)
    sizes, y2, z2 = p.unpack(payloads)
    assert sizes.tolist() == [[h, w]] * n
    np.testing.assert_array_equal(y2, y)
    if z is not None:
        np.testing.assert_array_equal(z2, z)
    assert p.bits(y, z).shape == (n,)


@pytest.mark.parametrize("entropy", ["factorized", "hyperprior"])
def test_claimed_sizes_are_bounded_before_any_decoding(entropy):
    p = _payload(entropy)
    for h, w in ((0, 5), (5, 0), (1 << 15 + 1, 1), (20000, 20000)):
        with pytest.raises(PayloadError, match="payload claims"):
            p.unpack([put_varint(h) + put_varint(w)])


@pytest.mark.parametrize("entropy", ["factorized", "hyperprior"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=64), h=st.integers(1, 40), w=st.integers(1, 40), raw=st.booleans())
def test_hostile_bytes_give_payload_errors_or_symbols_never_anything_else(entropy, data, h, w, raw):
    p = _payload(entropy)
    blob = data if raw else put_varint(h) + put_varint(w) + data
    try:
        sizes, y, _ = p.unpack([blob])
    except PayloadError:
        return
    hy, wy = p.code_size(*sizes[0])
    assert y.shape == (1, 4, hy, wy) and int(y.max(initial=0)) < 16

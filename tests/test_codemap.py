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
from latent_codec.varint import VarintError, get_varint, put_varint


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


# ---- the size header -----------------------------------------------------------------------------------------
def _bare_payload(nominal: tuple[int, int] | None = None) -> MapPayload:
    """A factorized map payload of 4 channels, enough to read and write size headers."""
    tables = FactorizedPrior(np.full((4, 16), 1 << 12, np.int64))
    return MapPayload("factorized", 4, 4, 4, tables, nominal_size=nominal)


def test_size_header_varints_round_trip_and_truncation_is_an_error():
    for v in (0, 1, 127, 128, 300, 32768, 1 << 20):
        assert get_varint(put_varint(v), 0) == (v, len(put_varint(v)))
    with pytest.raises(VarintError) as e:
        get_varint(b"\x80\x80", 0)
    assert e.value.truncated
    with pytest.raises(VarintError) as e:
        get_varint(b"\x80" * 5 + b"\x01", 0, 28)
    assert not e.value.truncated
    # The map header turns both into a PayloadError naming the item.
    with pytest.raises(PayloadError, match="item 0: payload ends inside its size header"):
        _bare_payload()._headers([b"\x80\x80"])
    with pytest.raises(PayloadError, match="item 1: payload size header is malformed"):
        _bare_payload()._headers([put_varint(28) + put_varint(28), b"\xff" * 6])


def test_a_payload_of_the_nominal_size_has_a_one_byte_size_header():
    """Bundles exported since the range coder name the size they were trained on: its header is the one byte
    0 (H is never 0); any other size is spelled out; a bundle without one refuses the short header."""
    p = _bare_payload((28, 28))
    assert p.size_header(28, 28) == b"\x00"
    assert p.size_header(13, 22) == put_varint(13) + put_varint(22)
    sizes, starts = p._headers([b"\x00\x07", put_varint(13) + put_varint(22) + b"\x07"])
    assert sizes.tolist() == [[28, 28], [13, 22]] and starts == [1, 2]
    again = MapPayload.from_dict(p.to_dict())
    assert again.nominal_size == (28, 28) and again.size_header(28, 28) == b"\x00"
    old = _bare_payload()
    assert old.size_header(28, 28) == put_varint(28) + put_varint(28)
    with pytest.raises(PayloadError, match="item 0: payload claims a 0x7 item"):
        old._headers([b"\x00\x07"])

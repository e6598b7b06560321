"""The code-map payload on its own (no training): exact round trips for both entropy models, and hostile bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latent_codec import ans
from latent_codec.errors import PayloadError
from latent_codec.factorized_prior import FactorizedPrior
from latent_codec.families.code_map import _SIZE_MODELS, MapPayload
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


def test_a_payload_of_the_nominal_size_carries_its_size_in_the_stream_at_almost_no_cost():
    """Range-coded bundles exported since 2026-12-07 name the size they were trained on: an item's size is the
    stream's first symbols, next to free for that size and about seven bytes for any other; earlier bundles
    keep a varint header before the stream."""
    p = _bare_payload((28, 28))
    model = p._y.models[0]
    head, enc = p.begin(28, 28)
    assert head == b"" and enc.finish() == b""  # the nominal flag alone is the stream's value 0
    sizes = [(28, 28), (13, 22), (1, 4000), (28, 29)]
    payloads = []
    for h, w in sizes:
        head, enc = p.begin(h, w)
        enc.push(np.full(50, 3, np.int32), model)
        payloads.append(head + enc.finish())
    got, starts = p._headers(payloads)
    assert got.tolist() == [list(v) for v in sizes] and starts == [0, 0, 0, 0]
    bare = ans.encoder(p.coder)
    bare.push(np.full(50, 3, np.int32), model)
    n = len(bare.finish())
    assert len(payloads[0]) == n and all(len(q) >= n + 6 for q in payloads[1:])
    for q in payloads:
        dec = p.open(q, 0)
        np.testing.assert_array_equal(dec.pop(model, 50), 3)
        dec.finish()
    again = MapPayload.from_dict(p.to_dict())
    assert again.nominal_size == (28, 28) and again.sizes(payloads).tolist() == got.tolist()
    old = _bare_payload()
    assert old.begin(28, 28)[0] == put_varint(28) + put_varint(28)
    # a forged in-stream size is refused before anything else is decoded
    enc = ans.encoder(p.coder)
    enc.push(np.ones(1, np.int32), _SIZE_MODELS.flag)
    enc.push(np.asarray([1, 0, 1, 0], np.int32), _SIZE_MODELS.half)  # 16384 x 16384
    with pytest.raises(PayloadError, match="item 1: payload claims a 16384x16384 item"):
        p.sizes([payloads[0], enc.finish()])
    d = p.to_dict()
    d["y_tables"]["coder"] = ans.ANS_CODER
    with pytest.raises(ValueError, match="needs the constriction-range32 coder"):
        MapPayload.from_dict(d)


def test_the_size_flag_is_read_without_a_decoder_exactly_as_the_decoder_reads_it():
    """A server prices every request from its items' sizes before decoding, so the nominal-size flag is read
    from the stream's first 8 bytes against a boundary found once (MapPayload._headers); around that boundary
    and elsewhere it must agree with the range decoder to the last value."""
    t = _SIZE_MODELS.nominal_below
    rng = np.random.default_rng(7)
    values = [t + k for k in range(-40, 40)] + [int(v) for v in rng.integers(0, 1 << 62, 500) * 4]
    for v in values:
        data = (v % (1 << 64)).to_bytes(8, "big") + bytes(rng.integers(1, 256, 3).astype(np.uint8))
        try:
            flag = int(ans.decoder(data, ans.RANGE_CODER).pop(_SIZE_MODELS.flag, 1)[0])
        except PayloadError:
            flag = 1
        assert (int.from_bytes(data[:8], "big") < t) == (flag == 0), hex(v)
    p = _bare_payload((28, 28))
    below, at = (t - 1).to_bytes(8, "big") + b"\x07", t.to_bytes(8, "big") + b"\x07"
    assert p.sizes([below]).tolist() == [[28, 28]]
    try:
        assert p.sizes([at]).tolist() != [[28, 28]]
    except PayloadError:
        pass  # read as another size, one out of bounds

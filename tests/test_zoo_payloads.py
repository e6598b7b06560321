"""Every committed zoo bundle encodes fixed items to the same payload bytes as when its hashes were recorded.

A refactor or a faster implementation of any step (quantisation, table selection, entropy coding, layout)
must not change one byte a device sends: payloads already stored in the cloud must keep decoding, and the
edge and the cloud must agree. tests/data/zoo_payloads.json holds, per bundle id, the SHA-256 of the
payloads of fixed inputs (code-map bundles: of fixed code maps, see ``digest``) and the mean of their decoded
items, recorded with ``python -m tests.test_zoo_payloads``
(run it only when a bundle is added or retrained, never to make this test pass after a code change).

Mean-and-scale and checkerboard codecs encode with plain rounding here (``rounding = 0``): rate-aware rounding
(latent_codec/rd_rounding.py) is the encoder's choice of symbols, deliberately different bytes that the same
decoder reads, and tests/test_rd_rounding.py covers it; with κ = 0 every byte must be as recorded.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from latent_codec.bundle import find_bundles
from latent_codec.codec import Codec
from tests.helpers import ROOT

GOLDEN = ROOT / "tests" / "data" / "zoo_payloads.json"
ZOO = ROOT / "zoo"


def _inputs(codec: Codec) -> list[np.ndarray]:
    """Deterministic items: a seeded mix of textures and flat areas (no dataset needed), in the bundle's shape;
    bundles of any size also get odd sizes (not a multiple of the stride) and one taller than wide."""
    rng = np.random.default_rng(20261207)
    c, h, w = codec.input.shape
    n = 24
    smooth = np.cumsum(rng.integers(-9, 10, size=(n, c, h, w)), axis=-1)
    base = np.clip(smooth - smooth.min() + rng.integers(0, 40, size=(n, 1, 1, 1)), 0, 255).astype(np.uint8)
    base[:4] = 0  # empty items (Fashion-MNIST has black backgrounds)
    base[4:6] = 255
    out = [base]
    if codec.input.any_size:
        for hh, ww in ((13, 22), (37, 9), (64, 48)):
            out.append(rng.integers(0, 256, size=(3, c, hh, ww)).astype(np.uint8))
    return out


def _code_maps(codec: Codec) -> list[tuple[np.ndarray, np.ndarray | None, np.ndarray]]:
    """Seeded float code maps (ŷ, ẑ or None, true sizes) for a code-map bundle, on a 1/256 grid: exact floats,
    so every step after the encoder graph gives the same bytes on every CPU (the graph's own floats may differ
    in the last bit, and a value within 1e-6 of a rounding tie then flips: seen on a photo bundle)."""
    rng = np.random.default_rng(20261207)
    p = codec.payload
    out = []
    c, h0, w0 = codec.input.shape
    shapes = [(24, h0, w0)] + ([(3, 13, 22), (3, 37, 9), (3, 64, 48)] if codec.input.any_size else [])
    for n, h, w in shapes:
        hy, wy = p.code_size(h, w)
        y = np.round(rng.normal(0, 3, size=(n, p.code_channels, hy, wy)) * 256) / 256
        hyper = None
        if p.has_hyper:
            hz, wz = p.hyper_size(h, w)
            hyper = np.round(rng.normal(0, 2, size=(n, p.hyper_channels, hz, wz)) * 256) / 256
            hyper = hyper.astype(np.float32)
        out.append((y.astype(np.float32), hyper, np.tile([h, w], (n, 1))))
    return out


def digest(codec: Codec) -> dict:
    """The payload hash (exact) and the mean decoded pixel (approximate: float graphs). Code-map bundles hash
    the payloads of fixed code maps (``encode_maps``: every step after the encoder graph); flat bundles hash
    the payloads of the fixed items."""
    if hasattr(codec, "rounding"):
        codec.rounding = 0.0  # plain rounding: the recorded bytes (see the module doc)
    pay = hashlib.sha256()
    total, count = 0.0, 0
    maps = hasattr(codec, "encode_maps")
    for x in _inputs(codec):
        payloads = codec.encode(x)
        if not maps:
            for p in payloads:
                pay.update(len(p).to_bytes(4, "little") + p)
        rec = codec.decode(payloads).astype(np.float64)
        total, count = total + float(rec.sum()), count + rec.size
    if maps:
        for y, hyper, sizes in _code_maps(codec):
            for p in codec.encode_maps(y, hyper, sizes):
                pay.update(len(p).to_bytes(4, "little") + p)
    return {"payloads": pay.hexdigest(), "decoded_mean": round(total / count, 4)}


# The Fashion-MNIST zoo and the photo zoo (zoo/photo: colour map+meanscale bundles).
BUNDLES = [b for d in (ZOO, ZOO / "photo") if d.is_dir() for b in find_bundles(d)]


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_zoo_bundle_payloads_unchanged(bundle: Path):
    golden = json.loads(GOLDEN.read_text())
    codec = Codec.open(bundle, threads=1)
    assert codec.bundle_id in golden, (
        f"{codec.bundle_id} has no recorded hashes: run python -m tests.test_zoo_payloads"
    )
    got = digest(codec)
    assert got["payloads"] == golden[codec.bundle_id]["payloads"], "payload bytes changed"
    # Decoded pixels come from ONNX Runtime's float graphs, which may round differently on another CPU: the
    # payload hash above is the exact guarantee, the mean decoded pixel catches a changed decode path.
    assert got["decoded_mean"] == pytest.approx(golden[codec.bundle_id]["decoded_mean"], abs=0.02)


def test_every_zoo_bundle_is_covered():
    golden = json.loads(GOLDEN.read_text())
    ids = {Codec.open(b, need=(), threads=1).bundle_id for b in BUNDLES}
    assert ids and ids <= set(golden), sorted(ids - set(golden))


def main(argv: list[str] | None = None) -> int:
    """Record the hashes of every zoo bundle (only when bundles are added or retrained)."""
    out = {}
    for b in BUNDLES:
        codec = Codec.open(b, threads=1)
        out[codec.bundle_id] = {"bundle": b.name, **digest(codec)}
        print(codec.bundle_id, out[codec.bundle_id]["payloads"][:16])
    GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Deeper code maps (training/models/spatial.py ``downsamples``): g_a with three or four strided convolutions puts
the code map at 1/8 or 1/16 of the item's side, so each code element sees a larger neighbourhood of pixels (the
depth of the published photo codecs). The codec side is the same family, at the bundle's stride: padding, tiles
and the measured receptive field all follow it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latent_codec.codec import Codec
from latent_codec.families import code_map
from tests.helpers import photo_crops, spatial_bundle
from training.models.spatial import SpatialAutoencoder
from training.train import load_checkpoint


def colour_photo(h: int, w: int) -> np.ndarray:
    """scikit-image's astronaut and coffee side by side, tiled and cropped to h x w: (1, 3, h, w) uint8."""
    from skimage import data

    a, c = data.astronaut(), data.coffee()
    row = np.concatenate([a[: c.shape[0]], c], 1)
    big = np.tile(row, (-(-h // row.shape[0]), -(-w // row.shape[1]), 1))
    return np.ascontiguousarray(np.moveaxis(big[:h, :w], -1, 0)[None])


@pytest.mark.parametrize("d", [2, 3, 4])
def test_the_code_map_is_at_one_over_two_to_the_depth(d):
    model = SpatialAutoencoder(
        (3, 64, 64),
        channels=8,
        code_channels=4,
        hyper_channels=4,
        entropy="meanscale",
        kernel=3,
        downsamples=d,
    )
    assert model.stride == 2**d
    y, side = model.encode(torch.zeros(1, 3, 96, 160))
    assert tuple(y.shape[-2:]) == (96 >> d, 160 >> d)
    assert tuple(side["hyper"].shape[-2:]) == (-(-96 >> d) // 2, -(-160 >> d) // 2)
    assert model.pad_amounts(97, 161) == ((-97) % 2**d, (-161) % 2**d)
    out = model(torch.rand(2, 3, 37, 53))  # any size: padded to the stride and cropped back
    assert out["x_hat"].shape == (2, 3, 37, 53)
    # the default is recorded only when it differs: older checkpoints and bundle ids are unchanged
    assert ("downsamples" in model.args) == (d != 2)


def test_an_unsupported_depth_is_refused():
    with pytest.raises(ValueError, match="downsamples"):
        SpatialAutoencoder((3, 64, 64), downsamples=5)


@pytest.fixture(scope="module")
def deep_bundle(tmp_path_factory):
    """A small stride-16 mean-and-scale colour bundle, trained briefly on 64x64 photo crops (~30 s)."""
    root = tmp_path_factory.mktemp("deep-map")
    crops = photo_crops(n=1500, size=64)
    np.savez(root / "crops.npz", x_train=crops[:1200], x_test=crops[1200:])
    args = {
        "channels": 16,
        "code_channels": 16,
        "hyper_channels": 8,
        "entropy": "meanscale",
        "kernel": 3,
        "downsamples": 4,
    }
    return spatial_bundle(root, args, data=str(root / "crops.npz"), limit=0, epochs=3)


def test_a_stride_16_bundle_round_trips_items_of_any_size(deep_bundle):
    manifest = json.loads((deep_bundle / "manifest.json").read_text())
    assert manifest["payload"]["stride"] == 16
    codec = Codec.open(deep_bundle)
    codec.rounding = 0.0  # plain rounding, as the model's own forward pass
    model = load_checkpoint(deep_bundle.parent / "spatial.pt")[0]
    model.quant_proxy = "mixed"  # in eval: rounded residuals around the float means, as the codec sends them
    for size in ((77, 131), (16, 16), (5, 300)):
        x = colour_photo(*size)
        payload = codec.encode(x)
        rec = codec.decode(payload)
        assert rec.shape == x.shape
        mse = float(np.mean((x.astype(np.float64) - rec) ** 2))
        with torch.no_grad():
            own = model(torch.from_numpy(x.astype(np.float32) / 255.0))["x_hat"].clamp(0, 1).numpy() * 255.0
        # what the codec decodes is what the trained model reconstructs (its integer means differ from the
        # float ones by 2^-20: a rare residual rounds the other way), at the item's own size
        assert mse == pytest.approx(float(np.mean((x - own) ** 2)), rel=0.03), size
        if size == (77, 131):  # briefly trained, but better than each item's mean colour
            assert mse < float(np.mean((x - x.mean(axis=(2, 3), keepdims=True)) ** 2))
    # the code holds one element per 16 x 16 pixels: a 77 x 131 item has 5 x 9 of them per channel
    assert codec.payload.code_size(77, 131) == (5, 9)


def test_tiles_of_a_stride_16_bundle_give_the_whole_items_codes(deep_bundle, monkeypatch):
    codec = Codec.open(deep_bundle, threads=1)
    # a synthesis tile holds the same pixels as at stride 4, not four times as many per side
    assert codec.decode_core() == code_map.DECODE_TILE // 4
    assert codec._encode_margin() > 0  # the receptive field was measured (a probe wide enough for ẑ's stride)
    x = colour_photo(700, 520)
    monkeypatch.setattr(code_map, "ENCODE_TILE", 256)
    monkeypatch.setattr(code_map, "DECODE_TILE", 48)
    assert codec.tiled_encode(700, 520) and codec.tiled_decode(700, 520)
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

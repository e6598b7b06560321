"""What the trained float model means and what the bundle computes agree (issue 25): the integer hyper-decoder
built from a model's h_s selects the table the float log σ falls in (and gives the float means), and the
scaling back to pixels rounds to the nearest level, clips, and is exact on known values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latent_codec.bundle import InputSpec
from latent_codec.families.hyper_decoder import IntegerHyperDecoder
from tests.helpers import tiny_spatial_model
from training.export_map import HYPER_FRAC_BITS
from training.models.spatial import log_scale_thresholds, scale_table

torch.set_num_threads(1)


def _model(entropy: str):
    m = tiny_spatial_model(entropy, seed=3)
    with torch.no_grad():  # spread the log σ over the table (a fresh model's sit near one value)
        m.h_s[2].weight.mul_(2.0)
        m.h_s[2].bias.add_(torch.linspace(-2.0, 4.0, len(m.h_s[2].bias)))
    return m.eval()


@pytest.mark.parametrize("entropy", ["hyperprior", "meanscale", "checkerboard"])
def test_the_integer_hyper_decoder_selects_the_table_of_the_float_log_scale(entropy):
    m = _model(entropy)
    mc = 4
    h1, h2 = m.h_s[0], m.h_s[2]
    hd = IntegerHyperDecoder.from_float(
        h1.weight.detach().numpy(),
        h1.bias.detach().numpy(),
        h2.weight.detach().numpy(),
        h2.bias.detach().numpy(),
        log_scale_thresholds(),
        HYPER_FRAC_BITS,
    )
    z = np.random.default_rng(0).integers(-5, 6, (3, 4, 5, 6))
    size = (9, 11)  # odd: the crop of the upsampled map counts too
    with torch.no_grad():
        out = m.hyper_decode(torch.from_numpy(z.astype(np.float32)), size).double().numpy()
    means = entropy in ("meanscale", "checkerboard")  # the checkerboard's anchors: mean-and-scale's tables
    idx, mu = hd.select(z, size, means=mc if means else 0)
    # The same network in float64 with the bundle's rounded weights (w / 2^F, b2 / 2^2F): upsample, conv, ReLU,
    # conv, crop. Its log σ must fall in the very table the integers select (up to float64's last bit).
    f = float(1 << hd.frac_bits)
    conv = torch.nn.functional.conv2d
    w1, b1 = torch.from_numpy(hd.w1 / f), torch.from_numpy(hd.b1 / f)
    w2, b2 = torch.from_numpy(hd.w2 / f), torch.from_numpy(hd.b2 / (f * f))
    up = torch.from_numpy(z.astype(np.float64)).repeat_interleave(2, 2).repeat_interleave(2, 3)
    ref = conv(torch.relu(conv(up, w1, b1, padding=1)), w2, b2, padding=1)[..., : size[0], : size[1]].numpy()
    t = hd.thresholds / (f * f)
    log_scale = ref[:, -mc:]
    want = np.searchsorted(t, log_scale, side="right")
    near = np.min(np.abs(log_scale[..., None] - t), axis=-1) < 1e-9
    assert idx.shape == want.shape == (3, mc, *size) and near.mean() < 0.01
    assert np.array_equal(idx[~near], want[~near]), "the integer tables are not the float network's"
    assert len(np.unique(want)) > 10  # many tables in play
    # the rounded weights are the model's to within 2^-F: the float model's log σ is close to the bundle's
    np.testing.assert_allclose(log_scale, out[:, -mc:], atol=0.05)
    np.testing.assert_allclose(t, log_scale_thresholds(), atol=1e-6)
    # the table picked is the scale table's nearest entry in log σ (the thresholds are the geometric midpoints)
    lo, hi = np.log(scale_table()[0]), np.log(scale_table()[-1])
    mid = ~near & (log_scale > lo) & (log_scale < hi)
    assert np.array_equal(idx[mid], np.abs(log_scale[..., None] - np.log(scale_table())).argmin(-1)[mid])
    if means:
        assert mu is not None and mu.dtype == np.float32
        np.testing.assert_allclose(mu, ref[:, :mc], rtol=1e-6, atol=1e-6)
    else:
        assert mu is None


def test_table_indices_at_the_thresholds_are_exact():
    """An element exactly on a threshold takes the upper table (side="right"), one unit below the lower one."""
    f = 1 << 10
    t = np.array([-3 * f * f, 0, 5 * f * f])  # in units of 2^-2F
    # zero weights: the output is layer 2's bias everywhere
    w1 = np.zeros((1, 1, 3, 3))
    w2 = np.zeros((4, 1, 3, 3))
    hd = IntegerHyperDecoder(
        10,
        w1.astype(np.int64),
        np.zeros(1, np.int64),
        w2.astype(np.int64),
        np.array([-3 * f * f, -1, 0, 5 * f * f], np.int64),
        t.astype(np.int64),
    )
    idx = hd.indices(np.zeros((1, 1, 2, 2), np.int64), (3, 4))
    assert idx[0, :, 0, 0].tolist() == [1, 1, 2, 3]


def test_from_float_scales_each_part_by_its_power_of_two():
    hd = IntegerHyperDecoder.from_float(
        np.full((1, 1, 3, 3), 0.5),
        np.array([0.25]),
        np.full((2, 1, 3, 3), -0.75),
        np.array([1.5, -2.0]),
        [-1.0, 0.5],
        frac_bits=4,
    )
    assert hd.w1.flat[0] == 8 and hd.b1.tolist() == [4]  # x 2^F
    assert hd.w2.flat[0] == -12 and hd.b2.tolist() == [384, -512]  # weights x 2^F, bias x 2^2F
    assert hd.thresholds.tolist() == [-256, 128]  # x 2^2F: compared with the layer-2 units


def test_scaling_back_to_pixels_rounds_to_the_nearest_level_and_clips():
    spec = InputSpec([1, 1, 8], "uint8", 255.0)
    x = np.array([[[[0.0, 0.4 / 255, 0.6 / 255, 0.5, 254.4 / 255, 1.0, 1.5, -0.2]]]], np.float32)
    got = spec.from_unit(x)
    assert got.dtype == np.uint8
    assert got.ravel().tolist() == [0, 0, 1, 128, 254, 255, 255, 0]
    raw = np.arange(256, dtype=np.uint8).reshape(1, 1, 1, 256)
    np.testing.assert_array_equal(spec.from_unit(spec.to_unit(raw)), raw)  # every level round-trips
    f = InputSpec([1, 1, 3], "float32", 1.0)
    np.testing.assert_array_equal(
        f.from_unit(np.array([[[[-1.0, 0.25, 2.0]]]], np.float32)), [[[[0.0, 0.25, 1.0]]]]
    )

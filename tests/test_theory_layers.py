"""Layer-level theory from the notes, with their exact vectors: transposed convolution (kernel = stride and the
(2k+1) kernel, output size u + u(s-1)), average, max (also through the 2-bit switch conversion and ONNX
Runtime) and random-location unpooling, the three-block 28x28 network, tied weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from training.models.conv import deconv_output_size, transposed_conv
from training.models.unpool import (
    MaxPoolSwitches,
    MaxUnpoolSwitches,
    RandomLocationUnpool,
    avg_unpool,
    global_to_local,
    local_to_global,
)


def test_transposed_convolution_matches_the_notes_worked_example():
    deconv = nn.ConvTranspose2d(1, 1, kernel_size=2, stride=2, bias=False)
    with torch.no_grad():
        deconv.weight.copy_(torch.tensor([[[[3.0, 4.0], [1.0, 1.0]]]]))
    out = deconv(torch.tensor([[[[1.0, 2.0], [5.0, 9.0]]]]))
    expected = torch.tensor([[3, 4, 6, 8], [1, 1, 2, 2], [15, 20, 27, 36], [5, 5, 9, 9]], dtype=torch.float32)
    assert torch.equal(out[0, 0], expected)


@pytest.mark.parametrize("s", [1, 2, 3, 4])
@pytest.mark.parametrize("u,v", [(1, 1), (2, 3), (7, 5)])
def test_transposed_convolution_kernel_equal_stride_scales_size(s, u, v):
    # Notes: output [u + u(s-1)] x [v + v(s-1)] = us x vs when kernel = stride = s, no padding.
    out = nn.ConvTranspose2d(2, 3, kernel_size=s, stride=s)(torch.randn(1, 2, u, v))
    assert tuple(out.shape[-2:]) == (u * s, v * s)


def _deconv_by_the_notes(x: np.ndarray, kernel: np.ndarray, s: int, pad: int, out_pad: int) -> np.ndarray:
    """The notes' definition: every input pixel stamps kernel * value at stride s, overlaps summed; then the
    transposed convolution's padding crops `pad` rows/columns at each border (output padding adds zeros)."""
    u, v = x.shape
    k = kernel.shape[0]
    full = np.zeros(((u - 1) * s + k + out_pad, (v - 1) * s + k + out_pad))
    for i in range(u):
        for j in range(v):
            full[i * s : i * s + k, j * s : j * s + k] += x[i, j] * kernel
    h = (u - 1) * s + k - 2 * pad + out_pad
    w = (v - 1) * s + k - 2 * pad + out_pad
    return full[pad : pad + h, pad : pad + w]


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("s", [1, 2, 3])
@pytest.mark.parametrize("u,v", [(1, 1), (3, 2), (5, 4)])
def test_odd_kernel_deconvolution_gives_the_notes_output_size_and_values(k, s, u, v):
    # Notes: a (2k+1) x (2k+1) kernel, stride s, output [u + u(s-1)] x [v + v(s-1)].
    size = 2 * k + 1
    g = torch.Generator().manual_seed(100 * k + 10 * s + u)
    deconv = transposed_conv(1, 1, size, s)
    assert deconv.kernel_size == (size, size) and deconv.stride == (s, s)
    with torch.no_grad():
        deconv.weight.copy_(torch.randn(1, 1, size, size, generator=g))
        deconv.bias.zero_()
    x = torch.randn(1, 1, u, v, generator=g)
    with torch.no_grad():
        out = deconv(x)[0, 0].numpy()
    assert (
        out.shape
        == (deconv_output_size(u, s), deconv_output_size(v, s))
        == (u + u * (s - 1), v + v * (s - 1))
    )
    want = _deconv_by_the_notes(
        x[0, 0].numpy(), deconv.weight[0, 0].detach().numpy(), s, deconv.padding[0], deconv.output_padding[0]
    )
    assert np.allclose(out, want, atol=1e-5)


def test_transposed_conv_refuses_kernels_that_cannot_give_the_notes_size():
    with pytest.raises(ValueError, match="u \\+ u\\(s-1\\)"):
        transposed_conv(1, 1, 2, 1)  # an even kernel at stride 1 cannot keep u


@pytest.mark.parametrize("kernel", [3, 5])
def test_conv_decoder_with_a_2k_plus_1_kernel_doubles_each_block(kernel):
    from training.registry import build_model

    m = build_model(
        "conv", {"input_shape": [1, 28, 28], "channels": [4, 8], "up": "deconv", "deconv_kernel": kernel}
    )
    deconvs = [mod for mod in m.upsample if isinstance(mod, nn.ConvTranspose2d)]
    assert [d.kernel_size for d in deconvs] == [(kernel, kernel)] * 2 and all(
        d.stride == (2, 2) for d in deconvs
    )
    sizes = []
    h = torch.zeros(1, 8, 7, 7)
    for mod in m.upsample:
        h = mod(h)
        if isinstance(mod, nn.ConvTranspose2d):
            sizes.append(h.shape[-1])
    assert sizes == [14, 28]  # u + u(s - 1) at s = 2, twice
    assert m(torch.rand(2, 1, 28, 28))["x_hat"].shape == (2, 1, 28, 28)


def test_the_notes_three_block_network_pads_28x28_to_32_and_crops_back():
    """Seed 003's Keras network: conv 16, 8, 8 with 2x2 pooling three times; 28 is not a multiple of 8, so
    the encoder zero-pads to 32 x 32 (2 pixels each side) and the decoder's 32 x 32 output is cropped."""
    from training.registry import build_model

    m = build_model("conv", {"input_shape": [1, 28, 28], "code_dim": 32, "channels": [16, 8, 8], "up": "avg"})
    assert m.pad == (2, 2, 2, 2) and m.bottom == (8, 4, 4)
    seen = []
    m.features[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))  # the first conv's input
    x = torch.rand(3, 1, 28, 28) + 0.5
    out = m(x)
    assert seen[0].shape == (3, 1, 32, 32)
    assert torch.equal(seen[0][..., 2:30, 2:30], x)  # centred, the border is zeros
    assert float(seen[0].abs().sum()) == pytest.approx(float(x.sum()), rel=1e-6)
    assert out["x_hat"].shape == (3, 1, 28, 28)
    aligned = build_model("conv", {"input_shape": [1, 32, 32], "channels": [16, 8, 8]})
    assert aligned.pad == (0, 0, 0, 0)  # nothing to pad when the size is a multiple already


def test_conv_decoder_uses_kernel_equal_stride_deconvolution():
    from training.registry import build_model

    m = build_model(
        "conv", {"input_shape": [1, 28, 28], "channels": [4, 8], "up": "deconv", "deconv_kernel": 2}
    )
    deconvs = [mod for mod in m.upsample if isinstance(mod, nn.ConvTranspose2d)]
    assert deconvs and all(d.kernel_size == d.stride == (2, 2) and d.padding == (0, 0) for d in deconvs)


def test_average_unpooling_copies_each_value_into_its_patch():
    x = torch.tensor([[2.0, 0.5], [1.5, 0.0]])
    expected = torch.tensor([[2, 2, 0.5, 0.5], [2, 2, 0.5, 0.5], [1.5, 1.5, 0, 0], [1.5, 1.5, 0, 0]])
    assert torch.equal(avg_unpool(x.view(1, 1, 2, 2))[0, 0], expected)


def _pool_input() -> torch.Tensor:
    # Distinct values so every 2x2 window has one maximum; maxima at different corners.
    return torch.tensor(
        [[[[1.0, 9.0, 2.0, 0.0], [3.0, 4.0, 8.0, 5.0], [7.0, 0.5, 0.0, 0.0], [2.0, 6.5, 0.0, 6.0]]]]
    )


def test_max_unpooling_puts_values_back_at_recorded_maxima():
    x = _pool_input()
    y, switches = MaxPoolSwitches()(x)
    assert torch.equal(y[0, 0], torch.tensor([[9.0, 8.0], [7.0, 6.0]]))
    # Local positions in each window: row-major (0 top-left, 1 top-right, 2 bottom-left, 3 bottom-right).
    assert torch.equal(switches[0, 0], torch.tensor([[1, 2], [0, 3]]))
    values = torch.tensor([[[[10.0, 20.0], [30.0, 40.0]]]])  # unpool other values with the same switches
    out = MaxUnpoolSwitches()(values, switches)
    expected = torch.tensor([[0, 10, 0, 0], [0, 0, 20, 0], [30, 0, 0, 0], [0, 0, 0, 40]], dtype=torch.float32)
    assert torch.equal(out[0, 0], expected)


def test_switch_conversion_round_trips_and_matches_torch_max_unpool():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, 12, 10, generator=g)
    y, idx = nn.MaxPool2d(2, return_indices=True)(x)
    local = global_to_local(idx, 10)
    assert int(local.min()) >= 0 and int(local.max()) <= 3
    assert torch.equal(local_to_global(local, 10), idx)
    ref = nn.MaxUnpool2d(2)(y, idx)
    assert torch.equal(MaxUnpoolSwitches()(y, local), ref)
    # Max unpooling of the pooled map: the maxima where they were, zeros elsewhere.
    assert torch.equal(ref != 0, (x == ref) & (ref != 0))
    assert int((ref != 0).sum()) == y.numel()


@pytest.mark.slow
def test_max_unpooling_through_onnx_runtime_matches_torch(tmp_path):
    import onnxruntime as ort

    from training.onnx_export import export_graphs
    from training.registry import build_model

    torch.manual_seed(0)
    m = build_model("conv", {"input_shape": [1, 8, 8], "code_dim": 4, "channels": [2, 3], "up": "max"}).eval()
    x = torch.rand(6, 1, 8, 8)
    enc, dec = export_graphs(m, x[:2])
    es = ort.InferenceSession(enc, providers=["CPUExecutionProvider"])
    names = [o.name for o in es.get_outputs()]
    assert names == ["code", "switches0", "switches1"]
    outs = dict(zip(names, es.run(None, {"x": x.numpy()})))
    with torch.no_grad():
        code, side = m.encode(x)
        h1 = m.features[1](m.features[0](x))  # the first pooling layer's input
    for k in ("switches0", "switches1"):
        assert outs[k].dtype == np.int64
        assert np.array_equal(outs[k], side[k].numpy())
    # The ORT switches point at the true maxima of each 2x2 window of the first pooling layer's input.
    _, idx = nn.MaxPool2d(2, return_indices=True)(h1)
    assert np.array_equal(local_to_global(torch.from_numpy(outs["switches0"]), 8).numpy(), idx.numpy())
    ds = ort.InferenceSession(dec, providers=["CPUExecutionProvider"])
    rec = ds.run(
        None, {"code": outs["code"], "switches0": outs["switches0"], "switches1": outs["switches1"]}
    )[0]
    with torch.no_grad():
        ref = m.activate(m.decode_logits(code, side)).numpy()
    assert np.abs(rec - ref).max() <= 1e-5
    # Switches matter: decoding with other switches changes the reconstruction.
    wrong = {"switches0": (outs["switches0"] + 1) % 4, "switches1": outs["switches1"]}
    assert np.abs(ds.run(None, {"code": outs["code"], **wrong})[0] - rec).max() > 1e-6


def test_max_unpooling_side_fields_are_counted_at_two_bits():
    from latent_codec.families.flat import FlatPayload, SideField
    from latent_codec.quantisation import Quantiser
    from training.registry import build_model

    m = build_model("conv", {"input_shape": [1, 28, 28], "code_dim": 16, "channels": [4, 8], "up": "max"})
    fields = m.side_fields()
    assert fields == [
        {"name": "switches0", "shape": [4, 14, 14], "bits": 2},
        {"name": "switches1", "shape": [8, 7, 7], "bits": 2},
    ]
    spec = FlatPayload(Quantiser("float16"), 16, None, [SideField.from_dict(f) for f in fields])
    assert spec.item_bytes == (16 * 16 + (4 * 196 + 8 * 49) * 2 + 7) // 8


def test_max_unpooling_needs_max_pooling():
    from training.registry import build_model

    with pytest.raises(ValueError, match="switches"):
        build_model("conv", {"input_shape": [1, 28, 28], "pool": "avg", "up": "max"})


def test_random_location_unpooling_puts_each_value_at_one_seeded_location_per_window():
    """Seed 001: "a single pooling location is picked randomly and the pooled value is placed there, setting
    the other locations to zero". Locations are drawn once per channel and window (from the seed)."""
    layer = RandomLocationUnpool((3, 4, 5), torch.Generator().manual_seed(7))
    x = torch.rand(2, 3, 4, 5) + 1.0  # no zeros
    out = layer(x)
    assert out.shape == (2, 3, 8, 10)
    windows = out.view(2, 3, 4, 2, 5, 2).permute(0, 1, 2, 4, 3, 5).reshape(2, 3, 4, 5, 4)
    assert torch.equal((windows != 0).sum(-1), torch.ones(2, 3, 4, 5, dtype=torch.int64))  # one per window
    assert torch.equal(windows.sum(-1), x)  # the value itself, not spread
    assert torch.equal(windows.argmax(-1), layer.local.expand(2, 3, 4, 5))  # at the stored location
    assert torch.equal(layer(x), out)  # deterministic: a decoder, not a sampler
    same = RandomLocationUnpool((3, 4, 5), torch.Generator().manual_seed(7))
    other = RandomLocationUnpool((3, 4, 5), torch.Generator().manual_seed(8))
    assert torch.equal(same.local, layer.local) and not torch.equal(other.local, layer.local)
    big = RandomLocationUnpool((8, 32, 32), torch.Generator().manual_seed(0)).local
    freq = torch.bincount(big.flatten(), minlength=4).float() / big.numel()
    assert float((freq - 0.25).abs().max()) < 0.02  # every position of the window, uniformly


def test_conv_with_random_unpooling_decodes_with_its_stored_locations():
    from training.registry import build_model

    args = {"input_shape": [1, 8, 8], "code_dim": 4, "channels": [2, 3], "pool": "max", "up": "random"}
    torch.manual_seed(0)
    m = build_model("conv", {**args, "unpool_seed": 5}).eval()
    assert m.side_fields() == [] and m.args["unpool_seed"] == 5
    assert [tuple(u.local.shape) for u in m.random_unpool] == [(2, 4, 4), (3, 2, 2)]
    assert "random_unpool.0.local" in m.state_dict()  # saved with the weights
    torch.manual_seed(0)
    other = build_model("conv", {**args, "unpool_seed": 6}).eval()  # same weights, other locations
    code = torch.randn(4, 4)
    with torch.no_grad():
        assert torch.equal(m.decode_logits(code, {}), m.decode_logits(code, {}))
        assert not torch.allclose(m.decode_logits(code, {}), other.decode_logits(code, {}))
    with pytest.raises(ValueError, match="pool"):
        build_model("conv", {**args, "pool": "stride"})
    assert "unpool_seed" not in build_model("conv", {**args, "up": "avg"}).args


def test_tied_weights_decode_with_the_transposed_encoder_weights():
    from training.registry import build_model

    torch.manual_seed(0)
    tied = build_model("dense", {"input_shape": [1, 8, 8], "code_dim": 5, "hidden": [16], "tied": True})
    free = build_model("dense", {"input_shape": [1, 8, 8], "code_dim": 5, "hidden": [16]})
    n_w = 64 * 16 + 16 * 5
    assert sum(p.numel() for p in free.parameters()) - sum(p.numel() for p in tied.parameters()) == n_w
    code = torch.randn(3, 5)
    with torch.no_grad():
        h = torch.relu(code @ tied.enc_w[1] + tied.dec_b[0])  # W2^T applied to the code
        want = (h @ tied.enc_w[0] + tied.dec_b[1]).view(3, 1, 8, 8)  # then W1^T
        assert torch.allclose(tied.decode_logits(code, {}), want, atol=1e-6)


@pytest.mark.slow
def test_parity_tolerates_rare_switch_ties_but_not_wrong_switches(monkeypatch):
    from latent_codec.errors import CodecError
    from training.models import unpool
    from training.onnx_export import export_graphs, parity
    from training.registry import build_model

    torch.manual_seed(0)
    m = build_model("conv", {"input_shape": [1, 8, 8], "code_dim": 4, "channels": [2, 3], "up": "max"}).eval()
    x = torch.rand(16, 1, 8, 8)
    enc, dec = export_graphs(m, x[:2])
    rep = parity(m, enc, dec, x)
    assert rep["side_values"] == 16 * (2 * 16 + 3 * 4) and rep["side_mismatches"] == 0
    real = unpool.global_to_local
    monkeypatch.setattr(unpool, "global_to_local", lambda idx, w, p=2: (real(idx, w, p) + 1) % 4)
    with pytest.raises(CodecError, match="side mismatches"):
        parity(m, enc, dec, x)

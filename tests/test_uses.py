"""What the codes are for (issue 23), outside the Search RPC: block-mask / mixed / clipped corruption, the
hashing code layer, binary codes in the manifest and their Hamming search, denoising served through a real
server's Decode, and the benchmarks' own building blocks run small."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from latent_codec.binary_code import BinaryCode, binary_codes, hamming, nearest
from latent_codec.errors import BundleError, PayloadError
from training.noise import Corruption, block_holes, block_noise


# ---- corruption -------------------------------------------------------------------------------------------
def test_block_noise_zeroes_one_square_per_item_in_every_channel():
    x = torch.rand(64, 3, 20, 24) * 0.9 + 0.1  # no zero pixels before
    out = block_noise(x, 6, torch.Generator().manual_seed(3))
    holes = out == 0
    assert torch.equal(holes[:, 0], holes[:, 1]) and torch.equal(holes[:, 0], holes[:, 2])
    for m in holes[:, 0]:
        rows, cols = torch.nonzero(m, as_tuple=True)
        assert len(rows) == 36 and rows.max() - rows.min() == 5 and cols.max() - cols.min() == 5
    assert torch.equal(out[~holes], x[~holes])  # nothing else changed
    tops = {int(torch.nonzero(m[0], as_tuple=True)[0].min()) for m in holes}
    assert len(tops) > 5  # places vary (uniform over 15 rows)


def test_block_holes_cover_every_place_including_the_last_row_and_column():
    m = block_holes((4000, 1, 10, 10), 4, torch.Generator().manual_seed(0))
    assert m.shape == (4000, 1, 10, 10)
    assert bool(m[:, 0, 9, :].any()) and bool(m[:, 0, :, 9].any()) and bool(m[:, 0, 0, 0].any())
    with pytest.raises(ValueError, match="block size"):
        block_holes((1, 1, 10, 10), 11)


def test_mixed_corruption_gives_each_item_exactly_one_kind_and_clips():
    x = torch.full((600, 1, 16, 16), 0.5)
    c = Corruption(mask_q=0.5, gauss_sigma=0.3, block=5, mix=True, clip=True, seed=2)
    out = c(x)
    assert out.min() >= 0 and out.max() <= 1
    zeros = (out == 0).flatten(1).sum(1)
    changed = (out != x).flatten(1).sum(1)
    block = (zeros == 25) & (changed == 25)
    gauss = (changed > 200) & (zeros < 60)  # nearly every pixel moved, few clipped to 0
    mask = (zeros > 60) & (zeros == changed)  # about half set to 0, the rest exactly kept
    kinds = block.int() + gauss.int() + mask.int()
    assert bool((kinds == 1).all())  # one kind per item, never two
    for share in (block, gauss, mask):
        assert 0.25 < float(share.float().mean()) < 0.42  # chosen uniformly
    composed = Corruption(mask_q=0.5, gauss_sigma=0.3, block=5, seed=2)(x)
    assert not torch.equal(composed.clamp(0, 1), out)  # without mix every kind applies (and no clip)
    assert float(composed.min()) < 0 or float(composed.max()) > 1


def test_mixing_needs_two_kinds():
    with pytest.raises(ValueError, match="two kinds"):
        Corruption(mask_q=0.3, mix=True)


# ---- the hashing code layer ---------------------------------------------------------------------------------
def test_code_noise_is_added_before_the_sigmoid_in_training_only():
    from training.models.dense import DenseAutoencoder

    torch.manual_seed(0)
    m = DenseAutoencoder((1, 8, 8), code_dim=6, hidden=[16], code_activation="sigmoid", code_noise=4.0)
    x = torch.rand(256, 1, 8, 8)
    m.train()
    a, b = m(x)["code"], m(x)["code"]
    assert not torch.equal(a, b)
    assert float(((a < 0.1) | (a > 0.9)).float().mean()) > 0.5  # N(0, 16) before a sigmoid saturates it
    m.eval()
    assert torch.equal(m(x)["code"], m(x)["code"])
    assert m.args["code_noise"] == 4.0
    assert (
        "code_noise" not in DenseAutoencoder((1, 8, 8), code_dim=6).args
    )  # other checkpoints' args unchanged


# ---- binary codes -----------------------------------------------------------------------------------------------
def test_binary_codes_pack_bits_msb_first_and_check_length_and_padding():
    spec = BinaryCode((0.5,) * 10)
    codes = np.zeros((1, 10), np.float32)
    codes[0, [0, 9]] = 0.9
    bits = spec.of_codes(codes)
    assert bits.tolist() == [[0b10000000, 0b01000000]]
    assert spec.check(bytes(bits[0])).tolist() == [128, 64]
    with pytest.raises(PayloadError, match="10 bits = 2 bytes"):
        spec.check(b"\x00")
    with pytest.raises(PayloadError, match="padding"):
        spec.check(b"\x00\x01")
    with pytest.raises(PayloadError, match="11 values"):
        spec.of_codes(np.zeros((1, 11)))


def test_hamming_and_nearest_against_a_naive_count():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (500, 3), dtype=np.uint8)
    q = codes[7]
    naive = np.array([sum(bin(a ^ b).count("1") for a, b in zip(q, c)) for c in codes])
    assert np.array_equal(hamming(q, codes), naive)
    idx, d = nearest(q, codes, 25)
    assert idx[0] == 7 and d[0] == 0
    order = sorted(range(500), key=lambda i: (naive[i], i))[:25]  # ties broken by index: stable results
    assert idx.tolist() == order and d.tolist() == naive[order].tolist()
    assert nearest(q, codes[:3], 10)[0].tolist() == sorted(range(3), key=lambda i: (naive[i], i))
    assert len(nearest(q, codes[:0], 10)[0]) == 0


@pytest.fixture(scope="module")
def hashing_bundle(tmp_path_factory):
    """The session's tiny hashing bundle, and the same checkpoint exported without binary codes."""
    from tests.helpers import tiny_hashing_bundle
    from training.export import export_bundle

    bundle = tiny_hashing_bundle(tmp_path_factory)
    plain = tmp_path_factory.mktemp("hashing") / "plain"
    export_bundle(bundle.parent / "hashing.pt", plain, "affine8", fit_items=0, test_limit=0)
    return bundle, plain


def test_export_binary_code_thresholds_payload_codes_and_is_hashed(hashing_bundle):
    from latent_codec import datasets
    from latent_codec.bundle import load_bundle
    from latent_codec.codec import Codec

    with_bits, plain = hashing_bundle
    codec = Codec.open(with_bits)
    assert codec.manifest.binary_code == BinaryCode((0.5,) * 14)
    x = datasets.load("digits", "test").x[:200]
    payloads = codec.encode(x)
    bits = binary_codes(codec, payloads)
    deq = codec.dequantise(codec.symbols(payloads)[0])
    assert np.array_equal(bits, np.packbits(deq > 0.5, axis=1)) and bits.shape == (200, 2)
    assert 0.2 < np.unpackbits(bits, axis=1)[:, :14].mean() < 0.8  # informative bits, not constant
    other = Codec.open(plain)
    assert other.bundle_id != codec.bundle_id  # the thresholds are part of the content hash
    with pytest.raises(BundleError, match="no binary codes"):
        binary_codes(other, payloads)
    m = json.loads((with_bits / "manifest.json").read_text())
    m["binary_code"]["thresholds"][0] = 0.25  # edited thresholds: the hash no longer matches
    edited = plain.parent / "edited"
    edited.mkdir()
    for name in ("encoder.onnx", "decoder.onnx"):
        (edited / name).write_bytes((with_bits / name).read_bytes())
    (edited / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="hash mismatch"):
        load_bundle(edited)
    m["binary_code"]["thresholds"] = [0.5] * 5  # wrong length: refused with the reason
    (edited / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="5 thresholds for a 14-value code"):
        load_bundle(edited)


def test_median_thresholds_for_codes_that_are_not_sigmoid():
    from training.export_flat import binary_thresholds
    from training.models.dense import DenseAutoencoder

    codes = np.array([[0.0, 5.0], [1.0, 7.0], [3.0, 9.0]], np.float32)
    assert binary_thresholds(DenseAutoencoder((1, 4, 4), code_dim=2), codes).thresholds == (1.0, 7.0)
    sig = DenseAutoencoder((1, 4, 4), code_dim=2, code_activation="sigmoid")
    assert binary_thresholds(sig, codes).thresholds == (0.5, 0.5)


# ---- denoising through a real server --------------------------------------------------------------------------
@pytest.mark.slow
def test_a_denoising_bundle_serves_noisy_and_holed_items_through_decode(tmp_path):
    """Trained on digits with mixed, clipped corruption: the server's Decode of corrupted items is closer to the
    clean items than the corrupted input is (docs/denoise.md compares it with a plain twin and classic filters)."""
    from bench.denoise import Noise, corrupt
    from latent_codec import datasets
    from latent_codec.codec import Codec
    from tests.helpers import decode_through_server, train_and_export

    common = dict(
        data="digits", epochs=40, limit=0, batch_size=64, test_limit=0, fit_items=0, threads=1, device="cpu"
    )
    args = {"code_dim": 16, "hidden": [64]}
    dae = train_and_export(
        tmp_path / "dae",
        "dense",
        args,
        mask_noise=0.4,
        gauss_noise=0.3,
        block_noise=3,
        noise_mix=True,
        noise_clip=True,
        **common,
    )
    clean = datasets.load("digits", "test").x[:300]
    codec = Codec.open(dae)

    def psnr(a, b):
        return -10 * math.log10(float((((a.astype(float) - b.astype(float)) / 255.0) ** 2).mean()))

    for noise in (Noise("mask", "mask", 0.4), Noise("gauss", "gauss", 0.3), Noise("hole", "block", 3)):
        noisy, _ = corrupt(clean, noise, 1)
        reply = decode_through_server(dae.parent, codec, codec.encode(noisy), noisy)
        out = np.frombuffer(reply.reconstructions.data, np.float32).reshape(clean.shape) * 255.0
        assert psnr(clean, out) > psnr(clean, noisy) + 1.0, noise.name


@pytest.mark.parametrize("bench", ["map2d", "features", "hashing", "anomaly"])
def test_the_uses_benchmarks_refuse_unlabelled_data_before_training(bench, tmp_path, capsys):
    import importlib

    rng = np.random.default_rng(0)
    data = tmp_path / "unlabelled.npz"
    np.savez(
        data,
        x_train=rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
        x_test=np.zeros((5, 28, 28), np.uint8),
    )
    work = tmp_path / "work"
    main = importlib.import_module(f"bench.{bench}").main
    assert main(["--data", str(data), "--work-dir", str(work), "--out-dir", str(tmp_path / "out")]) == 2
    assert f"{data} has no labels to" in capsys.readouterr().err
    assert not work.exists() or not any(work.iterdir())  # nothing was trained first

"""The photo RD benchmark (python -m bench.rd --photos): MS-SSIM against references computed another way, the
BD-rate against JPEG's best subsampling, and whole runs on 2-3 small photographs (with and without a bundle)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import msssim, photo_rd
from bench.bdrate import bd_rate_window


def _noisy(seed: int = 0, sigma: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    from skimage import data

    x = data.astronaut()[:256, :320, 1].astype(np.float64)
    y = np.clip(x + np.random.default_rng(seed).normal(0, sigma, x.shape), 0, 255)
    return x, y


def _reference_ms_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. 2003 written another way: a 2-D 11x11 window by direct convolution, skimage's block mean."""
    from scipy.signal import convolve2d
    from skimage.transform import downscale_local_mean

    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    out = 1.0
    for j, wj in enumerate((0.0448, 0.2856, 0.3001, 0.2363, 0.1333)):
        mu_x, mu_y = convolve2d(x, w, "valid"), convolve2d(y, w, "valid")
        var_x = convolve2d(x**2, w, "valid") - mu_x**2
        var_y = convolve2d(y**2, w, "valid") - mu_y**2
        cov = convolve2d(x * y, w, "valid") - mu_x * mu_y
        cs = np.mean((2 * cov + c2) / (var_x + var_y + c2))
        if j == 4:
            out *= (
                np.mean(
                    (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * (2 * cov + c2) / (var_x + var_y + c2)
                )
                ** wj
            )
        else:
            out *= cs**wj
            h, v = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
            x, y = downscale_local_mean(x[:h, :v], (2, 2)), downscale_local_mean(y[:h, :v], (2, 2))
    return float(out)


def test_ms_ssim_against_references():
    from skimage.metrics import structural_similarity

    x, y = _noisy()
    assert msssim.ms_ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    # one scale with weight 1 is SSIM: scikit-image's with the paper's Gaussian window
    ssim = structural_similarity(
        x, y, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert msssim.ms_ssim(x, y, weights=(1.0,)) == pytest.approx(ssim, abs=1e-9)
    assert msssim.ms_ssim(x, y) == pytest.approx(_reference_ms_ssim(x, y), abs=1e-9)
    worse = msssim.ms_ssim(x, _noisy(1, 40.0)[1])
    assert 0 < worse < msssim.ms_ssim(x, y) < 1
    rgb = np.stack([x, y, x])
    assert msssim.ms_ssim(rgb, np.stack([y, y, x])) == pytest.approx((msssim.ms_ssim(x, y) + 2) / 3)
    with pytest.raises(ValueError, match="at least 161"):
        msssim.ms_ssim(x[:160], y[:160])
    assert msssim.db(0.99) == pytest.approx(20.0)


def test_bd_rate_against_the_envelope_of_two_anchor_curves():
    def curve(points):
        return [{"bpp": b, "psnr": q} for b, q in points]

    a = curve([(0.2, 26.0), (0.5, 30.0), (1.0, 33.0), (2.0, 36.0)])
    b = curve([(0.3, 27.0), (0.6, 31.0), (0.9, 33.5), (2.5, 38.0)])  # cheaper than a between ~30 and 34 dB
    test = curve([(r["bpp"] * 0.8, r["psnr"]) for r in a])  # a, 20 % cheaper everywhere
    single = photo_rd.bd([a], test, "psnr")
    want, rng = bd_rate_window(
        [r["bpp"] for r in a],
        [r["psnr"] for r in a],
        [r["bpp"] for r in test],
        [r["psnr"] for r in test],
        -np.inf,
        np.inf,
    )
    assert single["bd_rate_percent"] == pytest.approx(want) == pytest.approx(-20.0)
    assert photo_rd.bd([a, a], test, "psnr")["bd_rate_percent"] == pytest.approx(-20.0, abs=0.01)
    both = photo_rd.bd([a, b], test, "psnr")
    assert both["bd_rate_percent"] > -20.0  # the envelope is cheaper than a alone somewhere
    assert both["range"] == pytest.approx([26.0, 36.0])  # only where the test curve measured
    assert photo_rd.bd([a], curve([(5.0, 40.0), (6.0, 41.0)]), "psnr")["bd_rate_percent"] is None


def small_photos(folder: Path, n: int = 2) -> list[np.ndarray]:
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    cuts = [data.coffee()[100:276, 150:350], data.chelsea()[40:216, 100:292], data.astronaut()[:200, 100:300]]
    for i, c in enumerate(cuts[:n]):
        Image.fromarray(np.ascontiguousarray(c)).save(folder / f"p{i}.png")
    return [np.moveaxis(c, -1, 0) for c in cuts[:n]]


def test_without_a_bundle_it_says_so_and_compares_the_classic_codecs(tmp_path, capsys):
    from bench.rd import main

    photos = small_photos(tmp_path / "photos")
    out = tmp_path / "out"
    rc = main(
        [
            "--photos",
            str(tmp_path / "photos"),
            "--bundles",
            str(tmp_path / "no-zoo"),
            "--quick",
            "--no-avif",
            "--out-dir",
            str(out),
        ]
    )
    assert rc == 0
    assert "no colour bundle" in capsys.readouterr().err
    doc = json.loads((out / "photo_rd.json").read_text())
    md = (out / "photo_rd.md").read_text()
    assert "**no colour bundle**" in md and doc["meta"]["bundles"] == []
    assert {r["codec"] for r in doc["rows"]} == {"JPEG 4:2:0", "JPEG 4:4:4", "WebP"}
    r = next(r for r in doc["rows"] if r["setting"] == "JPEG 4:4:4 q50" and r["image"] == "p1.png")
    blob = photo_rd.Setting("JPEG 4:4:4", 50).encode(np.ascontiguousarray(np.moveaxis(photos[1], 0, -1)))
    assert r["bytes"] == len(blob) and r["bpp"] == pytest.approx(8 * len(blob) / (176 * 192))
    rec = np.moveaxis(photo_rd.decode_classic(blob), -1, 0)
    assert r["psnr"] == pytest.approx(photo_rd.psnr(photos[1], rec))
    assert r["ms_ssim"] == pytest.approx(msssim.ms_ssim(photos[1], rec))
    assert r["psnr_y"] != pytest.approx(r["psnr"])
    webp = doc["summary"]["bd_rate"]["WebP"]["JPEG 4:2:0"]["psnr"]
    assert webp["bd_rate_percent"] < 0  # WebP needs fewer bytes than JPEG on photographs
    assert (out / "photo_rd.png").stat().st_size > 1000 and (out / "photo_rd_crops.png").stat().st_size > 1000
    assert [e["image"] for e in doc["per_image"]] == ["p0.png", "p1.png"]


@pytest.mark.slow
def test_with_a_colour_bundle_ours_are_device_path_bytes_with_bd_rates(colour_bundle, tmp_path):
    from bench.rd import main
    from latent_codec.codec import Codec

    photos = small_photos(tmp_path / "photos", 3)
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    (zoo / "tiny-colour").symlink_to(colour_bundle, target_is_directory=True)
    out = tmp_path / "out"
    assert (
        main(["--photos", str(tmp_path / "photos"), "--bundles", str(zoo), "--quick", "--out-dir", str(out)])
        == 0
    )
    doc = json.loads((out / "photo_rd.json").read_text())
    codec = Codec.open(colour_bundle)
    ours = [r for r in doc["rows"] if r["codec"].startswith("aecodec")]
    assert [r["image"] for r in ours] == ["p0.png", "p1.png", "p2.png"]
    for r, x in zip(ours, photos):
        payload = codec.encode(x[None])[0]
        assert r["bytes"] == len(payload) and r["bundle_id"] == codec.bundle_id
        assert r["psnr"] == pytest.approx(photo_rd.psnr(x, codec.decode([payload])[0]))
        assert r["encode_s"] > 0 and r["decode_s"] > 0
    assert any(r["codec"] == "AVIF s8" for r in doc["rows"])
    table = doc["summary"]["bd_rate"][ours[0]["codec"]]
    assert set(table) >= {photo_rd.JPEG_BEST, "JPEG 4:2:0", "JPEG 4:4:4", "WebP", "AVIF s8"}
    md = (out / "photo_rd.md").read_text()
    assert "1 colour bundles from" in md and "tiny-colour" in md and codec.bundle_id in md
    mean = next(m for m in doc["means"] if m["codec"] == ours[0]["codec"])
    assert mean["encode_s_per_mp"] > 0 and mean["bpp"] == pytest.approx(np.mean([r["bpp"] for r in ours]))


def test_max_side_downscales_without_upscaling():
    from bench.photo_rd import downscale

    x = np.random.default_rng(0).integers(0, 256, (3, 300, 200), dtype=np.uint8)
    small = downscale(x, 150)
    assert small.shape == (3, 150, 100) and small.dtype == np.uint8
    assert downscale(x, 0) is x and downscale(x, 400) is x
    # Lanczos keeps a smooth picture's colours: the mean survives
    smooth = np.broadcast_to(np.array([40, 120, 200], np.uint8)[:, None, None], (3, 300, 200)).copy()
    assert np.abs(downscale(smooth, 100).astype(int) - smooth[:, :100, :67].astype(int)).max() <= 1


def test_one_rule_names_every_benchmark_curve():
    """bench/families.py: the committed curves keep their names; a deeper map is a curve of its own."""
    from bench.families import bundle_family, family_name
    from latent_codec.bundle import load_bundle
    from tests.helpers import ROOT

    assert family_name("spatial", "map+meanscale", 4) == "aecodec spatial"
    assert family_name("spatial", "map+checkerboard", 4) == "aecodec spatial-checkerboard"
    assert family_name("spatial", "map+factorized", 4) == "aecodec spatial-factorized"
    assert family_name("spatial", "map+meanscale", 8) == "aecodec spatial-s8"
    assert family_name("spatial", "map+checkerboard", 8) == "aecodec spatial-s8-checkerboard"
    assert family_name("conv", "ans", None) == "aecodec conv"
    names = {bundle_family(load_bundle(p).manifest) for p in (ROOT / "zoo" / "photo").iterdir() if p.is_dir()}
    assert {"aecodec spatial", "aecodec spatial-checkerboard"} <= names

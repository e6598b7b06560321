"""training.crops on real photographs (scikit-image's samples written to a folder): shapes, the npz the
training loader reads, determinism by seed, where each crop came from, held-out exclusion, EXIF orientation,
16-bit and transparent images."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from latent_codec import datasets
from latent_codec.errors import DataError
from training import crops

SAMPLES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory) -> Path:
    from skimage import data

    d = tmp_path_factory.mktemp("photos")
    for i, name in enumerate(SAMPLES):
        rgb = getattr(data, name)()
        if i % 2:  # a mix of formats, as a phone folder has
            Image.fromarray(rgb).save(d / f"{name}.jpg", quality=95)
        else:
            Image.fromarray(rgb).save(d / f"{name}.png")
    return d


def _build(photos: Path, out: Path, *extra: str) -> int:
    return crops.main(["--photos", str(photos), "--out", str(out), "--quiet", *extra])


def test_shapes_and_the_training_loader_reads_them(photo_dir, tmp_path):
    out = tmp_path / "c.npz"
    assert (
        _build(photo_dir, out, "--size", "32", "--count", "300", "--test-count", "40", "--max-side", "256")
        == 0
    )
    tr, te = datasets.load(str(out), "train"), datasets.load(str(out), "test")
    assert tr.x.shape == (300, 3, 32, 32) and te.x.shape == (40, 3, 32, 32)
    assert tr.x.dtype == np.uint8 and tr.y is None and te.y is None
    z = np.load(out)
    # whole photographs are held out: no photograph gives both training and test crops
    assert set(z["photos_train"]).isdisjoint(z["photos_test"]) and len(z["photos_test"]) == 1
    assert len(z["photos_train"]) + len(z["photos_test"]) == len(SAMPLES)
    assert tr.x.std() > 20  # real image content, not a constant


def test_each_crop_is_the_region_of_the_downscaled_photo_it_names(photo_dir, tmp_path):
    out = tmp_path / "c.npz"
    assert _build(photo_dir, out, "--size", "24", "--count", "120", "--max-side", "200,300") == 0
    z = np.load(out)
    scales = {}
    for n, (i, k, top, left) in enumerate(z["where_train"]):
        name = str(z["photos_train"][i])
        if (name, k) not in scales:  # scale 0 is the largest --max-side
            rgb = crops.read_photo(photo_dir / name, at_least=600)
            scales[(name, k)] = crops.downscale(rgb, (300, 200)[k])
        img = scales[(name, k)]
        assert max(img.shape[:2]) <= (300, 200)[k]
        np.testing.assert_array_equal(
            z["x_train"][n], np.moveaxis(img[top : top + 24, left : left + 24], -1, 0)
        )
    assert {int(k) for k in z["where_train"][:, 1]} == {0, 1}  # both scales were used


def test_same_seed_same_file_and_another_seed_other_crops(photo_dir, tmp_path):
    args = ("--size", "16", "--count", "50", "--max-side", "128")
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        assert _build(photo_dir, tmp_path / f"{name}.npz", *args, "--seed", seed) == 0
    a, b, c = (np.load(tmp_path / f"{n}.npz") for n in "abc")
    for key in ("x_train", "x_test", "where_train", "photos_test"):
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["x_train"], c["x_train"])


def test_grey_crops_are_the_luma_of_the_colour_crops(photo_dir, tmp_path):
    args = ("--size", "16", "--count", "40", "--max-side", "128", "--seed", "1")
    assert _build(photo_dir, tmp_path / "rgb.npz", *args) == 0
    assert _build(photo_dir, tmp_path / "grey.npz", *args, "--grey") == 0
    rgb, grey = np.load(tmp_path / "rgb.npz")["x_train"], np.load(tmp_path / "grey.npz")["x_train"]
    assert grey.shape == (40, 1, 16, 16) and grey.dtype == np.uint8
    want = (0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2])[:, None]
    assert np.abs(grey - want).max() <= 0.5 + 1e-9
    assert datasets.load(str(tmp_path / "grey.npz"), "test").x.shape[1] == 1


def test_excluded_photographs_give_no_crop_by_name_or_by_identical_bytes(photo_dir, tmp_path):
    held = tmp_path / "heldout"
    held.mkdir()
    shutil.copy(photo_dir / "coffee.png", held / "renamed-copy.png")  # matched by its bytes
    names = tmp_path / "names.txt"
    names.write_text("# one name a line\nchelsea.jpg\n")
    out = tmp_path / "c.npz"
    extra = ("--exclude", str(held), "--exclude", str(names), "--test-photos", str(held))
    assert _build(photo_dir, out, "--size", "32", "--count", "200", "--max-side", "256", *extra[:4]) == 0
    z = np.load(out)
    used = set(z["photos_train"]) | set(z["photos_test"])
    assert "coffee.png" not in used and "chelsea.jpg" not in used and len(used) == len(SAMPLES) - 2
    # the excluded photograph's pixels appear in no crop: every crop's first row looked up among all of its rows
    coffee = crops.downscale(crops.read_photo(photo_dir / "coffee.png"), 256)
    h, w = coffee.shape[:2]
    rows = {coffee[top, left : left + 32].tobytes() for top in range(h - 31) for left in range(w - 31)}
    assert not any(np.moveaxis(x, 0, -1)[0].tobytes() in rows for x in z["x_train"])
    # a test folder that is also a training photograph is refused
    assert _build(photo_dir, out, "--size", "32", "--count", "10", "--test-photos", str(held)) == 2


def _exif_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def test_exif_orientation_is_applied_to_the_photograph_and_its_crops(tmp_path):
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 256, (40, 72, 3), dtype=np.uint8)  # stored landscape, 72 wide and 40 high
    d = tmp_path / "phone"
    d.mkdir()
    Image.fromarray(stored).save(d / "portrait.png", exif=_exif_orientation(6))  # "rotate 90 CW to view"
    upright = np.rot90(stored, k=-1)  # 40 wide, 72 high
    np.testing.assert_array_equal(crops.read_photo(d / "portrait.png"), upright)
    Image.fromarray(stored).save(d / "other.png")
    out = tmp_path / "c.npz"
    args = ("--size", "40", "--count", "30", "--test-photos", str(tmp_path / "t"))
    assert _build(d, out, *args, "--max-side", "512") == 2
    (tmp_path / "t").mkdir()
    Image.fromarray(stored[::-1]).save(tmp_path / "t" / "flipped.png")
    assert _build(d, out, *args, "--exclude", str(tmp_path / "list")) == 2
    (tmp_path / "list").write_text("other.png\n")
    assert _build(d, out, *args, "--exclude", str(tmp_path / "list")) == 0
    z = np.load(out)
    assert list(z["photos_train"]) == ["portrait.png"]
    for x, (_, _, top, left) in zip(z["x_train"], z["where_train"]):
        assert (
            left == 0 and 0 <= top <= 72 - 40
        )  # only an upright (portrait) photograph has room to move down
        np.testing.assert_array_equal(np.moveaxis(x, 0, -1), upright[top : top + 40])


def _png16(path: Path, a: np.ndarray) -> None:
    """A 16-bit PNG written by hand (grey or RGB), as scanners and raw converters write them."""
    h, w = a.shape[:2]
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2 if a.ndim == 3 else 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    _png16(tmp_path / "grey16.png", ramp)
    got = crops.read_photo(tmp_path / "grey16.png")
    assert got.shape == (48, 64, 3) and (got[..., 0] == got[..., 2]).all()
    np.testing.assert_array_equal(got[..., 0], np.rint(ramp / 257.0).astype(np.uint8))
    assert (got == 255).mean() < 0.01  # clipping would turn almost all of it white
    rgb = np.stack([ramp, ramp[::-1], np.full_like(ramp, 30000)], -1)
    _png16(tmp_path / "rgb16.png", rgb)
    got = crops.read_photo(tmp_path / "rgb16.png")
    assert np.abs(got.astype(int) - rgb / 257.0).max() <= 1.0


def test_transparency_is_refused_unless_flattened_over_white(tmp_path, capsys):
    src = tmp_path / "p"
    src.mkdir()
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :20, 3] = 255  # left half opaque red, right half fully transparent
    Image.fromarray(rgba).save(src / "logo.png")
    with pytest.raises(DataError, match="transparent pixels; pass --alpha flatten"):
        crops.read_photo(src / "logo.png")
    flat = crops.read_photo(src / "logo.png", alpha="flatten")
    assert (flat[:, :20] == (200, 0, 0)).all() and (flat[:, 20:] == 255).all()
    rgba[..., 3] = 255  # an alpha channel that hides nothing is just RGB
    Image.fromarray(rgba).save(src / "opaque.png")
    assert (crops.read_photo(src / "opaque.png") == (200, 0, 0)).all()
    # the command names the file and the flag in one line, no traceback; with the flag it goes through
    (tmp_path / "t").mkdir()
    Image.fromarray(np.full((40, 40, 3), 90, np.uint8)).save(tmp_path / "t" / "grey.png")
    args = ["--photos", str(src), "--test-photos", str(tmp_path / "t"), "--out", str(tmp_path / "c.npz")]
    assert crops.main([*args, "--size", "8", "--count", "5", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "logo.png" in err and "--alpha flatten" in err
    assert crops.main([*args, "--size", "8", "--count", "5", "--quiet", "--alpha", "flatten"]) == 0


def test_bad_arguments_are_one_line_errors(photo_dir, tmp_path, capsys):
    out = str(tmp_path / "c.npz")
    assert crops.main(["--photos", str(tmp_path / "none"), "--out", out, "--count", "5"]) == 2
    assert "photo folder not found" in capsys.readouterr().err
    assert (
        crops.main(
            ["--photos", str(photo_dir), "--out", out, "--count", "5", "--size", "64", "--max-side", "32"]
        )
        == 2
    )
    assert "--max-side must be at least --size" in capsys.readouterr().err
    (tmp_path / "one").mkdir()
    shutil.copy(photo_dir / "astronaut.png", tmp_path / "one")
    assert crops.main(["--photos", str(tmp_path / "one"), "--out", out, "--count", "5"]) == 2
    assert "at least 2 are needed" in capsys.readouterr().err

"""Loaders read real formats and fail with messages that name the problem."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from latent_codec import datasets
from latent_codec.errors import DataError
from tests.helpers import need_fashion, unit


def write_idx(path, arr: np.ndarray, gz: bool = False) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def test_idx_folder_roundtrip_plain_and_gz(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(5, 6, 4), dtype=np.uint8)
    labels = np.arange(5, dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs, gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
    ds = datasets.load(tmp_path, "test")
    assert ds.x.shape == (5, 1, 6, 4) and ds.x.dtype == np.uint8
    np.testing.assert_array_equal(ds.x[:, 0], imgs)
    np.testing.assert_array_equal(ds.y, labels)
    u = unit(ds.x)
    assert u.dtype == np.float32 and 0.0 <= u.min() and u.max() <= 1.0
    assert u.max() == pytest.approx(imgs.max() / 255.0)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "bad magic"),
        (b"\x01\x02\x08\x03", "bad magic"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
        (b"\x00\x00\x08\x01" + struct.pack(">I", 10) + b"\x00" * 3, r"declares shape \(10,\)"),
        (b"\x00\x00\x42\x01" + struct.pack(">I", 1) + b"\x00", "unknown IDX element type"),
    ],
)
def test_malformed_idx_is_named(tmp_path, content, message):
    p = tmp_path / "bad-images-idx3-ubyte"
    p.write_bytes(content)
    with pytest.raises(DataError, match=message) as exc:
        datasets.read_idx(p)
    assert str(p) in str(exc.value)


def test_corrupt_gzip_and_missing_files(tmp_path):
    bad = tmp_path / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read IDX"):
        datasets.read_idx(bad)
    with pytest.raises(DataError, match="not found"):
        datasets.read_idx(tmp_path / "nope-idx3-ubyte")
    with pytest.raises(DataError, match="no train-images"):
        datasets.load_idx_dir(tmp_path, "train")
    with pytest.raises(DataError, match="data not found"):
        datasets.load(tmp_path / "missing")


def test_npz_and_npy(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (7, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "a.npz", x_test=x, y_test=np.arange(7))
    ds = datasets.load(tmp_path / "a.npz", "test")
    assert ds.x.shape == (7, 1, 28, 28)
    np.save(tmp_path / "b.npy", x.astype(np.float32) / 255)
    ds2 = datasets.load(tmp_path / "b.npy")
    assert ds2.x.dtype == np.float32 and ds2.x.shape == (7, 1, 28, 28)
    np.save(tmp_path / "c.npy", x.astype(np.float32))  # floats outside [0, 1]
    with pytest.raises(DataError, match=r"must lie in \[0, 1\]"):
        datasets.load(tmp_path / "c.npy")
    np.savez(tmp_path / "d.npz", foo=x, bar=x)
    with pytest.raises(DataError, match="which array"):
        datasets.load(tmp_path / "d.npz")
    (tmp_path / "e.npz").write_bytes(b"garbage")
    with pytest.raises(DataError, match="not a readable"):
        datasets.load(tmp_path / "e.npz")


def test_image_folder(tmp_path):
    rng = np.random.default_rng(2)
    arrs = [rng.integers(0, 256, (12, 10), dtype=np.uint8) for _ in range(3)]
    for i, a in enumerate(arrs):
        Image.fromarray(a).save(tmp_path / f"img{i}.png")
    ds = datasets.load(tmp_path)
    assert ds.x.shape == (3, 1, 12, 10)
    np.testing.assert_array_equal(ds.x[1, 0], arrs[1])  # PNG is lossless
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(tmp_path / "img9.png")
    with pytest.raises(DataError, match="img9.png: image is 8x8 but earlier images are 10x12"):
        datasets.load(tmp_path)
    (tmp_path / "img9.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match="not a readable image"):
        datasets.load(tmp_path)


def test_digits_fallback_is_real_data():
    tr, te = datasets.load("digits", "train"), datasets.load("digits", "test")
    assert tr.x.shape[1:] == (1, 8, 8) and len(tr) + len(te) == 1797
    assert tr.x.max() == 255 and len(te) == 360


def test_fashion_mnist_full_splits():
    need_fashion()
    tr, te = datasets.load("fashion-mnist", "train"), datasets.load("fashion-mnist", "test")
    assert tr.x.shape == (60000, 1, 28, 28) and te.x.shape == (10000, 1, 28, 28)
    assert te.y is not None and set(np.unique(te.y)) == set(range(10))


def test_digits_upscaled_shape_dtype_range_and_split():
    """digits:N is the 8x8 digits upscaled to N x N, uint8 over the full range, the same items per split."""
    tr, te = datasets.load("digits:28", "train"), datasets.load("digits:28", "test")
    assert tr.x.shape == (1437, 1, 28, 28) and te.x.shape == (360, 1, 28, 28)
    assert tr.x.dtype == np.uint8 and te.x.dtype == np.uint8
    assert tr.x.min() == 0 and tr.x.max() == 255
    small = datasets.load("digits", "test")
    np.testing.assert_array_equal(te.y, small.y)  # the same items in the same order, only bigger
    # Each upscaled item is its 8x8 original enlarged: shrunk back (box filter) it is close to the original.
    back = np.stack([np.asarray(Image.fromarray(i[0]).resize((8, 8), Image.Resampling.BOX)) for i in te.x])
    err = np.abs(back.astype(np.int64) - small.x[:, 0]).mean()  # 13 grey levels measured
    wrong = np.abs(back.astype(np.int64) - np.roll(small.x[:, 0], 1, axis=0)).mean()  # another item's: ~60
    assert err < 20 < 40 < wrong, (err, wrong)
    # Train and test share no item and the split does not change between calls.
    assert not set(map(bytes, te.x)) & set(map(bytes, tr.x))
    np.testing.assert_array_equal(datasets.load("digits:28", "test").x, te.x)
    assert datasets.load("digits:16", "train").x.shape == (1437, 1, 16, 16)
    assert te.source == "digits:28:test"


@pytest.mark.parametrize("spec", ["digits:7", "digits:x", "digits:", "digits:9999"])
def test_digits_bad_size_is_named(spec):
    with pytest.raises(DataError, match="digits:N"):
        datasets.load(spec, "test")


def test_image_folder_with_train_and_test_subfolders_is_split(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        (tmp_path / split).mkdir()
        for i in range(n):
            Image.fromarray(np.full((5, 4), 10 * i + (100 if split == "test" else 0), np.uint8)).save(
                tmp_path / split / f"{i}.png"
            )
    tr, te = datasets.load(tmp_path, "train"), datasets.load(tmp_path, "test")
    assert tr.x.shape == (3, 1, 5, 4) and te.x.shape == (2, 1, 5, 4)
    assert te.x[1, 0, 0, 0] == 110 and tr.x[2, 0, 0, 0] == 20
    assert len(datasets.load_items(tmp_path, "test")) == 2
    assert datasets.has_own_split(tmp_path) and datasets.has_own_split("digits:16")
    np.savez(tmp_path / "one.npz", x=tr.x)
    np.savez(tmp_path / "two.npz", x_train=tr.x, x_test=te.x)
    assert not datasets.has_own_split(tmp_path / "one.npz") and datasets.has_own_split(tmp_path / "two.npz")
    assert not datasets.has_own_split(tmp_path / "train")  # a flat folder of images: one set, no split

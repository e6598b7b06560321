"""How a folder of real photographs becomes items, without a bundle: EXIF orientation, 16 bits, alpha, colour
against grey, mixed sizes, and the code file that keeps each item's name (fast: no training)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edge.codefile import MAGIC_V2, output_names, read_codes, write_codes
from latent_codec import datasets
from latent_codec.errors import DataError
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb

# EXIF orientation -> the operation that turns the upright picture into the stored pixels (the inverse of what
# a viewer applies), written out here rather than taken from Pillow's exif_transpose.
STORE_AS = {
    2: lambda u: u[:, ::-1],  # mirrored
    3: lambda u: u[::-1, ::-1],  # upside down
    4: lambda u: u[::-1, :],
    5: lambda u: np.swapaxes(u, 0, 1),  # transposed
    6: lambda u: np.rot90(u, 1),  # the camera was turned: a viewer turns it back 90 degrees clockwise
    7: lambda u: np.swapaxes(u[::-1, ::-1], 0, 1),  # transverse
    8: lambda u: np.rot90(u, -1),
}


def write_oriented(path, upright: np.ndarray, orientation: int, **save) -> None:
    """Store ``upright`` (H, W, 3) so that a viewer honouring the EXIF tag shows exactly it."""
    stored = np.ascontiguousarray(STORE_AS[orientation](upright)) if orientation != 1 else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(path, exif=exif, **save)


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A picture whose every orientation differs: a gradient plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([yy * 200 // max(h - 1, 1), xx * 200 // max(w - 1, 1), (yy + 2 * xx) % 256], -1)
    return (base + rng.integers(0, 40, (h, w, 3))).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_is_applied(tmp_path, orientation):
    upright = _rgb(12, 20)
    write_oriented(tmp_path / "p.png", upright, orientation)
    items = datasets.load_items(tmp_path, mode="RGB")
    assert items.shapes == [(3, 12, 20)]  # the size as shown, read from the header before decoding
    np.testing.assert_array_equal(items.take([0])[0], np.moveaxis(upright, -1, 0))


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    v = np.arange(0, 65536, 257, dtype=np.uint16)[None, :].repeat(3, 0)  # 0, 257, ..., 65535
    v[1] = np.linspace(0, 65535, v.shape[1]).astype(np.uint16)
    Image.fromarray(v).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    x = datasets.load_items(tmp_path, mode="L").take([0])[0, 0]
    np.testing.assert_array_equal(x[0], np.arange(256))  # exact multiples of 257 land on every 8-bit level
    np.testing.assert_array_equal(x[1], np.rint(v[1] * 255.0 / 65535.0).astype(np.uint8))
    assert (x == 255).mean() < 0.02  # not the 99 % of white a plain conversion gives
    rgb = datasets.load_items(tmp_path, mode="RGB").take([0])[0]  # grey 16-bit into a colour bundle
    np.testing.assert_array_equal(rgb, np.repeat(x[None], 3, 0))


def test_bilevel_cmyk_and_palette_images_become_8_bit_items(tmp_path):
    bits = np.random.default_rng(4).integers(0, 2, (6, 9)).astype(bool)
    Image.fromarray(bits).save(tmp_path / "a-bits.png")
    rgb = _rgb(6, 9)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "b-cmyk.jpg", quality=100)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=8).save(
        tmp_path / "c-palette.png"
    )
    items = datasets.load_items(tmp_path, mode="RGB")
    np.testing.assert_array_equal(items.take([0])[0], np.repeat(np.where(bits, 255, 0)[None], 3, 0))
    cmyk = items.take([1])[0]
    assert np.abs(cmyk.astype(int) - np.moveaxis(rgb, -1, 0)).mean() < 8  # back to about the same colours
    pal = Image.open(tmp_path / "c-palette.png")
    np.testing.assert_array_equal(items.take([2])[0], np.moveaxis(np.asarray(pal.convert("RGB")), -1, 0))


def test_wide_integer_and_float_images_are_refused(tmp_path):
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(DataError, match="wide.tif: 32-bit integer pixels are not supported"):
        datasets.load_items(tmp_path)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P-transparent"])
def test_alpha_is_refused_unless_flattened_onto_a_named_background(tmp_path, mode):
    rgb = _rgb(6, 5)
    alpha = np.tile(np.asarray([0, 128, 255], np.uint8), 10)[:30].reshape(6, 5)
    if mode == "RGBA":
        Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "a.png")
        colour = rgb.astype(float)
    elif mode == "LA":
        grey = rgb[..., 0]
        Image.fromarray(np.dstack([grey, alpha]), "LA").save(tmp_path / "a.png")
        colour = np.repeat(grey[..., None], 3, -1).astype(float)
    else:
        im = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        im.save(tmp_path / "a.png", transparency=0)
        pal = np.asarray(im.getpalette()[:48]).reshape(16, 3)
        idx = np.asarray(im)
        colour = pal[idx].astype(float)
        alpha = np.where(idx == 0, 0, 255).astype(np.uint8)
    with pytest.raises(DataError, match="a.png: has an alpha channel.*--flatten-alpha white"):
        datasets.load_items(tmp_path, mode="RGB")
    a = alpha[..., None] / 255.0
    for bg, level in (("white", 255), ("black", 0)):
        got = datasets.load_items(tmp_path, mode="RGB", alpha=bg).take([0])[0]
        want = np.rint(colour * a + level * (1 - a)).astype(np.uint8)
        np.testing.assert_array_equal(np.moveaxis(got, 0, -1), want)


def test_colour_for_a_grey_bundle_is_refused_unless_asked_for(tmp_path):
    rgb = _rgb(8, 9)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    with pytest.raises(DataError, match=r"c.png: a colour image.*pass --grey.*grey=True"):
        datasets.load_items(tmp_path, mode="L")
    x = datasets.load_items(tmp_path, mode="L", grey=True).take([0])[0, 0]
    np.testing.assert_array_equal(x, np.asarray(Image.fromarray(rgb).convert("L")))  # Pillow's weights
    # Colour arrays too: the Python API says the same.
    np.savez(tmp_path / "c.npz", x=np.moveaxis(rgb, -1, 0)[None])
    with pytest.raises(DataError, match="colour items.*--grey"):
        datasets.load_items(tmp_path / "c.npz", mode="L")
    np.testing.assert_array_equal(
        datasets.load_items(tmp_path / "c.npz", mode="L", grey=True).take([0])[0, 0], x
    )


def test_grey_palettes_are_grey_and_a_mixed_folder_is_colour(tmp_path):
    g = np.arange(48, dtype=np.uint8).reshape(6, 8)
    Image.fromarray(g).convert("P").save(tmp_path / "a-grey-palette.png")  # P mode with a grey palette
    items = datasets.load_items(tmp_path, mode="L")  # not refused: nothing is lost
    np.testing.assert_array_equal(items.take([0])[0, 0], g)
    Image.fromarray(_rgb(6, 8)).save(tmp_path / "b-colour.png")
    both = datasets.load_items(tmp_path)  # no mode asked: colour when any image is
    assert both.shapes == [(3, 6, 8), (3, 6, 8)]
    np.testing.assert_array_equal(both.take([0])[0], np.repeat(g[None], 3, 0))


def test_a_folder_of_mixed_sizes_is_items_with_names_grouped_by_size(tmp_path):
    sizes = {"a.png": (5, 7), "b.jpg": (9, 4), "c.png": (5, 7), "d.png": (3, 3)}
    for name, (h, w) in sizes.items():
        Image.fromarray(_rgb(h, w)).save(tmp_path / name)
    items = datasets.load_items(tmp_path, mode="RGB")
    assert items.names == list(sizes) and items.shapes == [(3, h, w) for h, w in sizes.values()]
    assert items.by_size([0, 1, 2, 3], 8) == [[0, 2], [1], [3]]
    assert items.by_size([0, 1, 2, 3], 1) == [[0], [2], [1], [3]]
    assert items.take([0, 2]).shape == (2, 3, 5, 7)
    with pytest.raises(DataError, match="share a size"):
        items.take([0, 1])
    assert items.head(2).names == ["a.png", "b.jpg"]
    with pytest.raises(DataError, match="b.jpg: image is 4x9 but earlier images are 7x5"):
        datasets.load(tmp_path)  # one array (training) needs one size, and says so


def test_code_file_keeps_names_reads_v2_and_refuses_unknown_versions(tmp_path):
    batch = pb.CodeBatch(bundle_id="b-1", count=2, format="map+hyperprior", data=b"abcde", sizes=[2, 3])
    path = tmp_path / "x.aec"
    write_codes(path, batch, ["IMG_1.jpg", "ünïcode name.png"])
    got = read_codes(path)
    assert got.names == ["IMG_1.jpg", "ünïcode name.png"] and got.batch == batch
    (tmp_path / "old.aec").write_bytes(MAGIC_V2 + batch.SerializeToString())  # written before names
    old = read_codes(tmp_path / "old.aec")
    assert old.names is None and old.batch == batch
    (tmp_path / "new.aec").write_bytes(b"aecodec-codes v9\n...")
    with pytest.raises(DataError, match="format v9, which this aecodec does not read"):
        read_codes(tmp_path / "new.aec")
    (tmp_path / "cut.aec").write_bytes(path.read_bytes()[:20])
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_codes(tmp_path / "cut.aec")
    (tmp_path / "lies.aec").write_bytes(path.read_bytes().replace(b'"IMG_1.jpg", ', b""))
    with pytest.raises(DataError, match="names 1 items but holds 2"):
        read_codes(tmp_path / "lies.aec")


def test_output_names_stay_in_the_folder_and_distinct():
    assert output_names(["IMG_1.jpg", "b.png"]) == ["IMG_1.png", "b.png"]
    assert output_names(["../../etc/passwd", "/abs/x.jpg", "..", "", "a\\..\\b.jpg"]) == [
        "passwd.png",
        "x.png",
        "2.png",
        "3.png",
        "b.png",
    ]
    assert output_names(["a.jpg", "a.png", "c"]) == ["a.jpg.png", "a.png.png", "c.png"]
    assert output_names(["same.jpg", "same.jpg"]) == ["same.jpg.png", "same.jpg-1.png"]

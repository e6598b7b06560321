"""The path a real photo folder takes through the edge commands and back: a tiny trained colour bundle (the
session's, tests/conftest.py), real ONNX Runtime, a real server with a real SQLite store on 127.0.0.1.

20 colour photographs of mixed sizes cut from scikit-image's samples, some stored turned with an EXIF
orientation tag, go through encode/decode offline, evaluate against the server, and ingest to the server and
fetch back out: names, sizes, orientation and colours are checked against the originals.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge.cli import main as edge_main
from latent_codec.codec import Codec
from tests.helpers.edge_cli import assert_one_line_error, run_edge
from tests.helpers.photos import write_oriented

pytestmark = pytest.mark.slow  # the session's colour bundle trains for about a minute

N_PHOTOS = 20
# Levels of 255: the session's tiny colour model (20 dB on its crops) keeps a small photo's mean colour this well
# (measured: 0.1-23 levels, mean of the worst channel 11). What the cloud returns is also checked exactly: the
# decoding of the device's own payload; the tolerance is for the comparison with the original.
MEAN_RGB_TOLERANCE = 25.0


def _sources() -> list[np.ndarray]:
    from skimage import data

    return [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]


def make_photo_folder(folder: Path, n: int = N_PHOTOS, seed: int = 0) -> dict[str, np.ndarray]:
    """n crops of various sizes (24..96 pixels a side), PNG and JPEG, every third stored turned with an EXIF
    orientation tag; -> name -> the upright picture (C, H, W) as a viewer shows it (for a JPEG, as decoded)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    srcs = _sources()
    out = {}
    for i in range(n):
        src = srcs[i % len(srcs)]
        h, w = (int(v) for v in rng.integers(24, 97, 2))
        y, x = rng.integers(0, src.shape[0] - h), rng.integers(0, src.shape[1] - w)
        upright = np.ascontiguousarray(src[y : y + h, x : x + w, :3])
        orientation = (3, 6, 8)[(i // 3) % 3] if i % 3 == 0 else 1
        name = f"photo_{i:02d}.{'jpg' if i % 4 == 1 else 'png'}"
        if name.endswith(".jpg"):
            # JPEG is lossy: the reference is the file as decoded, turned upright here by hand
            write_oriented(folder / name, upright, orientation, quality=95)
            stored = np.asarray(Image.open(folder / name).convert("RGB"))
            upright = {1: stored, 3: stored[::-1, ::-1], 6: np.rot90(stored, -1), 8: np.rot90(stored, 1)}[
                orientation
            ]
        else:
            write_oriented(folder / name, upright, orientation)
        out[name] = np.moveaxis(np.ascontiguousarray(upright), -1, 0)
    return out


def quadrants(a: np.ndarray) -> np.ndarray:
    """Mean colour of each quarter of a (3, H, W) picture: (4, 3)."""
    h, w = a.shape[1] // 2, a.shape[2] // 2
    a = a.astype(np.float64)
    return np.stack([b.mean((1, 2)) for b in (a[:, :h, :w], a[:, :h, w:], a[:, h:, :w], a[:, h:, w:])])


def check_like(got: np.ndarray, want: np.ndarray, name: str) -> bool:
    """Same size, the same mean colour (closer to the original's than to its channels swapped or to its grey),
    and the right way up: its quarters' colours match the original's better than those of the picture turned
    by 180 degrees or mirrored, wherever those differ clearly (more than twice the reconstruction's own error).
    Returns whether a turned picture was told apart (not for a photo that looks alike every way up)."""
    assert got.shape == want.shape, (name, got.shape, want.shape)
    mean_got, mean_want = got.reshape(3, -1).mean(1), want.reshape(3, -1).mean(1)
    assert np.abs(mean_got - mean_want).max() < MEAN_RGB_TOLERANCE, (name, mean_got, mean_want)
    dist = lambda m: float(np.abs(mean_got - m).sum())  # noqa: E731
    others = [mean_want[list(p)] for p in ((2, 1, 0), (1, 0, 2), (0, 2, 1))]
    others.append(np.full(3, mean_want @ np.asarray([0.299, 0.587, 0.114])))
    assert all(dist(mean_want) < dist(o) for o in others if np.abs(o - mean_want).sum() > 60), name
    q, qw = quadrants(got), quadrants(want)
    own = float(np.abs(q - qw).mean())
    told = False
    for turned in (want[:, ::-1, ::-1], want[:, :, ::-1], want[:, ::-1, :]):
        qt = quadrants(turned)
        if float(np.abs(qw - qt).mean()) > 2 * own + 2:
            assert own < float(np.abs(q - qt).mean()), name
            told = True
    return told


def tagged(name: str) -> bool:
    """Was this photo of make_photo_folder stored turned, with an EXIF orientation tag?"""
    return int(name[6:8]) % 3 == 0


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path_factory.mktemp("photos") / "in"
    return folder, make_photo_folder(folder)


@pytest.fixture
def store_server(colour_bundle, tmp_path):
    from cloud.server import build_server

    root = tmp_path / "bundles"
    root.mkdir()
    (root / colour_bundle.name).symlink_to(colour_bundle, target_is_directory=True)
    running = build_server(root, "127.0.0.1:0", workers=2, store=str(tmp_path / "store.db"))
    yield running, tmp_path / "store.db"
    running.stop(grace=1.0)


def test_encode_decode_keeps_names_sizes_orientation_and_colours(colour_bundle, photos, tmp_path):
    folder, want = photos
    codes = tmp_path / "photos.aec"
    enc = run_edge("encode", "--bundle", str(colour_bundle), "--data", str(folder), "--out", str(codes))
    assert enc.returncode == 0, enc.stderr
    assert f"{N_PHOTOS} items" in enc.stderr and "bits per pixel" in enc.stderr
    out = tmp_path / "restored"
    dec = run_edge(
        "decode",
        "--bundle",
        str(colour_bundle),
        "--codes",
        str(codes),
        "--out",
        str(out),
        "--compare",
        str(folder),
    )
    assert dec.returncode == 0, dec.stderr
    assert sorted(p.name for p in out.glob("*.png")) == sorted(Path(n).stem + ".png" for n in want)
    told = []
    for name, x in want.items():
        got = np.moveaxis(np.asarray(Image.open(out / (Path(name).stem + ".png"))), -1, 0)
        told.append(check_like(got, x, name) and tagged(name))
        pic = np.asarray(Image.open(out / "compare" / (Path(name).stem + ".png")))
        assert pic.shape == (x.shape[1], 2 * x.shape[2] + 4, 3)  # original | gap | reconstruction
        np.testing.assert_array_equal(pic[:, : x.shape[2]], np.moveaxis(x, 0, -1))
        np.testing.assert_array_equal(np.moveaxis(pic[:, x.shape[2] + 4 :], -1, 0), got)
        assert f"{name}\t" in dec.stderr  # its PSNR line
    assert sum(told) >= 5  # of the 7 photos stored turned, those not alike every way up came back upright
    # The same codec in Python gives the same pictures (the CLI adds no step of its own).
    codec = Codec.open(colour_bundle)
    x0 = want["photo_02.png"]
    np.testing.assert_array_equal(
        codec.decode(codec.encode(x0[None]))[0],
        np.moveaxis(np.asarray(Image.open(out / "photo_02.png")), -1, 0),
    )
    # Nothing is overwritten without --force: the first existing file is named, nothing is written.
    before = (out / "photo_00.png").stat().st_mtime_ns
    again = run_edge("decode", "--bundle", str(colour_bundle), "--codes", str(codes), "--out", str(out))
    assert_one_line_error(again, "photo_00.png exists", f"and {N_PHOTOS - 1} more", "--force")
    assert (out / "photo_00.png").stat().st_mtime_ns == before
    forced = run_edge(
        "decode", "--bundle", str(colour_bundle), "--codes", str(codes), "--out", str(out), "--force"
    )
    assert forced.returncode == 0, forced.stderr
    assert_one_line_error(
        run_edge("encode", "--bundle", str(colour_bundle), "--data", str(folder), "--out", str(codes)),
        "exists; pass --force",
    )
    # Items of several sizes do not fit one .npy: said before anything is written.
    assert_one_line_error(
        run_edge(
            "decode", "--bundle", str(colour_bundle), "--codes", str(codes), "--out", str(tmp_path / "a.npy")
        ),
        "different sizes",
    )


def test_a_grey_bundle_names_the_flag_for_colour_photos(digits_bundle, tmp_path):
    """The digits bundle takes grey 8x8 items: colour photos are refused with the flag, converted with it."""
    folder = tmp_path / "small"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"c{i}.png")
    out = tmp_path / "c.aec"
    for cmd in ("encode",):
        proc = run_edge(cmd, "--bundle", str(digits_bundle), "--data", str(folder), "--out", str(out))
        assert_one_line_error(proc, "c0.png: a colour image", "--grey")
    ok = run_edge(
        "encode", "--bundle", str(digits_bundle), "--data", str(folder), "--out", str(out), "--grey"
    )
    assert ok.returncode == 0, ok.stderr
    # The Python API (edge.source, edge.ingest) refuses the same way, naming the flag and the keyword.
    from edge.ingest import IngestConfig, run
    from edge.source import open_source
    from latent_codec.errors import CodecError, DataError

    with pytest.raises(DataError, match="--grey.*grey=True"):
        open_source(digits_bundle, folder)
    codec, items = open_source(digits_bundle, folder, grey=True)
    assert items.shapes == [(1, 8, 8)] * 3
    with pytest.raises(CodecError, match="--grey"):
        run(IngestConfig(bundle=digits_bundle, spool=tmp_path / "s.db", data=str(folder)))


def test_evaluate_reports_bits_per_pixel_and_a_row_per_photo(store_server, colour_bundle, photos, tmp_path):
    running, _ = store_server
    folder, want = photos
    report, pics = tmp_path / "r.json", tmp_path / "side"
    rc = edge_main(
        [
            "evaluate",
            "--bundle",
            str(colour_bundle),
            "--server",
            f"127.0.0.1:{running.port}",
            "--data",
            str(folder),
            "--batch-size",
            "3",
            "--json",
            str(report),
            "--no-progress",
            "--compare",
            str(pics),
        ]
    )
    assert rc == 0
    r = json.loads(report.read_text())
    codec = Codec.open(colour_bundle)
    assert [row["name"] for row in r["rows"]] == list(want)
    pixels = 0
    for row, (name, x) in zip(r["rows"], want.items()):
        assert (row["channels"], row["height"], row["width"]) == x.shape
        # the bytes are the payload's: the same codec encodes the same (upright) item to the same length
        payload = codec.encode(x[None])[0]
        assert row["payload_bytes"] == len(payload)
        assert row["bits_per_pixel"] == pytest.approx(8 * len(payload) / (x.shape[1] * x.shape[2]))
        rec = codec.decode([payload])
        assert row["psnr"] == pytest.approx(
            10 * np.log10(1 / float(codec.squared_error(x[None], rec)[0])), abs=0.05
        )  # the cloud measured the item it was sent, in its place
        pixels += x.shape[1] * x.shape[2]
        side = np.asarray(Image.open(pics / (Path(name).stem + ".png")))
        np.testing.assert_array_equal(side[:, : x.shape[2]], np.moveaxis(x, 0, -1))
    assert r["pixels"] == pixels and r["items"] == N_PHOTOS
    assert r["bits_per_pixel"] == pytest.approx(8 * r["payload_bytes"] / pixels)
    assert np.mean([row["mse"] for row in r["rows"]]) == pytest.approx(r["mse"])


def test_twenty_photos_through_ingest_and_back_out_with_names_orientation_and_colours(
    store_server, colour_bundle, photos, tmp_path
):
    running, store = store_server
    folder, want = photos
    target = f"127.0.0.1:{running.port}"
    ing = run_edge(
        "ingest",
        "--bundle",
        str(colour_bundle),
        "--server",
        target,
        "--data",
        str(folder),
        "--spool",
        str(tmp_path / "spool.db"),
        "--device-id",
        "phone-1",
        "--batch-size",
        "4",
        "--no-progress",
    )
    assert ing.returncode == 0, ing.stderr
    assert "acknowledged      20" in ing.stdout
    with sqlite3.connect(store) as db:  # the store keeps each item's name beside its id
        names = dict(db.execute("SELECT item_id, name FROM ingested_items WHERE device_id = 'phone-1'"))
    assert sorted(names.values()) == sorted(want)
    out = tmp_path / "fetched"
    fetched = run_edge("fetch", "--server", target, "--device-id", "phone-1", "--out", str(out))
    assert fetched.returncode == 0, fetched.stderr
    assert sorted(p.name for p in out.glob("*.png")) == sorted(Path(n).stem + ".png" for n in want)
    codec = Codec.open(colour_bundle)
    told = []
    for name, x in want.items():
        got = np.moveaxis(np.asarray(Image.open(out / (Path(name).stem + ".png"))), -1, 0)
        told.append(check_like(got, x, name) and tagged(name))
        np.testing.assert_array_equal(got, codec.decode(codec.encode(x[None]))[0])  # what the device encoded
    assert sum(told) >= 5
    assert_one_line_error(
        run_edge("fetch", "--server", target, "--device-id", "phone-1", "--out", str(out)),
        "exists",
        "--force",
    )
    # The Python client returns the names too.
    from edge.client import CloudClient

    with CloudClient(target) as client:
        items = client.fetch(device_id="phone-1", codes_only=True)
    assert sorted(f.name for f in items) == sorted(want)

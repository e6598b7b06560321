"""The real edge CLI in a subprocess against a real server: report, no torch, one-line errors."""

from __future__ import annotations

import json
import shutil
import socket

import numpy as np
import pytest

from tests.helpers import fashion_test_items
from tests.helpers.edge_cli import assert_one_line_error, run_edge


# Runs edge.cli.main and then checks torch never got imported (the device has no torch).
def test_evaluate_reports_bytes_ratio_and_quality(server, fashion_bundle, tmp_path):
    out = tmp_path / "report.json"
    proc = run_edge(
        "evaluate",
        "--bundle",
        str(fashion_bundle),
        "--server",
        f"127.0.0.1:{server.port}",
        "--limit",
        "1000",
        "--batch-size",
        "300",
        "--no-progress",
        "--json",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out.read_text())
    assert r["items"] == 1000 and r["raw_bytes"] == 1000 * 784 and r["payload_bytes"] == 1000 * 32
    assert r["ratio_payload"] == pytest.approx(24.5)
    # Wire bytes: serialised requests, slightly more than the payloads (framing), well under raw.
    assert 1000 * 32 < r["wire_bytes"] < 1000 * 33
    assert r["ratio_wire"] == pytest.approx(784_000 / r["wire_bytes"])
    assert 12 < r["psnr"] < 40 and r["mse"] == pytest.approx(10 ** (-r["psnr"] / 10), rel=1e-9)
    for label in ("ratio raw/payload", "ratio raw/wire", "PSNR (server)", "wire bytes"):
        assert label in proc.stdout


def test_keep_reconstructions(server, fashion_bundle, tmp_path):
    out = tmp_path / "rec.npy"
    proc = run_edge(
        "evaluate",
        "--bundle",
        str(fashion_bundle),
        "--server",
        f"127.0.0.1:{server.port}",
        "--limit",
        "20",
        "--no-progress",
        "--keep-reconstructions",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    rec = np.load(out)
    assert rec.shape == (20, 1, 28, 28) and rec.dtype == np.uint8
    x = fashion_test_items(20).astype(float)
    assert np.abs(rec - x).mean() < np.abs(x - x.mean()).mean()  # closer than a flat grey image


def test_missing_bundle(tmp_path):
    proc = run_edge("evaluate", "--bundle", str(tmp_path / "nope"), "--server", "127.0.0.1:1")
    assert_one_line_error(proc, "bundle not found", "nope")


def test_corrupt_bundle(fashion_bundle, tmp_path):
    b = tmp_path / "b"
    shutil.copytree(fashion_bundle, b)
    (b / "encoder.onnx").write_bytes(b"\x00garbage")
    assert_one_line_error(
        run_edge("evaluate", "--bundle", str(b), "--server", "127.0.0.1:1"), "content hash mismatch"
    )


def test_wrong_shape_inputs(server, fashion_bundle, tmp_path):
    np.save(tmp_path / "big.npy", np.zeros((3, 32, 32), np.uint8))
    proc = run_edge(
        "evaluate",
        "--bundle",
        str(fashion_bundle),
        "--server",
        f"127.0.0.1:{server.port}",
        "--data",
        str(tmp_path / "big.npy"),
    )
    assert_one_line_error(proc, "1x32x32", "expects 1x28x28")


@pytest.mark.slow
def test_unreachable_server(fashion_bundle):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = run_edge(
        "evaluate",
        "--bundle",
        str(fashion_bundle),
        "--server",
        f"127.0.0.1:{port}",
        "--connect-timeout",
        "2",
        "--limit",
        "10",
    )
    assert_one_line_error(proc, "cannot reach the cloud", f"127.0.0.1:{port}")


@pytest.mark.slow
def test_bundle_not_held_by_server(server, tmp_path):
    from tests.helpers import train_and_export

    other = train_and_export(
        tmp_path, "dense", {"code_dim": 4}, data="digits", epochs=1, limit=200, test_limit=50, fit_items=200
    )
    proc = run_edge(
        "evaluate",
        "--bundle",
        str(other),
        "--server",
        f"127.0.0.1:{server.port}",
        "--data",
        "digits",
        "--limit",
        "10",
    )
    assert_one_line_error(proc, "does not hold bundle")


@pytest.mark.slow
def test_encode_and_decode_files_offline_without_torch(digits_bundle, tmp_path):
    """`edge.cli encode` / `decode`: a code file and back, no server, no torch; the same items the codec gives."""
    from latent_codec import datasets
    from latent_codec.codec import Codec

    codes = tmp_path / "digits.aec"
    enc = run_edge(
        "encode", "--bundle", str(digits_bundle), "--data", "digits", "--limit", "25", "--out", str(codes)
    )
    assert enc.returncode == 0, enc.stderr
    assert "25 items" in enc.stderr and codes.stat().st_size < 25 * 64  # smaller than the raw uint8 items
    out = tmp_path / "restored.npy"
    dec = run_edge("decode", "--bundle", str(digits_bundle), "--codes", str(codes), "--out", str(out))
    assert dec.returncode == 0, dec.stderr
    x = datasets.load("digits", "test").x[:25]
    codec = Codec.open(digits_bundle)
    np.testing.assert_array_equal(np.load(out), codec.decode(codec.encode(x)))
    pngs = tmp_path / "pngs"
    assert (
        run_edge(
            "decode", "--bundle", str(digits_bundle), "--codes", str(codes), "--out", str(pngs)
        ).returncode
        == 0
    )
    assert len(list(pngs.glob("*.png"))) == 25
    # A file that is not a code file, and a code file of another bundle, are one-line errors.
    junk = tmp_path / "junk.aec"
    junk.write_bytes(b"not codes")
    assert_one_line_error(
        run_edge("decode", "--bundle", str(digits_bundle), "--codes", str(junk), "--out", str(out)),
        "not a code file",
    )
    other = tmp_path / "other.aec"
    other.write_bytes(codes.read_bytes().replace(codec.bundle_id.encode(), b"dense-000000000000"))
    assert_one_line_error(
        run_edge("decode", "--bundle", str(digits_bundle), "--codes", str(other), "--out", str(out)),
        "written with bundle dense-000000000000",
    )


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels but holds almost nothing (what a decompression bomb looks like)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_hostile_input_files_are_one_line_errors(digits_bundle, tmp_path):
    """A decompression bomb, a .npy whose header declares a huge shape, an IDX whose dimensions overflow: exit 2,
    one line naming the file and the problem, no traceback and no attempt to allocate what the header claims."""
    import struct

    bomb = tmp_path / "bomb"
    bomb.mkdir()
    (bomb / "big.png").write_bytes(_png_header_only(30000, 30000))
    npy = tmp_path / "huge.npy"
    with open(npy, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "|u1", "fortran_order": False, "shape": (10**12, 8, 8)}
        )
        f.write(b"\x00" * 64)
    idx = tmp_path / "huge-images-idx3-ubyte"
    idx.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 2**32 - 1) + b"\x00" * 16)
    cases = [
        (bomb, "decompression bomb"),
        (npy, "header declares shape (1000000000000, 8, 8)"),
        (idx, "IDX header"),
    ]
    for path, needle in cases:
        proc = run_edge(
            "encode", "--bundle", str(digits_bundle), "--data", str(path), "--out", str(tmp_path / "o")
        )
        assert_one_line_error(proc, needle, str(path))
    # The IDX size is reported as the positive number it is, not a wrapped-around negative one.
    proc = run_edge(
        "encode", "--bundle", str(digits_bundle), "--data", str(idx), "--out", str(tmp_path / "o")
    )
    assert "-" not in proc.stderr.split("bytes")[0].split("(")[-1]

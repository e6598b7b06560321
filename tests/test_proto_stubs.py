"""The committed gRPC stubs are exactly what `make proto` generates from proto/ (not stale, none left over)."""

from __future__ import annotations

from tools.gen_proto import ROOT, generate


def test_stubs_are_fresh(tmp_path):
    files = generate(tmp_path)
    assert any(f.name == "codec_pb2.py" for f in files)
    stale = [str(f) for f in files if (tmp_path / f).read_bytes() != (ROOT / f).read_bytes()]
    assert not stale, f"stale generated stubs (run `make proto`): {stale}"
    committed = {
        p.relative_to(ROOT)
        for p in (ROOT / "latent_codec" / "wire").rglob("*_pb2*.py*")
        if "__pycache__" not in p.parts  # bytecode the interpreter writes is not a stub
    }
    leftover = sorted(str(p) for p in committed - set(files))
    assert not leftover, f"generated stubs without a .proto (delete them): {leftover}"

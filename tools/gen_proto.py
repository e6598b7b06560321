"""Generate the Python gRPC stubs from proto/ into latent_codec/wire/.

The single command behind `make proto`; tests/test_proto_stubs.py runs it into
a temporary directory and fails when the committed stubs differ (stale).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto"
# The .proto files are mapped under this virtual path so the generated modules
# import each other as `latent_codec.wire.aecodec.v2...`, no sys.path tricks.
VIRTUAL_PREFIX = "latent_codec/wire"


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.rglob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Run protoc into out_dir; return the generated files (relative paths)."""
    import grpc_tools
    from grpc_tools import protoc  # build-time only dependency

    include = Path(grpc_tools.__file__).parent / "_proto"
    out_dir.mkdir(parents=True, exist_ok=True)
    rel = [f"{VIRTUAL_PREFIX}/{p.relative_to(PROTO_DIR).as_posix()}" for p in proto_files()]
    args = [
        "protoc",
        f"-I{VIRTUAL_PREFIX}={PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *rel,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed: " + " ".join(args))
    generated = []
    for r in rel:
        pkg = (out_dir / r).parent
        # Every generated directory is a regular package.
        d = pkg
        while d != out_dir / VIRTUAL_PREFIX:
            init = d / "__init__.py"
            if not init.exists():
                init.write_text("")
            generated.append(init.relative_to(out_dir))
            d = d.parent
        stem = Path(r).stem
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            generated.append((pkg / f"{stem}{suffix}").relative_to(out_dir))
    return sorted(set(generated))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=ROOT, help="output root (default: the repository)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for f in generate(args.out):
        print(f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Helper process for tests/test_rd.py's cross-process bit-exactness test (not a test module).

    python tests/rd_xproc_worker.py encode BUNDLE ITEMS.npy OUT.npz THREADS
    python tests/rd_xproc_worker.py decode BUNDLE PAYLOADS.npz OUT.npz THREADS

encode: items -> payloads with the edge encoder (ONNX Runtime, THREADS intra-op
threads), plus the symbols the packer entropy-coded. decode: payloads ->
symbols and dequantised codes with the shared package, as the cloud does.
The parent runs each step in a fresh interpreter with different thread
settings (OMP_NUM_THREADS too) and compares the outputs byte for byte.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["encode", "decode"])
    p.add_argument("bundle", type=Path)
    p.add_argument("inp", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("threads", type=int)
    return p.parse_args(argv)


def _blob(payloads: list[bytes]) -> dict[str, np.ndarray]:
    return {
        "data": np.frombuffer(b"".join(payloads), dtype=np.uint8),
        "sizes": np.array([len(p) for p in payloads], dtype=np.int64),
    }


def _payloads(npz) -> list[bytes]:
    data, sizes = npz["data"].tobytes(), npz["sizes"]
    ends = np.cumsum(sizes)
    return [data[e - s : e] for s, e in zip(sizes, ends)]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from latent_codec.codec import Codec

    codec = Codec.open(args.bundle, threads=args.threads)
    if args.mode == "encode":
        items = np.load(args.inp)
        payloads = codec.encode(items)
        code, _ = codec.analyse(codec.scale(items))
        np.savez(args.out, symbols=codec.quantise(code), code=code, **_blob(payloads))
    else:
        payloads = _payloads(np.load(args.inp))
        symbols, side = codec.symbols(payloads)
        codes = codec.dequantise(symbols)
        again = codec.quantise(codes)  # bin centres re-quantise to the same symbols and bytes
        repacked = codec.pack(again, side, codec.entropy_encode(again))
        np.savez(args.out, symbols=symbols, codes=codes, **_blob(repacked))
    return 0


if __name__ == "__main__":
    sys.exit(main())

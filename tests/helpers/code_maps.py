"""What the code-map family tests (spatial, mean-and-scale, checkerboard) share: a small bundle of each family
trained briefly, the encoder's floats nudged one ulp, and the cross-process check: another interpreter (one ORT,
OpenMP and BLAS thread, a bare environment) opens the same bundle and reads the same payloads."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from tests.helpers import ROOT, need_fashion, spatial_bundle

SMALL_MAP = {"channels": 16, "code_channels": 8, "hyper_channels": 8}
ONE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "PATH": "/usr/bin:/bin",
}


def small_map_bundle(tmp_path_factory, name: str, entropy: str) -> Path:
    """A small Fashion-MNIST code-map bundle (SMALL_MAP) with this entropy model, in a new folder `name`."""
    need_fashion()
    return spatial_bundle(tmp_path_factory.mktemp(name), {**SMALL_MAP, "entropy": entropy})


@contextmanager
def floats_nudged_one_ulp(codec, target: np.float32) -> Iterator[None]:
    """Within: the codec's analysis transform returns each of its float outputs one ulp toward `target`."""
    analysis = codec.transforms.analysis

    def nudged(x_unit):
        code, side = analysis(x_unit)
        return np.nextafter(code, target), {k: np.nextafter(v, target) for k, v in side.items()}

    codec.transforms.analysis = nudged
    try:
        yield
    finally:
        codec.transforms.analysis = analysis


def in_another_process(
    bundle: Path, payloads: list[bytes], body: str, tmp_path: Path, timeout: float = 120
) -> list[str]:
    """Run ``body`` in a fresh interpreter where ``p`` holds the payloads, ``c`` is ``Codec.open(bundle,
    threads=1)`` and ``hashlib`` is imported; returns the words it printed (a failing script raises)."""
    (tmp_path / "p.json").write_text(json.dumps([q.hex() for q in payloads]))
    script = (
        "import json,hashlib; from latent_codec.codec import Codec;"
        f"p=[bytes.fromhex(h) for h in json.load(open({str(tmp_path / 'p.json')!r}))];"
        f"c=Codec.open({str(bundle)!r}, threads=1);" + body
    )
    out = subprocess.check_output(
        [sys.executable, "-c", script], cwd=ROOT, env=ONE_THREAD_ENV, text=True, timeout=timeout
    )
    return out.split()

"""cloud/allocator.py: with glibc's thresholds raised, arrays of a request's size reuse pages instead of faulting in
fresh ones (each a page mapped in and zeroed); an operator's own MALLOC_* settings are left alone.

Each case runs in a child process: mallopt changes the whole process, and a fresh one has no history.
"""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT, child_env

CHILD = """
import sys
from pathlib import Path
import numpy as np
from cloud.allocator import tune_malloc

def faults():
    return int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[7])

applied = tune_malloc() if sys.argv[1] == "tune" else False
for _ in range(3):
    np.ones(200_000, np.float32) + 1  # 800 KiB: a 256-item 28x28 reconstruction, and a temporary of its size
before = faults()
for _ in range(100):
    np.ones(200_000, np.float32) + 1
print(applied, faults() - before)
"""


def run(mode: str, **env: str) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        cwd=ROOT,
        env={**child_env(), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout.split()
    return out[0] == "True", int(out[1])


def test_tuned_malloc_reuses_pages_that_glibc_would_give_back():
    applied, tuned = run("tune")
    _, untuned = run("plain")
    assert applied
    # Untuned, each 800 KiB block is a fresh mapping: about 2 x 196 faults per round.
    assert untuned > 100 * 200, untuned
    assert tuned < untuned / 20, (tuned, untuned)


def test_an_operators_malloc_variables_are_kept():
    applied, faults = run("tune", MALLOC_ARENA_MAX="2")
    assert not applied
    assert faults > 100 * 200, faults  # nothing was changed: glibc's default behaviour

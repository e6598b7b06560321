"""Big items in bounded memory: a fully convolutional graph run tile by tile, with enough overlap.

An output element of a convolutional graph depends only on the inputs within its receptive field. Run on a
tile that extends ``margin`` inputs beyond the block of outputs kept (the tile's *core*), every kept output
sees exactly the inputs it sees in the whole item, so the stitched result equals the whole-item result up to
the float rounding of a different tensor size (ONNX Runtime may pick other kernels): a few ulps, which can
flip a code element's rounding at an exact half in rare cases and otherwise changes nothing.

The receptive field is *measured* on the graph itself (``probe_radius``: change one input element of a
random probe and see how far the outputs move), not assumed from one architecture; a graph whose outputs
move to the probe's edge (a global operation) is not tiled. Cores are aligned to the graph's total stride so
every tile computes the same output phases as the whole item.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np


def probe_radius(
    run: Callable[[np.ndarray], Sequence[np.ndarray]],
    in_shape: tuple[int, int, int],
    strides: Sequence[float],
) -> int | None:
    """The receptive field's radius, in input elements, of a graph with outputs at the given strides.

    ``run`` maps one (1, C, S, S) input to outputs of (1, *, S/stride, S/stride) (a stride below 1: an
    upsampling graph). The radius r is the largest distance from the changed input element to the input
    elements under any output that changed, over two random probes; None when a change reaches the probe's
    border (no finite radius fits).
    """
    c, s, _ = in_shape
    rng = np.random.default_rng(20261207)
    p = s // 2
    radius = 0
    for _ in range(2):
        x = rng.random((1, c, s, s), dtype=np.float32)
        x2 = x.copy()
        x2[0, :, p, p] = 1.0 - x2[0, :, p, p] + 0.25
        for a, b, st in zip(run(x), run(x2), strides):
            changed = np.argwhere(np.any(np.asarray(a) != np.asarray(b), axis=(0, 1)))
            if not len(changed):
                continue
            n = np.asarray(a).shape[-1]
            if changed.min() == 0 or changed.max() == n - 1:
                return None
            lo = np.floor(changed.min(axis=0) * st)
            hi = np.ceil((changed.max(axis=0) + 1) * st) - 1
            radius = max(radius, int(np.max(p - lo)), int(np.max(hi - p)))
    return radius


@dataclass(frozen=True)
class Tile:
    """One tile: the input window read ([r0, r1) x [c0, c1)) and the core kept ([kr0, kr1) x [kc0, kc1))."""

    r0: int
    r1: int
    c0: int
    c1: int
    kr0: int
    kr1: int
    kc0: int
    kc1: int


def tiles(height: int, width: int, core: int, margin: int, align: int) -> list[Tile]:
    """Cover a height x width input with cores of core x core (the last ones shorter), each read with
    ``margin`` more on every side that lies inside the input; core, margin multiples of ``align``."""
    if core % align or margin % align:
        raise ValueError("tile core and margin must be multiples of the graph's stride")
    out = []
    for kr0 in range(0, height, core):
        kr1 = min(height, kr0 + core)
        for kc0 in range(0, width, core):
            kc1 = min(width, kc0 + core)
            out.append(
                Tile(
                    max(0, kr0 - margin),
                    min(height, kr1 + margin),
                    max(0, kc0 - margin),
                    min(width, kc1 + margin),
                    kr0,
                    kr1,
                    kc0,
                    kc1,
                )
            )
    return out


def scaled(t: Tile, stride: int, height: int, width: int) -> Tile:
    """The same tile on a map ``stride`` times coarser (height x width elements): windows and cores in its
    elements; a core's last element is the one covering the core's last input (ceil at the map's end)."""

    def lo(v: int) -> int:
        return v // stride

    def hi(v: int, n: int) -> int:
        return min(n, -(-v // stride))

    return Tile(
        lo(t.r0),
        hi(t.r1, height),
        lo(t.c0),
        hi(t.c1, width),
        lo(t.kr0),
        hi(t.kr1, height),
        lo(t.kc0),
        hi(t.kc1, width),
    )


def core_of(t: Tile) -> tuple[slice, slice]:
    """The core's window within the tile's own output (local indices)."""
    return slice(t.kr0 - t.r0, t.kr1 - t.r0), slice(t.kc0 - t.c0, t.kc1 - t.c0)


def cover(t: Tile) -> tuple[slice, slice]:
    """The core in the whole map's indices."""
    return slice(t.kr0, t.kr1), slice(t.kc0, t.kc1)


def windows(t: Tile) -> tuple[slice, slice]:
    """The window read, in the whole map's indices."""
    return slice(t.r0, t.r1), slice(t.c0, t.c1)


def round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def each(ts: list[Tile], progress: Callable[[str, int, int], None] | None, step: str) -> Iterator[Tile]:
    """The tiles, reporting (step, done, total) after each one."""
    for i, t in enumerate(ts):
        yield t
        if progress is not None:
            progress(step, i + 1, len(ts))

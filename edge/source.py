"""Where the edge's items come from: open the bundle's codec, load the data in its colour mode, cut to the limit,
check every size against the codec. One helper for encode, evaluate, ingest and the ingest benchmark.

    codec, items = open_source("bundles/photo", "photos/", grey=False, alpha=None)
    payloads = encode_items(codec, items, range(len(items)))   # one payload per item, any mix of sizes

A grey bundle given colour photographs refuses them, naming the flag that converts (``--grey``, Python
``grey=True``): converting silently would lose the colour without a word. Photographs keep their file names
(``items.names``), which travel in code files and ingested items.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from latent_codec import datasets
from latent_codec.codec import Codec
from latent_codec.datasets import Items
from latent_codec.errors import DataError


def codec_mode(codec: Codec) -> str:
    """The image mode a codec's items are in: "L" for 1 channel, "RGB" for 3."""
    return "L" if int(codec.input.shape[0]) == 1 else "RGB"


def load_for(
    codec: Codec,
    data: str | Path | None,
    split: str = "test",
    limit: int = 0,
    grey: bool = False,
    alpha: str | None = None,
) -> Items:
    """The items of ``data`` as ``codec`` takes them (its colour mode), the first ``limit``, each size checked."""
    items = datasets.load_items(data, split, mode=codec_mode(codec), grey=grey, alpha=alpha).head(limit)
    check_sizes(codec, items)
    return items


def open_source(
    bundle: str | Path,
    data: str | Path | None,
    split: str = "test",
    limit: int = 0,
    threads: int = 0,
    need: tuple[str, ...] = ("encoder",),
    grey: bool = False,
    alpha: str | None = None,
    rounding: float | None = None,
) -> tuple[Codec, Items]:
    """The bundle's codec and the items it will encode (see ``load_for``); ``threads`` as ``Codec.open_split``
    takes them (a code-map bundle runs a photo's tiles and strips on that many threads)."""
    codec = Codec.open_split(bundle, need=need, threads=threads)
    set_rounding(codec, rounding)
    return codec, load_for(codec, data, split, limit, grey, alpha)


def set_rounding(codec: Codec, kappa: float | None) -> None:
    """``--rounding``: the encoder's rate-aware rounding strength (None keeps the codec's default). Families
    that code symbols without a per-element choice of tables have none: a non-zero value for them is refused."""
    if kappa is None:
        return
    if not math.isfinite(kappa) or kappa < 0:
        raise DataError(f"--rounding must be a finite number >= 0, not {kappa}")
    if hasattr(codec, "rounding"):
        codec.rounding = float(kappa)
    elif kappa != 0:
        raise DataError(
            f"--rounding: bundle {codec.bundle_id} ({codec.format}) has no rate-aware rounding; it applies to "
            "mean-and-scale and checkerboard code maps"
        )


def check_sizes(codec: Codec, items: Items) -> None:
    """Refuse items the codec does not take (one check per distinct size, before any work); nothing to check
    in an empty source."""
    for shape in dict.fromkeys(items.shapes):
        codec.check_items(np.zeros((1, *shape), items.dtype))


def encode_items(codec: Codec, items: Items, idx: Iterable[int], batch: int = 256) -> list[bytes]:
    """Payloads of items idx, in that order, encoded in groups of one size of at most ``batch`` items."""
    order = list(idx)
    out: list[bytes] = [b""] * len(order)
    where = {i: k for k, i in enumerate(order)}
    for group in items.by_size(order, batch):
        for i, p in zip(group, codec.encode(items.take(group))):
            out[where[i]] = p
    return out

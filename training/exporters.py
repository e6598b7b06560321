"""Which exporter writes a model's bundle: one per codec family, keyed by the family kind the model declares.

A model class names its family (``codec_family = "flat"`` on training/models/base.py's Autoencoder,
``"map"`` on the spatial model); an exporter registers for that kind (training/export_flat.py,
training/export_map.py) and turns an ``ExportJob`` into a sealed bundle. training/export.py's CLI asks this
registry and never tests what kind of model it holds; a new family adds one exporter module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latent_codec.bundle import Manifest
from latent_codec.errors import CodecError


@dataclass
class ExportJob:
    """Everything an exporter needs: the loaded checkpoint and the export flags."""

    model: Any  # training.models.base.Autoencoder (weights already rounded for float16 exports)
    cfg: dict
    record: dict
    checkpoint: Path
    out: Path
    data: str
    quant: str = "affine8"
    entropy: bool = False
    fit_items: int = 10000
    clip_quantile: float = 0.0
    test_limit: int = 0
    force: bool = False
    weights: str = "float32"
    binary_code: bool = False  # flat codes: record semantic-hashing thresholds (training/export_flat.py)


Exporter = Callable[[ExportJob], Manifest]
_EXPORTERS: dict[str, Exporter] = {}


def register_exporter(kind: str) -> Callable[[Exporter], Exporter]:
    def add(fn: Exporter) -> Exporter:
        _EXPORTERS[kind] = fn
        return fn

    return add


def exporter_for(model: Any) -> Exporter:
    kind = getattr(model, "codec_family", "flat")
    try:
        return _EXPORTERS[kind]
    except KeyError:
        raise CodecError(
            f"model {type(model).__name__} belongs to codec family {kind!r}, which has no exporter "
            f"(known: {', '.join(sorted(_EXPORTERS))})"
        ) from None

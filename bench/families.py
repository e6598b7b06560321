"""One rule for naming a bundle's curve in the benchmarks (bench/rd.py, bench/photo_rd.py, bench/rd_rounding.py).

Bundles of one model whose payloads differ in kind are separate curves, since which one wins where is a finding:
the entropy model (a factorised prior, a checkerboard context; the hyperprior families are the plain name) and,
for code maps, the depth (a stride other than the default 4: "-s8" for a map at 1/8 of the item's side).
"""

from __future__ import annotations

DEFAULT_STRIDE = 4


def family_name(model: str, payload_format: str, stride: int | None = None) -> str:
    """'aecodec spatial', 'aecodec spatial-checkerboard', 'aecodec spatial-s8', 'aecodec spatial-factorized', ..."""
    name = f"aecodec {model}"
    if stride is not None and payload_format.startswith("map") and int(stride) != DEFAULT_STRIDE:
        name += f"-s{int(stride)}"
    if payload_format == "map+factorized":
        name += "-factorized"
    elif "checkerboard" in payload_format:
        name += "-checkerboard"
    return name


def bundle_family(manifest) -> str:
    """family_name of a bundle's manifest (latent_codec.bundle.Manifest)."""
    payload = manifest.payload
    return family_name(
        str(manifest.model.get("name", "model")), str(payload.format), getattr(payload, "stride", None)
    )

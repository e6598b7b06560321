"""The codec families this build knows, each one module registered with latent_codec/registry.py.

- flat.py: a fixed-length code vector per item (affine / float codes, optional ANS, side fields);
- code_map.py: code maps of items of any size (factorised prior or scale hyperprior), with
  hyper_decoder.py's integer table selection;
- mean_scale.py: code maps under a mean-and-scale hyperprior (residuals around integer-predicted means);
- checkerboard.py: mean-and-scale plus a checkerboard context (anchors first, then the rest from them).

Importing the package registers them (latent_codec/__init__.py does, so ``Codec.open`` finds them).
"""

from .checkerboard import CheckerboardCodec, CheckerboardPayload
from .code_map import MapCodec, MapPayload
from .flat import FlatCodec, FlatPayload, SideField
from .mean_scale import MeanScaleCodec, MeanScalePayload

__all__ = [
    "CheckerboardCodec",
    "CheckerboardPayload",
    "FlatCodec",
    "FlatPayload",
    "MapCodec",
    "MapPayload",
    "MeanScaleCodec",
    "MeanScalePayload",
    "SideField",
]

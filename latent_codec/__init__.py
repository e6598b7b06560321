"""The torch-free core shared by the edge client and the decoding cloud.

Everything both sides must agree on lives here exactly once: the generated
gRPC stubs (``wire``), the bundle manifest and its loader, code quantisation,
entropy coding, payload packing, array <-> wire conversion, quality metrics
and the data loaders. Importing this package must never import torch.

Importing it registers the built-in codec families (latent_codec/families/), so ``Codec.open`` can build
the codec of any bundle whatever module a caller imported first.
"""

from . import families  # noqa: E402,F401  (registers the built-in codec families)

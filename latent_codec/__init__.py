"""The torch-free core shared by the edge client and the decoding cloud.

Everything both sides must agree on lives here exactly once: the generated
gRPC stubs (``wire``), the bundle manifest and its loader, code quantisation,
entropy coding, payload packing, array <-> wire conversion, quality metrics
and the data loaders. Importing this package must never import torch.
"""

"""Importing this package registers every model with training.registry."""
from . import conv, dense, linear  # noqa: F401
from . import linres  # noqa: F401  (rate-distortion: PCA-initialised linear path + MLP)
from . import vq  # noqa: F401  (one-hot code: entropy-constrained vector quantisation)

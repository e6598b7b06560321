"""Importing this package registers every model with training.registry."""

from . import (  # noqa: F401
    conv,
    dense,
    linear,
    linres,  # noqa: F401  (rate-distortion: PCA-initialised linear path + MLP)
    spatial,  # noqa: F401  (spatial code maps: any item size, factorised prior or hyperprior)
    vq,  # noqa: F401  (one-hot code: entropy-constrained vector quantisation)
)

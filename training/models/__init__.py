"""Importing this package registers every model with training.registry."""
from . import conv, dense, linear  # noqa: F401

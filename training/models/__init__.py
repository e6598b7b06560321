"""Importing this package registers every model with training.registry."""
from . import conv, dense  # noqa: F401

"""Training and export (PyTorch). Only this package imports torch."""

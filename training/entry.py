"""Console entry points of the training tools (``aecodec-train``, ``aecodec-export``), torch-free until torch exists.

``pip install .`` installs every console script, but only ``pip install '.[train]'`` installs torch; without
it these print which extra to install instead of a traceback from deep inside an import.
"""

from __future__ import annotations

import importlib.util
import sys

MISSING = "{prog} needs the training tools' packages (torch, onnx, ...): pip install 'aecodec[train]'"


def _need_torch(prog: str) -> bool:
    for module in ("torch", "onnx", "onnxscript"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # a finder that refuses it outright
            found = False
        if not found:
            print(f"error: {MISSING.format(prog=prog)} ({module} is not installed)", file=sys.stderr)
            return False
    return True


def train(argv: list[str] | None = None) -> int:
    if not _need_torch("aecodec-train"):
        return 2
    from training.train import main

    return main(argv)


def export(argv: list[str] | None = None) -> int:
    if not _need_torch("aecodec-export"):
        return 2
    from training.export import main

    return main(argv)

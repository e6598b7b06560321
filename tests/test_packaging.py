"""What `pip install .` promises: console scripts that exist, training tools that say what to install without torch."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib

from tests.helpers import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

BLOCK_TORCH = """
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("torch", "onnx", "onnxscript"):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, NoTorch())
from training.entry import {fn}
sys.exit({fn}(["--help"]))
"""


def test_every_console_script_points_at_a_callable():
    for name, target in PYPROJECT["project"]["scripts"].items():
        module, fn = target.split(":")
        assert callable(getattr(importlib.import_module(module), fn)), name


def test_training_scripts_without_torch_name_the_extra_to_install():
    for fn in ("train", "export"):
        r = subprocess.run(
            [sys.executable, "-c", BLOCK_TORCH.replace("{fn}", fn)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        assert r.returncode == 2, r.stderr
        assert "pip install 'aecodec[train]'" in r.stderr and "Traceback" not in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_training_scripts_with_torch_run_the_tool():
    r = subprocess.run(
        [sys.executable, "-c", "from training.entry import export; export(['--help'])"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 0 and "--checkpoint" in r.stdout


def test_the_python_range_is_stated_where_users_read_it():
    spec = PYPROJECT["project"]["requires-python"]
    assert spec == ">=3.11,<3.12"
    assert "Python 3.11" in (ROOT / "README.md").read_text()

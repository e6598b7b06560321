"""Dockerfiles read as instructions (the deployment and image tests check what they install)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def pip_files(path: Path) -> list[str]:
    files = []
    for op, rest in instructions(path):
        if op == "RUN" and "pip install" in rest:
            words = shlex.split(rest.split("pip install", 1)[1])
            files += [words[i + 1] for i, w in enumerate(words) if w in ("-r", "--requirement")]
    return files

"""docs/architecture.md stays true: every file it names exists, and its list of the files one image crosses is
what the code really calls.

The per-item list is checked against a trace, not a cap: ``edge.cli evaluate`` runs in this process against a
real server (with a token and metrics, so every interceptor is on the path) with every thread profiled, twice,
on 10 and on 40 items in requests of 5. A project file whose functions are called more often for more items is
on the per-item path; one called as often either way is set-up. The doc's numbered list must be exactly the
per-item files, and its set-up paragraph must name every set-up file the run (and the server's start) called.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
import threading
from collections import Counter
from pathlib import Path

import pytest

from tests.helpers import ROOT, tiny_bundle

DOC = ROOT / "docs" / "architecture.md"
PATH = re.compile(
    r"`?((?:latent_codec|edge|cloud|training|proto|deploy|tests|tools|bench)/[\w/.{},-]+\.(?:py|proto|yaml))"
)
TOKEN = "architecture-doc-token"


def _expand(name: str) -> list[str]:
    """edge/commands/{evaluate,ingest}.py -> both paths."""
    m = re.search(r"\{([^}]*)\}", name)
    if not m:
        return [name]
    return [name[: m.start()] + part + name[m.end() :] for part in m.group(1).split(",")]


def _section(marker: str) -> str:
    return DOC.read_text().split(f"<!-- {marker}", 1)[1].split("-->", 1)[1].split("<!-- end", 1)[0]


def doc_path() -> list[str]:
    return re.findall(r"^\d+\. `([^`]+)`", _section("path:"), flags=re.M)


def doc_setup() -> set[str]:
    section = _section("setup:")
    return {p for raw in PATH.findall(section) for p in _expand(raw)}


def test_every_file_the_architecture_doc_names_exists():
    text = DOC.read_text()
    named = {p for raw in PATH.findall(text) for p in _expand(raw)}
    assert len(named) > 20  # the doc names the files of every step
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


class _Calls:
    """Calls of project functions per source file, in every thread (generated stubs and libraries left out)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.root = str(ROOT) + os.sep

    def __call__(self, frame, event, arg) -> None:
        if event == "call" and frame.f_code.co_flags & inspect.CO_OPTIMIZED:
            f = frame.f_code.co_filename
            if f.startswith(self.root) and "/.venv/" not in f and "/wire/" not in f and "/tests/" not in f:
                self.counts[f[len(self.root) :]] += 1

    def __enter__(self) -> Counter[str]:
        self.counts.clear()
        threading.setprofile(self)
        sys.setprofile(self)
        return self.counts

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(None)
        threading.setprofile(None)


@pytest.fixture(scope="module")
def traced(tmp_path_factory) -> tuple[Counter[str], dict[int, Counter[str]]]:
    from cloud.server import build_server
    from cloud.tenancy import ALL, Principal
    from edge.cli import main

    bundle = tiny_bundle(tmp_path_factory)
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text(TOKEN + "\n")
    calls = _Calls()
    with calls as build:
        running = build_server(
            bundle.parent,
            "127.0.0.1:0",
            workers=2,
            metrics_address="127.0.0.1:0",
            auth_tokens={TOKEN: Principal("doc", frozenset({ALL}))},
        )
    build = Counter(build)
    runs = {}
    try:
        for n in (10, 40):
            with calls as counts:
                rc = main(
                    [
                        "evaluate",
                        "--bundle",
                        str(bundle),
                        "--server",
                        f"127.0.0.1:{running.port}",
                        "--data",
                        "digits",
                        "--limit",
                        str(n),
                        "--batch-size",
                        "5",
                        "--auth-token-file",
                        str(token_file),
                    ]
                )
            assert rc == 0
            runs[n] = Counter(counts)
    finally:
        running.stop(grace=1.0)
    return build, runs


def test_the_per_item_list_is_exactly_the_files_called_more_for_more_items(traced):
    _, runs = traced
    per_item = {f for f in runs[40] if runs[40][f] > runs[10].get(f, 0)}
    listed = doc_path()
    assert len(listed) == len(set(listed))
    assert set(listed) == per_item, (
        f"on the path but not listed: {sorted(per_item - set(listed))}; "
        f"listed but not called per item: {sorted(set(listed) - per_item)}"
    )


def test_the_setup_paragraph_names_every_file_called_once_and_nothing_else(traced):
    build, runs = traced
    per_item = {f for f in runs[40] if runs[40][f] > runs[10].get(f, 0)}
    setup = (set(build) | set(runs[10]) | set(runs[40])) - per_item
    named = doc_setup()
    assert setup <= named, f"set-up files the run called that the doc does not name: {sorted(setup - named)}"
    assert named <= setup | per_item, f"named as set-up but never called: {sorted(named - setup - per_item)}"


def test_the_trace_can_tell_a_per_item_file_from_a_setup_file():
    """The classifier above on a toy: a function called once per item grows, one called once does not."""
    calls = _Calls()

    def run(n: int) -> Counter[str]:
        from latent_codec import metrics

        with calls as counts:
            metrics.psnr_from_mse(0.1)  # once
            for _ in range(n):
                Path(DOC).exists()  # a library: not counted
                _expand("a/b.py")  # this test file: not counted (tests/ are left out)
                metrics.per_item_mse(__import__("numpy").zeros((1, 1)), __import__("numpy").zeros((1, 1)))
        return Counter(counts)

    a, b = run(2), run(5)
    assert b["latent_codec/metrics.py"] > a["latent_codec/metrics.py"] > 0
    assert not any(k.startswith("tests/") for k in b)

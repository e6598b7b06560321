"""docs/architecture.md stays true: every file it names exists, and one image's path has at most 8 files."""

from __future__ import annotations

import re

from tests.helpers import ROOT

DOC = ROOT / "docs" / "architecture.md"
PATH = re.compile(
    r"`?((?:latent_codec|edge|cloud|training|proto|deploy|tests|tools|bench)/[\w/.{},-]+\.(?:py|proto|yaml))"
)


def _expand(name: str) -> list[str]:
    """edge/commands/{evaluate,ingest}.py -> both paths."""
    m = re.search(r"\{([^}]*)\}", name)
    if not m:
        return [name]
    return [name[: m.start()] + part + name[m.end() :] for part in m.group(1).split(",")]


def test_every_file_the_architecture_doc_names_exists():
    text = DOC.read_text()
    named = {p for raw in PATH.findall(text) for p in _expand(raw)}
    assert len(named) > 20  # the doc names the files of every step
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"docs/architecture.md names files that do not exist: {missing}"


def test_one_image_crosses_at_most_eight_hand_written_files_all_real():
    text = DOC.read_text()
    section = text.split("<!-- path:", 1)[1].split("\n\n", 1)[0]
    steps = re.findall(r"^\d+\. `([^`]+)`", section, flags=re.M)
    assert 1 <= len(steps) <= 8, steps
    assert len(set(steps)) == len(steps)
    for path in steps:
        assert (ROOT / path).is_file() and "wire" not in path, path
    # The path is the code's real path: evaluate goes through the codec and the client, the server through the codec.
    evaluate = (ROOT / "edge/commands/evaluate.py").read_text()
    assert "codec.encode(" in evaluate and "decode_stream(" in evaluate
    server = (ROOT / "cloud/decoding_service.py").read_text()
    assert "codec.symbols(" in server and "codec.dequantise(" in server and "codec.unscale(" in server

"""The one-command recipe: make bench-rd DATA=... RETRAIN=1 OUT=... trains the map ladder on that data and writes
the rate-distortion report there."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench import recipe, train_ladder

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_make_bench_rd_on_other_data_writes_the_report_to_out(tmp_path):
    """digits:16 with a tiny step budget (about a minute): bundles, rd.md/json/png in OUT, a BD-rate vs WebP."""
    out = tmp_path / "report"
    flags = "--first-steps 300 --steps 60 --lambdas 0.001,0.01 --threads 1"
    # STAMP/-o: make must not reinstall the virtual environment this test runs in (its stamp may look stale).
    cmd = ["make", "-s", "STAMP=.venv-given", "-o", ".venv-given", "bench-rd", "DATA=digits:16", "RETRAIN=1"]
    cmd += [f"OUT={out}", f"LADDER_FLAGS={flags}", f"PY={sys.executable}"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "recipe done in" in run.stderr and "ladder trained in" in run.stderr
    for name in ("rd.md", "rd.json", "rd.png", "rd_ladder.json"):
        assert (out / name).stat().st_size > 0, name
    bundles = sorted(p.name for p in (out / "bundles").iterdir())
    assert bundles == ["recipe-lambda-0.001", "recipe-lambda-0.01"]
    assert all((out / "bundles" / b / "manifest.json").is_file() for b in bundles)
    saved = json.loads((out / "rd.json").read_text())
    assert saved["meta"]["data"] == "digits:16:test" and saved["meta"]["items"] == 360
    rec = saved["meta"]["recipe"]
    assert rec["train_items"] == 1437 and rec["test_items"] == 360 and 0 < rec["train_seconds"] < 900
    mine = [r for r in saved["rows"] if r["codec"].startswith("aecodec")]
    assert sorted(Path(r["path"]).name for r in mine) == bundles
    for r in mine:  # a short run on 16x16 digits: ~45-90 bytes at 21-23 dB measured; generous bounds
        assert 5 < r["bytes"] < 400 and 15 < r["psnr"] < 40, r
    low, high = sorted(mine, key=lambda r: r["bytes"])
    assert low["psnr"] < high["psnr"]  # the higher-rate rung is the better one
    webp = [r for r in saved["rows"] if r["codec"] == "WebP"]
    assert len(webp) >= 5 and all(10 < r["psnr"] < 60 and r["bytes"] > 20 for r in webp)
    assert any(r["codec"] == "PCA uniform step" for r in saved["rows"])
    bd = saved["summary"]["bd_rate"]["aecodec spatial"]["WebP"]["bd_rate_percent"]
    assert bd is not None and math.isfinite(bd) and -100 < bd < 1000
    assert "webp_window" in saved["summary"]
    md = (out / "rd.md").read_text()
    assert "one-command recipe" in md and "recipe-lambda-0.01" in md and "| WebP |" in md


def test_other_data_defaults_to_the_map_ladder():
    """--data other than Fashion-MNIST without --preset trains the recipe preset (spatial maps), not the flat rungs."""
    (own,) = train_ladder.parse_args(["--data", "digits:28"])
    assert own.name == "recipe" and own.model == "spatial" and own.first_steps > 0
    assert [a.name for a in train_ladder.parse_args([])] == list(train_ladder.DEFAULT_PRESETS)
    (conv,) = train_ladder.parse_args(["--data", "digits:28", "--preset", "conv"])
    assert conv.name == "conv"


def test_recipe_refuses_data_without_a_test_split(tmp_path, capsys):
    import numpy as np

    np.savez(tmp_path / "one.npz", x=np.zeros((10, 1, 8, 8), np.uint8))
    assert (
        recipe.main(["--data", str(tmp_path / "one.npz"), "--out", str(tmp_path / "out"), "--retrain"]) == 2
    )
    assert "no test split of its own" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert recipe.main(["--data", "digits:16", "--out", str(tmp_path / "none")]) == 2
    assert "run with --retrain" in capsys.readouterr().err

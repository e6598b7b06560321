"""Every committed checkpoint (checkpoints/) still loads into today's model classes, strictly.

`make photo-zoo` re-exports the zoo from these files without retraining, and the photo ladder's second stage
starts from them; a model class that grows or loses a parameter (a prior, a context network) for one entropy
model must not break the others' checkpoints.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT

CHECKPOINTS = sorted((ROOT / "checkpoints").rglob("*.pt"))


def test_there_are_committed_checkpoints():
    assert CHECKPOINTS, "checkpoints/ holds no .pt files"


@pytest.mark.parametrize("path", CHECKPOINTS, ids=[str(p.relative_to(ROOT)) for p in CHECKPOINTS])
def test_a_committed_checkpoint_loads_strictly(path: Path):
    from training.train import load_checkpoint

    model, config, record = load_checkpoint(path, for_export=False)
    stored = torch.load(path, weights_only=True, map_location="cpu")["state_dict"]
    assert set(model.state_dict()) == set(stored)
    assert record["history"], "a committed checkpoint carries its training record"

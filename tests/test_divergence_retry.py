"""A forced divergence must be retried at a lower learning rate (issue 25): the ladder's rung retry
(bench/train_ladder.py), the guard's rollback (training/stability.py) and the training loop that applies it
(training/train.py). Fast: the ladder's training is replaced by a recorder, the loop runs 40 steps on digits.
"""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import TINY_SPATIAL_TRAINING
from training import stability
from training import train as train_mod
from training.stability import ROLLBACK_LR, DivergenceGuard

torch.set_num_threads(1)

GOOD = {"train_loss": 2.0, "val_loss": 1.0, "val_psnr": 30.0}
BLOWN = {"train_loss": 1.6e5, "val_loss": 1.5e5, "val_psnr": 4.0, "diverged": True}


def _ladder(monkeypatch, tmp_path, outcomes: list[dict]) -> list[float]:
    """Run bench.train_ladder on one rung whose trainings end as `outcomes` say; -> the rates it trained at."""
    from bench import train_ladder

    lrs: list[float] = []

    def fake_train(cfg, progress=None):
        lrs.append(cfg.lr)
        assert len(lrs) <= len(outcomes), f"trained {len(lrs)} times: the retries do not stop ({lrs})"
        rec = {"history": [outcomes[len(lrs) - 1]], "rate_prior": {"train_bits_per_item": 100.0}}
        return torch.nn.Linear(1, 1), rec

    monkeypatch.setattr(train_mod, "train", fake_train)
    monkeypatch.setattr(train_mod, "save_checkpoint", lambda path, *a: path)
    argv = [
        "--model",
        "spatial",
        "--args",
        '{"channels": 8, "code_channels": 4}',
        "--lambdas",
        "0.01",
        "--base-epochs",
        "0",
        "--lr",
        "0.004",
        "--checkpoints-only",
        "--runs",
        str(tmp_path / "runs"),
        "--summary",
        str(tmp_path / "summary.json"),
    ]
    assert train_ladder.main(argv) == 0
    return lrs


def test_a_diverged_rung_is_trained_again_at_a_quarter_of_the_rate(monkeypatch, tmp_path):
    assert _ladder(monkeypatch, tmp_path, [BLOWN, GOOD]) == pytest.approx([0.004, 0.001])


def test_a_rung_that_keeps_diverging_is_tried_three_times_at_falling_rates_then_kept(monkeypatch, tmp_path):
    assert _ladder(monkeypatch, tmp_path, [BLOWN, BLOWN, BLOWN]) == pytest.approx([0.004, 0.001, 0.00025])


def test_a_healthy_rung_is_trained_once(monkeypatch, tmp_path):
    assert _ladder(monkeypatch, tmp_path, [GOOD]) == pytest.approx([0.004])


def _snapshot(step: int, ema: float, best: float) -> dict:
    return {"position": {"step": step}, "guard_stats": {"ema": ema, "best": best}}


def test_the_guard_rolls_back_to_its_older_snapshot_at_half_the_rate_each_time():
    guard = DivergenceGuard(max_rollbacks=2)
    assert guard.diverged(1.0) is None and guard.diverged(0.9) is None
    guard.keep(_snapshot(100, 0.9, 0.9))
    guard.keep(_snapshot(200, 0.95, 0.9))
    assert guard.diverged(float("nan")) == "loss is nan"
    assert guard.diverged(1.0, float("inf")) == "gradient norm is inf"
    back = guard.rollback("loss is nan", {"step": 250})
    assert (
        back is not None and back["position"]["step"] == 100
    )  # the older one: the newer may hold the blow-up
    assert guard.lr_scale == ROLLBACK_LR == 0.5 and (guard.ema, guard.best) == (0.9, 0.9)
    assert guard.events[-1] == {"step": 250, "reason": "loss is nan", "lr_scale": 0.5, "back_to_step": 100}
    assert guard.rollback("again", {"step": 260}) is not None and guard.lr_scale == 0.25
    assert guard.rollback("and again", {"step": 270}) is None  # rollbacks used up: stop
    assert guard.lr_scale == 0.25 and guard.events[-1]["stopped"]


def test_the_guard_sees_a_loss_average_far_above_its_lowest():
    guard = DivergenceGuard(factor=4.0)
    for _ in range(5):
        assert guard.diverged(1.0) is None
    reason = None
    for _ in range(200):
        reason = reason or guard.diverged(1000.0)
    assert reason is not None and "x its lowest" in reason


def test_a_forced_divergence_in_training_continues_at_half_the_learning_rate(monkeypatch):
    """training.train: a NaN loss at step 20 rolls back to the first snapshot and every later step runs at
    half the schedule's rate (the optimizer's own lr, read at each step)."""
    cfg = train_mod.TrainConfig(
        **TINY_SPATIAL_TRAINING,
        steps=40,
        schedule="cosine",
        warmup=0.0,
        lr_final=1.0,  # a flat schedule: the optimizer's rate is exactly lr x the guard's scale
    )
    seen: list[float] = []
    calls = {"n": 0}
    forward = train_mod.Objective.forward

    def spiky(self, x_in, xb):
        loss = forward(self, x_in, xb)
        if self.training:
            calls["n"] += 1
            groups = getattr(spiky, "opt", None)
            if groups is not None:
                seen.append(groups.param_groups[0]["lr"])
            if calls["n"] == 21:
                return loss * float("nan")
        return loss

    real_adam = torch.optim.Adam

    def recording_adam(*a, **kw):
        opt = real_adam(*a, **kw)
        spiky.opt = opt  # type: ignore[attr-defined]
        return opt

    monkeypatch.setattr(train_mod.Objective, "forward", spiky)
    monkeypatch.setattr(torch.optim, "Adam", recording_adam)
    monkeypatch.setattr(stability, "SNAPSHOT_EVERY", 10**6)  # only the step-0 snapshot
    model, rec = train_mod.train(cfg, progress=None)
    events = rec["stability"]["rollbacks"]
    assert len(events) == 1 and events[0]["back_to_step"] <= 1 and events[0]["lr_scale"] == 0.5, events
    assert seen, "the optimizer's learning rate was never observed"
    before, after = seen[:20], seen[21:]
    assert before and after
    assert all(math.isclose(v, 2e-3) for v in before), before
    assert all(math.isclose(v, 1e-3) for v in after), after

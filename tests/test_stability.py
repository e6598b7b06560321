"""Resumable, stable training: a resumed run equals an uninterrupted one (in process and after a real
SIGKILL), a forced divergence rolls back at a lower rate, clipping bounds what the optimizer sees, and one
process visits the items in the order it always did."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import ROOT, TINY_SPATIAL_TRAINING, child_env
from training import train as train_mod
from training.data import epoch_order, load_split, to_tensor, train_val_split
from training.stability import GradClipper
from training.train import Stopped, TrainConfig, load_checkpoint, train

SPATIAL = dict(TINY_SPATIAL_TRAINING, epochs=2)


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**SPATIAL, **kw})


def _same_weights(a, b) -> None:
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka


def test_a_run_stopped_mid_epoch_and_resumed_equals_one_never_stopped(tmp_path):
    whole, rec = train(TrainConfig(**SPATIAL), progress=None)
    state = tmp_path / "m.state.pt"
    cfg = _cfg(state=str(state), resume=True, stop_at_step=23)  # 17 steps per epoch
    with pytest.raises(Stopped) as stop:
        train(cfg, progress=None)
    assert stop.value.step == 23 and state.is_file()
    again, rec2 = train(TrainConfig(**{**cfg.__dict__, "stop_at_step": 0}), progress=None)
    _same_weights(whole, again)
    assert [h["val_psnr"] for h in rec2["history"]] == [h["val_psnr"] for h in rec["history"]]
    assert [s["from_step"] for s in rec2["sessions"]] == [0, 23] and rec2["steps"]["done"] == 34
    assert rec2["train_seconds"] >= sum(s.get("seconds", 0) for s in rec2["sessions"][:1])
    # another resume of a finished run trains nothing more and gives the same model
    third, _ = train(TrainConfig(**{**cfg.__dict__, "stop_at_step": 0}), progress=None)
    _same_weights(whole, third)


def test_resume_refuses_a_state_written_with_other_settings(tmp_path):
    state = tmp_path / "m.state.pt"
    cfg = _cfg(state=str(state), resume=True, stop_at_step=3)
    with pytest.raises(Stopped):
        train(cfg, progress=None)
    with pytest.raises(ValueError, match="other settings.*lr"):
        train(TrainConfig(**{**cfg.__dict__, "lr": 1e-3}), progress=None)


def test_a_state_written_before_a_config_field_existed_resumes_when_the_field_keeps_its_default(tmp_path):
    """Fields added to TrainConfig since a state was written (e.g. the denoising options) count as their
    defaults: a long run stopped before they existed must still resume; a non-default value is still refused."""
    from training.resume import read_state

    state = tmp_path / "m.state.pt"
    cfg = _cfg(state=str(state), resume=True, stop_at_step=3)
    with pytest.raises(Stopped):
        train(cfg, progress=None)
    saved = torch.load(state, weights_only=True)
    del saved["config"]["block_noise"]  # as a state from before the field
    torch.save(saved, state)
    assert read_state(state, cfg)["config"].get("block_noise") is None
    with pytest.raises(ValueError, match="block_noise"):
        read_state(state, TrainConfig(**{**cfg.__dict__, "block_noise": 4}))


@pytest.mark.slow
def test_a_process_killed_with_sigkill_resumes_to_the_same_model(tmp_path):
    """A real training process, killed -9 between two of its periodic checkpoints, resumed by the same
    command: the model equals the one an uninterrupted run trains."""
    out = tmp_path / "k.pt"
    args = [
        "--model",
        "dense",
        "--arg",
        "code_dim=6",
        "--arg",
        "hidden=[32]",
        "--data",
        "digits",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--threads",
        "1",
        "--seed",
        "2",
        "--no-progress",
        "--out",
        str(out),
    ]
    cmd = [sys.executable, "-m", "training.train", *args, "--checkpoint-minutes", "0.0002", "--resume"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = tmp_path / "k.state.pt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if state.is_file():
            steps = torch.load(state, weights_only=True)["now"]["position"]["step"]
            if steps >= 20:
                break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not out.exists()
    assert train_mod.main(args + ["--checkpoint-minutes", "0.0002", "--resume"]) == 0
    resumed, _, rec = load_checkpoint(out)
    assert len(rec["sessions"]) == 2 and rec["sessions"][1]["from_step"] >= 20
    cfg = train_mod.config_from_args(train_mod.parse_args(args))
    whole, _ = train(cfg, progress=None)
    _same_weights(whole.eval(), resumed)


def _inject(monkeypatch, at_step: int, factor: float) -> None:
    """Multiply one training step's loss by factor (NaN for a poisoned batch): a spike out of nowhere."""
    calls = {"n": 0}
    forward = train_mod.Objective.forward

    def spiky(self, x_in, xb):
        loss = forward(self, x_in, xb)
        calls["n"] += 1 if self.training else 0
        return loss * factor if calls["n"] == at_step + 1 else loss

    monkeypatch.setattr(train_mod.Objective, "forward", spiky)


@pytest.mark.slow
@pytest.mark.parametrize("factor", [float("nan"), 1e6])
def test_a_forced_divergence_rolls_back_to_a_good_state_at_half_the_rate(monkeypatch, factor):
    _inject(monkeypatch, 150, factor)
    model, rec = train(_cfg(steps=300), progress=None)
    events = rec["stability"]["rollbacks"]
    assert len(events) == 1 and events[0]["step"] == 150 and events[0]["back_to_step"] <= 100
    assert events[0]["lr_scale"] == 0.5 and rec["stability"]["lr_scale"] == 0.5
    assert rec["steps"]["done"] == 300 and not rec.get("diverged")
    assert all(torch.isfinite(p).all() for p in model.state_dict().values())
    monkeypatch.undo()
    ref = train(_cfg(steps=300), progress=None)[1]
    assert (
        rec["history"][-1]["val_psnr"] > ref["history"][-1]["val_psnr"] - 2.0
    )  # it recovered (at a lower rate)
    assert rec["history"][-1]["lr"] == pytest.approx(0.5 * ref["history"][-1]["lr"])  # at half the rate


@pytest.mark.slow
def test_without_the_guard_the_same_spike_ruins_the_model(monkeypatch):
    _inject(monkeypatch, 150, float("nan"))
    model, rec = train(_cfg(steps=300, guard=False), progress=None)
    assert not all(torch.isfinite(p).all() for p in model.state_dict().values())


@pytest.mark.slow
def test_a_run_that_keeps_diverging_stops_at_its_last_good_state(monkeypatch):
    model, rec = train(_cfg(lr=80.0, steps=200), progress=None)
    assert rec.get("diverged") and rec["history"][-1]["diverged"]
    events = rec["stability"]["rollbacks"]
    assert len(events) == 5 and events[-1]["stopped"] and rec["steps"]["done"] < 200
    assert all(torch.isfinite(p).all() for p in model.state_dict().values())


def test_clipping_bounds_the_gradient_norm_and_keeps_adam_sane():
    lin = torch.nn.Linear(10, 10)
    clip = GradClipper(-1.0)  # auto
    for _ in range(30):
        lin.zero_grad()
        (lin(torch.randn(8, 10)) ** 2).sum().backward()
        norm = clip(lin.parameters())
        assert math.isfinite(norm)
    lin.zero_grad()
    (1e4 * lin(torch.randn(8, 10)) ** 2).sum().backward()  # an outlier batch
    limit = clip.threshold()
    raw = clip(lin.parameters())
    after = torch.cat([p.grad.flatten() for p in lin.parameters()]).norm()
    assert raw > 100 * limit and float(after) == pytest.approx(limit, rel=1e-4) and clip.clipped == 1
    fixed = GradClipper(0.5)
    fixed(lin.parameters())
    assert float(torch.cat([p.grad.flatten() for p in lin.parameters()]).norm()) == pytest.approx(
        0.5, rel=1e-4
    )


@pytest.mark.slow
@pytest.mark.parametrize("clip", ["auto", "off"])
def test_an_outlier_gradient_reaches_adam_only_without_clipping(monkeypatch, clip):
    """One step's gradient 10^4 times too large: clipped, Adam's second moments stay near their usual size;
    unclipped they grow by orders of magnitude and freeze those weights for the next thousand steps."""
    seen = {}
    step = torch.optim.Adam.step

    def spy(self, *a, **k):
        out = step(self, *a, **k)
        seen["v"] = max(float(s["exp_avg_sq"].max()) for s in self.state.values())
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    train(_cfg(steps=60, clip_grad=clip, guard=False), progress=None)
    calm = seen["v"]
    _inject(monkeypatch, 50, 1e4)
    train(_cfg(steps=60, clip_grad=clip, guard=False), progress=None)
    ratio = seen["v"] / calm
    assert (ratio < 100) if clip == "auto" else (ratio > 1000), ratio


def test_one_process_visits_items_in_the_order_it_did_before_torchrun_support(monkeypatch):
    """The pre-distributed loop drew one torch.randperm per epoch from a generator seeded once; training in
    one process still does, and N processes' shards together are that same permutation."""
    g = torch.Generator().manual_seed(11)
    old = [torch.randperm(500, generator=g) for _ in range(3)]
    for e in range(3):
        assert torch.equal(epoch_order(500, e + 1, 11), old[e])
        shards = [epoch_order(500, e + 1, 11, r, 3) for r in range(3)]
        assert sorted(torch.cat(shards).tolist()) == sorted(old[e][:498].tolist())
        assert torch.equal(shards[1], old[e][:498][1::3])
    # ... and train() takes its batches in that order
    batches = []
    forward = train_mod.Objective.forward

    def record(self, x_in, xb):
        if self.training:
            batches.append(xb.clone())
        return forward(self, x_in, xb)

    monkeypatch.setattr(train_mod.Objective, "forward", record)
    cfg = TrainConfig(
        model="dense",
        model_args={"code_dim": 4},
        data="digits",
        limit=300,
        epochs=2,
        batch_size=50,
        seed=11,
        threads=1,
    )
    train(cfg, progress=None)
    x_train, _ = train_val_split(to_tensor(load_split("digits", "train", 300)), 0.1, 11)
    g = torch.Generator().manual_seed(11)
    for epoch in range(2):
        perm = torch.randperm(len(x_train), generator=g)
        got = batches[epoch * 6 : (epoch + 1) * 6]
        want = [x_train[perm[i : i + 50]] for i in range(0, len(x_train), 50)]
        assert len(got) == len(want) and all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.slow
def test_a_ladder_chained_to_the_nearest_lambda_and_a_rung_resumed_mid_way(tmp_path):
    """--chain nearest: each rung starts from the trained rung of the nearest lambda (the photo preset trains a
    mid lambda first, then outwards); a rung stopped mid-way by a signal continues from its state."""
    from bench import train_ladder

    runs = tmp_path / "runs"
    args = [
        "--model",
        "dense",
        "--args",
        '{"code_dim": 8, "hidden": [32]}',
        "--lambdas",
        "0.03,0.01,0.1",
        "--chain",
        "nearest",
        "--data",
        "digits",
        "--steps",
        "40",
        "--batch-size",
        "64",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--checkpoints-only",
        "--checkpoint-minutes",
        "5",
        "--runs",
        str(runs),
        "--summary",
        str(tmp_path / "s.json"),
        "--out",
        str(tmp_path / "b"),
    ]
    train_mod._STOP.set()  # as SIGTERM would: the first rung stops after its first step, its state written
    try:
        assert train_ladder.main(args) == 3
    finally:
        train_mod._STOP.clear()
    assert (runs / "lambda-0.03.lr0.001.state.pt").is_file() and not (runs / "lambda-0.03.pt").exists()
    assert train_ladder.main([*args, "--resume"]) == 0
    starts = {
        lam: load_checkpoint(runs / f"lambda-{lam}.pt", for_export=False)[1]["init_checkpoint"]
        for lam in ("0.03", "0.01", "0.1")
    }
    assert starts == {"0.03": "", "0.01": str(runs / "lambda-0.03.pt"), "0.1": str(runs / "lambda-0.03.pt")}
    rec = load_checkpoint(runs / "lambda-0.03.pt", for_export=False)[2]
    assert [s["from_step"] for s in rec["sessions"]] == [0, 1]


def test_progress_lines_and_curve_with_the_guard_off(capsys):
    _, rec = train(_cfg(steps=20, guard=False, val_every=10, limit=300), progress=False)
    assert math.isfinite(rec["curve"][0]["train_loss_avg"]) and "val_bpp" in rec["curve"][0]
    assert "step 10/20: val PSNR" in capsys.readouterr().err


@pytest.mark.slow
def test_a_second_stage_continues_each_rung_from_its_own_lambda_with_its_own_steps(tmp_path, monkeypatch):
    """The photo ladder's second stage (preset photo-long): --start-from gives each rung its own lambda's
    first-stage checkpoint, --rung-steps its own step budget, --bundle-name the first stage's bundle names;
    a second run with --resume reuses every rung instead of training it again."""
    from bench import train_ladder

    common = [
        "--model",
        "dense",
        "--args",
        '{"code_dim": 8, "hidden": [32]}',
        "--lambdas",
        "0.0001,100",
        "--data",
        "digits",
        "--batch-size",
        "64",
        "--lr",
        "0.01",
        "--threads",
        "1",
        "--device",
        "cpu",
        "--test-limit",
        "50",
    ]
    monkeypatch.setattr(train_ladder, "DIVERGED_DB", 1.0)
    first = tmp_path / "first"
    for lam in ("0.0001", "100"):  # two independent first-stage rungs, each from scratch
        first_stage = [
            *common,
            "--lambdas",
            lam,
            "--steps",
            "150",
            "--checkpoints-only",
            "--runs",
            str(first),
        ]
        first_stage += ["--summary", str(tmp_path / "a.json"), "--out", str(tmp_path / "unused")]
        assert train_ladder.main(first_stage) == 0
    second = [
        *common,
        "--steps",
        "30",
        "--rung-steps",
        "100:10",
        "--start-from",
        str(first),
        "--runs",
        str(tmp_path / "second"),
        "--bundle-name",
        "stage1",
        "--summary",
        str(tmp_path / "b.json"),
        "--out",
        str(tmp_path / "zoo"),
    ]
    assert train_ladder.main(second) == 0
    for lam, steps in (("0.0001", 30), ("100", 10)):
        cfg, rec = load_checkpoint(tmp_path / "second" / f"lambda-{lam}.pt", for_export=False)[1:3]
        assert cfg["init_checkpoint"] == str(first / f"lambda-{lam}.pt")
        assert cfg["steps"] == steps and rec["history"][-1]["step"] == steps
        assert cfg["lr"] == 0.01  # not retried at a lower rate: each rung is judged against its own start
        assert (tmp_path / "zoo" / f"stage1-lambda-{lam}" / "manifest.json").is_file()
    psnr = [
        load_checkpoint(first / f"lambda-{lam}.pt", for_export=False)[2]["history"][-1]["val_psnr"]
        for lam in ("0.0001", "100")
    ]
    # the rungs lie further apart than a divergence is judged by (1 dB here, so tiny rungs show it)
    assert psnr[0] - psnr[1] > train_ladder.DIVERGED_DB
    summary = json.loads((tmp_path / "b.json").read_text())
    assert [r["steps"] for r in summary["rungs"]] == [30, 10]
    before = (tmp_path / "second" / "lambda-100.pt").stat().st_mtime_ns
    assert train_ladder.main([*second, "--resume"]) == 0
    assert (tmp_path / "second" / "lambda-100.pt").stat().st_mtime_ns == before
    assert train_ladder.main([*second[:-2], "--rung-steps", "0.1-10", "--out", str(tmp_path / "z2")]) == 2

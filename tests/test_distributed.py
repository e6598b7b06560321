"""Training past one process: the device flag, mixed precision's rules, and real torchrun runs on the CPU.

The torchrun tests start `python -m torch.distributed.run --nproc-per-node 2` (gloo) on digits. Two processes
with the global batch split in halves must give the model one process gives (DDP averages the halves'
gradients: the same step up to float summation order; measured max |weight difference| 1.6e-7, tolerance
1e-5), and only rank 0 may write (tests/ddp_worker.py records every file each rank opens for writing).
No GPU here: CUDA and NCCL are not run, only the device and mixed-precision decisions are tested.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, child_env
from training import distributed
from training.train import Objective, TrainConfig, load_checkpoint, main, train

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU


# ---- device and mixed precision -------------------------------------------------------------------------------
def test_auto_picks_cuda_only_when_torch_sees_a_gpu():
    expect = "cuda" if torch.cuda.is_available() else "cpu"
    assert distributed.resolve_device("auto").type == expect
    assert distributed.resolve_device("cpu") == CPU
    with pytest.raises(ValueError, match="device must be one of"):
        distributed.resolve_device("tpu")


def test_training_records_its_device_and_one_process():
    cfg = TrainConfig(model="dense", model_args={"code_dim": 4}, data="digits", epochs=1, limit=200)
    _, record = train(cfg, progress=None)
    assert record["device"] == {
        "type": "cuda" if torch.cuda.is_available() else "cpu",
        "processes": 1,
        "items_per_process": record["data"]["items"],  # one process sees every item
    }


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_device_flag_is_validated(tmp_path, capsys):
    base = ["--model", "dense", "--arg", "code_dim=4", "--data", "digits", "--limit", "100", "--epochs", "1"]
    out = ["--out", str(tmp_path / "m.pt")]
    assert main([*base, "--device", "cuda", *out]) == 2
    assert "torch sees no CUDA device" in capsys.readouterr().err
    assert main([*base, "--device", "cpu", "--amp", "bf16", *out]) == 2
    assert "needs --device cuda" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*base, "--device", "tpu", *out])
    assert "invalid choice: 'tpu'" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_mixed_precision_only_where_it_is_safe():
    assert distributed.check_options("none", CPU, quantised_codes=True, contractive=True) is None
    assert distributed.check_options("bf16", CUDA, False, False) is torch.bfloat16
    assert distributed.check_options("fp16", CUDA, False, False) is torch.float16
    with pytest.raises(ValueError, match="codes need fp32"):
        distributed.check_options("bf16", CUDA, quantised_codes=True, contractive=False)
    with pytest.raises(ValueError, match="contractive penalty runs on the CPU only"):
        distributed.check_options("none", CUDA, quantised_codes=False, contractive=True)
    with pytest.raises(ValueError, match="needs --device cuda"):
        distributed.check_options("fp16", CPU, False, False)
    with pytest.raises(ValueError, match="amp must be one of"):
        distributed.check_options("fp8", CUDA, False, False)


def test_mixed_precision_forward_keeps_the_loss_in_fp32():
    """The forward pass under autocast (bf16 on the CPU stands in for CUDA here); every loss term in fp32,
    including the penalties on the code alone (L1 here), which no fp32 target would promote."""
    from training.registry import build_model
    from training.regularizers import Regularizers

    torch.manual_seed(0)
    model = build_model("dense", {"input_shape": [1, 8, 8], "code_dim": 4, "hidden": [32]})
    reg = Regularizers(l1=0.5)
    x = torch.rand(16, 1, 8, 8)
    full = Objective(model, None, reg)(x, x)
    mixed = Objective(model, None, reg, amp=torch.bfloat16)(x, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert out["code"].dtype == torch.bfloat16  # the forward pass did run in bf16
    out = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
    assert mixed.dtype == torch.float32 and torch.equal(
        mixed, model.reconstruction_loss(out, x) + reg(model, x, out)
    )
    assert mixed.item() == pytest.approx(full.item(), rel=0.02) and mixed.item() != full.item()


# ---- torchrun ------------------------------------------------------------------------------------------------
TRAIN_ARGS = [
    "--model",
    "dense",
    "--arg",
    "code_dim=8",
    "--arg",
    "hidden=[32]",
    "--data",
    "digits",
    "--limit",
    "1000",
    "--epochs",
    "3",
    "--batch-size",
    "60",
    "--lr",
    "0.002",
    "--seed",
    "0",
    "--device",
    "cpu",
    "--no-progress",
]
# 1000 digits -> 900 training items: 15 global batches of 60 (30 per process), none left over.


def torchrun(module: str, args: list[str], writes: Path, nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N -m MODULE ARGS` through tests/ddp_worker.py, one thread each."""
    writes.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += [str(ROOT / "tests" / "ddp_worker.py"), module, *args]
    env = {**child_env(), "AECODEC_WRITES_DIR": str(writes), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def writes_by_rank(writes: Path, under: Path) -> dict[int, list[str]]:
    out = {}
    for f in sorted(writes.glob("rank-*.json")):
        rank = int(f.stem.split("-")[1])
        out[rank] = [p for p in json.loads(f.read_text()) if Path(p).is_relative_to(under)]
    return out


@pytest.mark.slow
def test_two_processes_train_the_model_one_process_trains(tmp_path):
    out = tmp_path / "out"
    proc = torchrun(
        "training.train", [*TRAIN_ARGS, "--threads", "1", "--out", str(out / "two.pt")], tmp_path / "w"
    )
    two, _, rec2 = load_checkpoint(out / "two.pt")
    # exactly one checkpoint, written by rank 0 alone; one process reports
    assert sorted(p.name for p in out.iterdir()) == ["two.pt"]
    assert writes_by_rank(tmp_path / "w", out) == {0: [str(out / "two.pt")], 1: []}
    assert proc.stdout.count("saved ") == 1 and "2 process(es)" in proc.stdout
    assert proc.stderr.count("epoch 3: train loss") == 1  # one process logs
    # each process trained on its own half of every epoch
    assert rec2["device"] == {"type": "cpu", "processes": 2, "items_per_process": 450}
    assert rec2["data"]["items"] == 900
    # ... and the result is one process's training with the same global batch
    from training.train import config_from_args, parse_args

    one, rec1 = train(config_from_args(parse_args([*TRAIN_ARGS, "--out", "unused"])), progress=None)
    for (name, a), (_, b) in zip(one.state_dict().items(), two.state_dict().items()):
        assert torch.allclose(a, b, rtol=0, atol=1e-5), (name, float((a - b).abs().max()))
    for h1, h2 in zip(rec1["history"], rec2["history"], strict=True):
        assert h2["val_psnr"] == pytest.approx(h1["val_psnr"], abs=1e-3)
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-4)
    assert rec1["history"][-1]["val_psnr"] > rec1["history"][0]["val_psnr"]  # it did train


@pytest.mark.slow
def test_rate_ladder_under_torchrun_rank_zero_writes_every_file(tmp_path):
    """bench.train_ladder goes through training.train: two rungs (the second starts from the first's checkpoint),
    each exported to a bundle, all by rank 0 while rank 1 trains its shards and writes nothing."""
    from latent_codec.codec import Codec

    out = tmp_path / "ladder"
    args = ["--model", "dense", "--args", '{"code_dim": 8, "hidden": [32]}', "--lambdas", "0.01,0.03"]
    args += ["--data", "digits", "--epochs", "1", "--batch-size", "64", "--threads", "1", "--device", "cpu"]
    args += ["--test-limit", "100", "--runs", str(out / "runs"), "--out", str(out / "bundles")]
    args += ["--summary", str(out / "summary.json")]
    torchrun("bench.train_ladder", args, tmp_path / "w")
    summary = json.loads((out / "summary.json").read_text())
    assert [r["rd_lambda"] for r in summary["rungs"]] == [0.01, 0.03]
    assert summary["rungs"][1]["started_from"] == str(out / "runs" / "lambda-0.01.pt")
    for rung in summary["rungs"]:
        assert Codec.open(rung["bundle"]).bundle_id == rung["bundle_id"]
    _, _, rec = load_checkpoint(out / "runs" / "lambda-0.03.pt")
    assert rec["device"]["processes"] == 2 and "rate_prior" in rec
    by_rank = writes_by_rank(tmp_path / "w", out)
    assert by_rank[1] == [] and str(out / "summary.json") in by_rank[0]
    assert {str(out / "runs" / f"lambda-{lam}.pt") for lam in ("0.01", "0.03")} <= set(by_rank[0])

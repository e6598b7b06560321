"""Train an autoencoder from the registry and save a checkpoint.

    python -m training.train --model conv --arg code_dim=32 --epochs 3 --out runs/conv.pt
    torchrun --standalone --nproc-per-node 2 -m training.train --model conv ... --out runs/conv.pt

--batch-size is the global batch: under torchrun each of the N processes takes
batch_size / N items of every step (DistributedSampler shards each epoch), and
DistributedDataParallel averages the gradients, so a step sees the same items
and the same learning rate as in one process (training/distributed.py).

The checkpoint holds weights, the constructor arguments and the config, and
loads with ``torch.load(path, weights_only=True)``.

Long runs checkpoint themselves and resume exactly (training/resume.py):

    python -m training.train ... --out runs/photo/q3.pt --checkpoint-minutes 10 --resume

writes runs/photo/q3.state.pt every 10 minutes (and on SIGTERM / SIGINT, --stop-after-minutes,
--stop-at-step), and the same command continues from it; the record's train_seconds sums every session.
Every run warms up, clips outlier gradients and rolls back from a blow-up at a lower rate
(training/stability.py).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from latent_codec.errors import CodecError
from training import distributed
from training.data import epoch_order, load_split, to_tensor, train_val_split
from training.noise import Corruption
from training.registry import build_model, model_names
from training.regularizers import Regularizers
from training.resume import config_dict, read_state, rng_state, set_rng_state, state_path_for, write_state
from training.stability import SCHEDULES, DivergenceGuard, GradClipper, build_scheduler, parse_clip
from training.stacked import pretrain_stacked
from training.step_speed import accelerate


@dataclass
class TrainConfig:
    model: str = "conv"
    model_args: dict = field(default_factory=dict)  # constructor arguments beyond input_shape
    data: str = "fashion-mnist"  # a datasets.load spec: fashion-mnist, digits, or a path
    limit: int = 0  # use only the first N training items (0 = all); for smoke tests
    epochs: int = 5
    batch_size: int = 128  # the global batch (split over torchrun's processes); small is fastest on 2 cores
    lr: float = (
        2e-3  # Adam's peak rate, for the global batch (the schedule warms up to it and decays from it)
    )
    weight_decay: float = 0.0  # L2 on weights (the notes' regularised autoencoder)
    val_fraction: float = 0.1  # held out from train for the per-epoch validation loss
    seed: int = 0
    threads: int = 0  # torch intra-op threads (0 = torch's default)
    device: str = "auto"  # cpu | cuda | auto (cuda if torch sees a GPU); torchrun: cuda:LOCAL_RANK
    amp: str = "none"  # mixed precision on CUDA: none | bf16 | fp16 (where safe: training/distributed.py)
    # Autoencoder family (docs/models.md): denoising, sparse, contractive, stacked. 0 = off.
    mask_noise: float = 0.0  # denoising: each input pixel set to 0 with probability q (training/noise.py)
    gauss_noise: float = 0.0  # denoising: additive N(0, sigma^2) on [0, 1] inputs
    block_noise: int = 0  # denoising / inpainting: one square hole of this side per item, set to 0
    noise_mix: bool = False  # each item gets one of the active corruptions instead of all of them
    noise_clip: bool = False  # corrupted inputs clipped to [0, 1], as the pixels a device sends
    l1: float = 0.0  # sparse: lambda * sum |code| per item (training/regularizers.py)
    kl_sparsity: float = 0.0  # sparse: beta * sum_l KL(rho || rho_hat_l); needs sigmoid codes
    sparsity_target: float = 0.05  # rho, the target mean activation for kl_sparsity
    contractive: float = 0.0  # contractive: lambda * ||d code / d x||_F^2 per item
    contractive_samples: int = 0  # 0 = exact Jacobian norm (k products); m = Hutchinson estimate (m products)
    pretrain_epochs: int = 0  # stacked: greedy layer-wise pre-training epochs per layer (training/stacked.py)
    patience: int = 0  # early stopping: stop after N epochs with no better val loss, keep the best (0 = off)
    # Rate-distortion training (training/rate.py): loss = distortion + rd_lambda * bits per item.
    rd_lambda: float = 0.0  # 0 = plain reconstruction loss
    quant_noise: str = "none"  # decoder-side rounding proxy: none | noise | ste | mixed
    rd_distortion: str = "mse"  # mse (pixel squared error, what PSNR measures) | model (its own loss)
    init_checkpoint: str = (
        ""  # start from these weights (same model and args), e.g. one base for a rate ladder
    )
    # Stability (training/stability.py): schedule, gradient clipping, divergence guard with rollback.
    schedule: str = (
        "onecycle"  # onecycle (15 % warm-up, cosine decay) | cosine (--warmup, then to --lr-final)
    )
    warmup: float = 0.05  # cosine: fraction of the steps spent warming up linearly
    lr_final: float = 0.01  # cosine: the last step's rate as a fraction of the peak
    clip_grad: str = "auto"  # auto (3 x the median of recent gradient norms) | off | a fixed bound
    guard: bool = True  # roll back to the last good state at half the rate when the loss blows up
    steps: int = 0  # total optimizer steps (0 = epochs x steps per epoch); the last epoch may be partial
    # Validation during training: every val_every steps too (0 = once per epoch), on val_items items (0 = all)
    # of a val_fraction of the training split ("train") or of the data's test split ("test").
    val_every: int = 0
    val_items: int = 0
    val_split: str = "train"
    # Resumable runs (training/resume.py): the state file, how often it is written, where a session stops.
    state: str = ""  # the training-state file ("" = none; main() derives it from --out)
    checkpoint_minutes: float = 0.0  # write the state this often, mid-epoch too (0 = only when stopping)
    resume: bool = False  # continue from the state file when it exists
    stop_at_step: int = 0  # stop this session at this global step (state written; 0 = run to the end)
    stop_after_minutes: float = 0.0  # stop this session after this long (state written; 0 = no limit)
    # CPU step speed (training/step_speed.py): same computation, faster steps.
    channels_last: bool = False  # 4-d weights in channels-last layout
    compile: bool = False  # torch.compile the model's forward (a minute or two of compiling first)


BLOW_UP = 20.0  # a fine-tune whose validation loss ends an epoch this many times above its start has diverged
VAL_SPLITS = ("train", "test")
_STOP = threading.Event()  # set by SIGTERM / SIGINT (main): write the state and stop after this step


class Stopped(Exception):
    """The session stopped before the end of training (a signal, --stop-at-step or --stop-after-minutes)."""

    def __init__(self, step: int, total: int, state: Path | None):
        super().__init__(f"stopped at step {step} of {total}")
        self.step, self.total, self.state = step, total, state


def _set_seed(seed: int) -> None:
    torch.manual_seed(seed)


def evaluate(model, x: torch.Tensor, batch_size: int = 1000, rd_lambda: float = 0.0) -> dict:
    """Mean per-item loss and pixel MSE / PSNR on [0, 1] (batches go to the model's device); with an entropy
    model also its bits per item and per pixel (rounded codes) and the rate-distortion loss D + lambda R."""
    model.eval()
    loss = se = bits = 0.0
    has_bits = False
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(model.input_mean.device)
            out = model(xb)
            loss += float(model.reconstruction_loss(out, xb)) * len(xb)
            se += float(((out["x_hat"].clamp(0, 1) - xb) ** 2).sum())
            if "bits" in out:
                has_bits = True
                bits += float(out["bits"].sum())
    mse = se / x.numel()
    rec = {"loss": loss / len(x), "mse": mse, "psnr": -10 * math.log10(max(mse, 1e-10))}
    if has_bits:
        pixels = x.shape[-1] * x.shape[-2]
        rec.update(bits_per_item=bits / len(x), bpp=bits / len(x) / pixels)
        rec["rd_loss"] = mse * x[0].numel() + rd_lambda * bits / len(x)  # per item, as the training loss
    return rec


class Objective(nn.Module):
    """One batch's loss: the module DistributedDataParallel wraps, so the model's and the rate prior's
    gradients are both averaged over processes. The forward pass may run in mixed precision; losses in fp32."""

    def __init__(self, model, rate, reg: Regularizers, amp: torch.dtype | None = None):
        super().__init__()
        self.model, self.rate, self.reg, self.amp = model, rate, reg, amp

    def forward(self, x_in: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        with distributed.autocast(xb.device, self.amp):
            out = self.model(x_in)
        out = {k: v.float() if isinstance(v, torch.Tensor) else v for k, v in out.items()}
        loss = (
            self.model.reconstruction_loss(out, xb)
            if self.rate is None
            else self.rate.loss(self.model, out, xb)
        )
        return loss + self.reg(self.model, x_in, out)  # sparse / contractive penalties (0 when off)


class EarlyStopping:
    """Keeps the weights of the best validation loss; says stop after `patience` epochs without a better one."""

    def __init__(self, patience: int):
        self.patience, self.best, self.best_epoch, self.state = patience, math.inf, 0, None

    def update(self, epoch: int, val_loss: float | None, model) -> bool:
        if not self.patience or val_loss is None:
            return False
        if val_loss < self.best:
            self.best, self.best_epoch = val_loss, epoch
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return epoch - self.best_epoch >= self.patience

    def finish(self, model, epochs_run: int) -> dict:
        """Restore the best weights; -> the record's early_stopping entry ({} when off)."""
        if self.state is None:
            return {}
        model.load_state_dict(self.state)
        return {"patience": self.patience, "best_epoch": self.best_epoch, "epochs_run": epochs_run}

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "state": self.state}

    def load_state_dict(self, s: dict) -> None:
        self.best, self.best_epoch, self.state = float(s["best"]), int(s["best_epoch"]), s["state"]


def _data_record(cfg: TrainConfig, ds, n_train: int, n_val: int) -> dict:
    return {
        "spec": cfg.data,
        "source": ds.source,
        "items": n_train,
        "val_items": n_val,
        "shape": list(ds.item_shape),
        "val_split": cfg.val_split,
    }


def train(cfg: TrainConfig, progress: bool | None = True) -> tuple[torch.nn.Module, dict]:
    """Train and return (model on the CPU, record). The loop: batches, loss, clipped step, guard; validation.

    Under torchrun every process runs this with its shard of each epoch; all return the same model. With a
    state file the run checkpoints itself and resumes (cfg.resume) exactly where it stopped; a session that
    stops early (signal, stop_at_step, stop_after_minutes) writes the state and raises Stopped.
    """
    rt = distributed.setup(cfg.device)
    amp = distributed.check_options(
        cfg.amp, rt.device, cfg.rd_lambda > 0 or cfg.quant_noise != "none", cfg.contractive > 0
    )
    if cfg.batch_size % rt.world_size:
        raise ValueError(
            f"--batch-size {cfg.batch_size} is the global batch: it must split evenly over {rt.world_size} processes"
        )
    if cfg.val_split not in VAL_SPLITS:
        raise ValueError(f"--val-split must be one of {VAL_SPLITS}, got {cfg.val_split!r}")
    clip = parse_clip(cfg.clip_grad)
    progress = progress if rt.main else None  # one process prints
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _set_seed(cfg.seed)
    ds = load_split(cfg.data, "train", cfg.limit)
    x_all = to_tensor(ds)
    if (
        cfg.val_split == "test"
    ):  # validation on the data's own test split (e.g. crops of held-out photographs)
        x_train, x_val = x_all, to_tensor(load_split(cfg.data, "test"))
    else:
        x_train, x_val = train_val_split(x_all, cfg.val_fraction, cfg.seed)
    if cfg.val_items:
        x_val = x_val[: cfg.val_items]
    model = build_model(cfg.model, {"input_shape": list(ds.item_shape), **cfg.model_args})
    model.set_input_stats(x_train.mean(0), x_train.std(0))
    prior_trained = False  # a start whose entropy model came along keeps it (no refit to the first batch)
    if cfg.init_checkpoint:
        start = load_checkpoint(cfg.init_checkpoint, for_export=False)[0]
        if hasattr(model, "init_from"):  # e.g. a spatial model taking another entropy model's transforms
            prior_trained = bool(model.init_from(start))
        else:
            model.load_state_dict(start.state_dict())
    if hasattr(
        model, "codebook"
    ):  # vector quantiser: Lloyd iterations, not gradient steps (training/vq_lloyd.py)
        from training.vq_lloyd import (
            train_vq,  # on the CPU; under torchrun every process runs the same iterations
        )

        record = train_vq(model, x_train, x_val, cfg, progress)
        record["data"] = _data_record(cfg, ds, len(x_train), len(x_val))
        record["device"] = {"type": "cpu", "processes": rt.world_size, "items_per_process": len(x_train)}
        return model.eval(), record
    corrupt = Corruption.from_config(cfg)  # denoising (identity when off)
    reg = Regularizers.from_config(
        cfg, model, denoising=corrupt.active
    )  # refuses unregularised overcomplete codes
    model.quant_proxy = cfg.quant_noise
    state_path = Path(cfg.state) if cfg.state else None
    saved = read_state(state_path, cfg) if cfg.resume and state_path and state_path.is_file() else None
    # Stacked pre-training runs on the CPU, before the model moves to its device (a resumed run has done it).
    pre = (
        pretrain_stacked(model, x_train, cfg, corrupt, progress)
        if cfg.pretrain_epochs and not saved
        else None
    )
    rate = None
    if cfg.rd_lambda > 0:
        from training.rate import build_rate

        rate = build_rate(model, cfg.rd_lambda, cfg.rd_distortion, prior_trained)
        first = x_train[: cfg.batch_size]
        with torch.no_grad():  # the prior starts from one fixed batch's codes, the same in every process
            rate.terms(model, model(first), first)
    if rt.distributed:
        torch.manual_seed(cfg.seed + rt.rank)  # same weights everywhere (above), own noise draws from here
    accelerate(model, cfg.channels_last, cfg.compile)
    objective = Objective(model, rate, reg, amp).to(rt.device)
    step_fn = DistributedDataParallel(objective) if rt.distributed else objective
    opt = torch.optim.Adam(objective.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=amp == torch.float16)  # fp16 only
    local_batch = cfg.batch_size // rt.world_size
    n = len(x_train)
    per_epoch = math.ceil((n - n % rt.world_size) // rt.world_size / local_batch)
    if per_epoch == 0:
        raise ValueError(f"{n} training items are too few for {rt.world_size} process(es)")
    total = cfg.steps or cfg.epochs * per_epoch
    epochs = math.ceil(total / per_epoch)
    sched = build_scheduler(opt, cfg.schedule, cfg.lr, total, cfg.warmup, cfg.lr_final)
    clipper, guard = GradClipper(clip), DivergenceGuard(cfg.guard)
    stopper = EarlyStopping(cfg.patience)  # --patience: stop when validation stops improving
    gens = (corrupt.generator, getattr(reg, "generator", None))
    # A fine-tune that blows up (GDN at the learning-rate peak, once in a while) stops after that epoch and says
    # so in the record (bench/train_ladder.py then trains the rung again at a lower rate).
    start_val = evaluate(model, x_val)["loss"] if cfg.init_checkpoint and len(x_val) and not saved else None
    # The position and what the run has recorded so far: all of it goes into the state and the snapshots.
    run: dict = {
        "epoch": 1,
        "index": 0,
        "step": 0,
        "total": 0.0,
        "count": 0,
        "history": [],
        "curve": [],
        "elapsed": 0.0,
        "cpu": 0.0,
        "sessions": [],
        "start_val": start_val,
        "stopped_early": False,
    }

    def apply_lr() -> None:
        for g, lr in zip(opt.param_groups, sched.get_last_lr()):
            g["lr"] = lr * guard.lr_scale

    def capture() -> dict:
        """The state a rollback restores (position, weights, optimizer, schedule, clipping, generators)."""
        return {
            "position": {k: run[k] for k in ("epoch", "index", "step", "total", "count")},
            "lengths": [len(run["history"]), len(run["curve"])],
            "objective": objective.state_dict(),
            "rate_started": bool(getattr(rate, "_started", False)),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(),
            "clipper": clipper.state_dict(),
            "rng": rng_state(*gens),
            "guard_stats": guard.stats(),
        }

    def restore(s: dict) -> None:
        run.update(s["position"])
        del run["history"][s["lengths"][0] :], run["curve"][s["lengths"][1] :]
        objective.load_state_dict(s["objective"])
        if rate is not None:
            rate._started = s["rate_started"]
        opt.load_state_dict(s["optimizer"])
        sched.load_state_dict(s["scheduler"])
        scaler.load_state_dict(s["scaler"])
        clipper.load_state_dict(s["clipper"])
        if rt.main:  # under torchrun the other processes keep their own noise
            set_rng_state(s["rng"], *gens)
        apply_lr()

    t_session, c_session = time.perf_counter(), time.process_time()

    def elapsed() -> float:
        return run["elapsed"] + time.perf_counter() - t_session

    def cpu() -> float:  # this process's CPU time: what a loaded, shared machine does not inflate
        return run["cpu"] + time.process_time() - c_session

    def save_state(finished: bool = False) -> None:
        if state_path is None or not rt.main:
            return
        run["sessions"][-1].update(to_step=run["step"], seconds=time.perf_counter() - t_session)
        write_state(
            state_path,
            {
                "config": config_dict(cfg),
                "now": capture(),
                "guard": guard.state_dict(),
                "stopper": stopper.state_dict(),
                "run": {
                    **{k: v for k, v in run.items() if k not in ("elapsed", "cpu")},
                    "elapsed": elapsed(),
                    "cpu": cpu(),
                },
                "finished": finished,
            },
        )

    if saved is not None:
        restore(saved["now"])
        run.update(
            {k: v for k, v in saved["run"].items() if k not in ("epoch", "index", "step", "total", "count")}
        )
        guard.load_state_dict(saved["guard"])
        stopper.load_state_dict(saved["stopper"])
        apply_lr()
        if rt.distributed:  # rank 0's generator state is restored; the others draw afresh
            torch.manual_seed(cfg.seed + rt.rank + 7919 * len(run["sessions"]))
        if progress is not None:
            print(
                f"resumed {state_path} at step {run['step']} of {total} (epoch {run['epoch']}, "
                f"{run['elapsed'] / 60:.1f} min trained before)",
                file=sys.stderr,
            )
    run["sessions"].append(
        {"from_step": run["step"], "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    )
    finished = bool(saved and saved.get("finished"))
    last_save = time.monotonic()
    order, order_epoch = None, 0
    bar = None

    def validate() -> dict:
        val = evaluate(model, x_val, rd_lambda=cfg.rd_lambda) if len(x_val) else {}
        objective.train()
        return val

    objective.train()
    while not finished and run["step"] < total:
        epoch = run["epoch"]
        if order_epoch != epoch:
            order = epoch_order(n, epoch, cfg.seed, rt.rank, rt.world_size)
            order_epoch = epoch
            if bar is not None:
                bar.close()
            bar = tqdm(
                total=min(per_epoch, total - (epoch - 1) * per_epoch),
                initial=run["index"] // local_batch,
                desc=f"epoch {epoch}/{epochs}",
                disable=not progress,
                leave=False,
                file=sys.stderr,
            )
        assert order is not None
        i = run["index"]
        xb = x_train[order[i : i + local_batch]]
        x_in = corrupt(xb)  # denoising: the model sees x~, the loss compares with the clean xb
        loss = step_fn(x_in.to(rt.device), xb.to(rt.device))
        value = float(loss.detach())
        seen = rt.sum(value) / rt.world_size if guard.enabled else value  # every process decides alike
        opt.zero_grad(set_to_none=True)
        norm = 0.0
        if (
            math.isfinite(seen) or not guard.enabled
        ):  # without the guard a non-finite loss goes through, as ever
            scaler.scale(loss).backward()
            scaler.unscale_(opt)  # clip the true gradients (a no-op without fp16)
            norm = clipper(objective.parameters())
        reason = guard.diverged(seen, 0.0 if scaler.is_enabled() else norm)
        if reason is not None:
            where = {"epoch": epoch, "step": run["step"], "seconds": round(elapsed(), 1)}
            back = guard.rollback(reason, where)
            if progress is not None:
                print(
                    f"step {run['step']}: diverged ({reason}); "
                    + (
                        f"back to step {back['position']['step']} at {guard.lr_scale:g} x the learning rate"
                        if back
                        else "no rollbacks left: stopping at the last good state"
                    ),
                    file=sys.stderr,
                )
            if back is None:  # stop at the last good state, with a record of where it got to
                if guard.snapshots:
                    restore(guard.snapshots[0])
                val = validate()
                run["history"].append(
                    {
                        "epoch": run["epoch"],
                        "step": run["step"],
                        "diverged": True,
                        **{f"val_{k}": v for k, v in val.items()},
                        "seconds": elapsed(),
                    }
                )
                run["stopped_early"] = True
                break
            restore(back)
            order_epoch = 0  # the snapshot may lie in an earlier epoch
            continue
        scaler.step(opt)
        scaler.update()
        sched.step()
        apply_lr()
        run["total"] += value * len(xb)
        run["count"] += len(xb)
        run["step"] += 1
        run["index"] = i + local_batch
        bar.update(1)
        bar.set_postfix(loss=f"{value:.2f}", refresh=False)
        if guard.want_snapshot():
            guard.keep(capture())
        epoch_done = run["index"] >= len(order) or run["step"] >= total
        if cfg.val_every and run["step"] % cfg.val_every == 0 and not epoch_done:
            run["curve"].append(
                {
                    "step": run["step"],
                    "epoch": epoch,
                    "seconds": elapsed(),
                    "cpu_seconds": cpu(),
                    "lr": opt.param_groups[0]["lr"],
                    "train_loss_avg": guard.ema,
                    **{f"val_{k}": v for k, v in validate().items()},
                }
            )
            if progress is not None:
                c = run["curve"][-1]
                print(
                    f"step {c['step']}/{total}: val PSNR {c.get('val_psnr', float('nan')):.2f} dB"
                    + (f", {c['val_bpp']:.3f} bpp" if "val_bpp" in c else "")
                    + f", train loss avg {c['train_loss_avg'] or float('nan'):.4g}, lr {c['lr']:.2e}, {c['seconds'] / 60:.1f} min",
                    file=sys.stderr,
                    flush=True,
                )
        if epoch_done:
            val = validate()
            rec = {
                "epoch": epoch,
                "step": run["step"],
                "train_loss": rt.sum(run["total"]) / (max(run["count"], 1) * rt.world_size),
                **{f"val_{k}": v for k, v in val.items()},
                "seconds": elapsed(),
                "lr": opt.param_groups[0]["lr"],
            }
            rec.update(reg.epoch_report(progress))  # sparse: mean code activation rho_hat per unit
            run["history"].append(rec)
            run["curve"].append(
                {
                    "step": run["step"],
                    "epoch": epoch,
                    "seconds": rec["seconds"],
                    "cpu_seconds": cpu(),
                    "lr": rec["lr"],
                    "train_loss_avg": guard.ema,
                    **{f"val_{k}": v for k, v in val.items()},
                }
            )
            run.update(epoch=epoch + 1, index=0, total=0.0, count=0)
            if progress is not None:  # None: silent (tests); False: no bar, one line per epoch
                bpp = f"  val {val['bpp']:.3f} bpp" if "bpp" in val else ""
                print(
                    f"epoch {epoch}: train loss {rec['train_loss']:.3f}  val loss {val.get('loss', float('nan')):.3f}  "
                    f"val PSNR {val.get('psnr', float('nan')):.2f} dB{bpp}",
                    file=sys.stderr,
                )
            if stopper.update(epoch, val.get("loss"), model):
                run["stopped_early"] = True
                break
            sv = run["start_val"]
            if sv is not None and not val.get("loss", 0.0) < BLOW_UP * max(sv, 1e-9):
                run["history"][-1]["diverged"] = (
                    True  # not finite, or BLOW_UP times worse than where it started
                )
                run["stopped_early"] = True
                break
        due = cfg.checkpoint_minutes and time.monotonic() - last_save >= 60 * cfg.checkpoint_minutes
        session_over = bool(
            (cfg.stop_at_step and run["step"] >= cfg.stop_at_step)
            or (cfg.stop_after_minutes and time.perf_counter() - t_session >= 60 * cfg.stop_after_minutes)
            or _STOP.is_set()
        )
        if rt.distributed:  # every process stops at the same step (rank 0 writes the state)
            session_over = rt.sum(float(session_over)) > 0
        if run["step"] < total and (due or session_over):
            save_state()
            last_save = time.monotonic()
            if session_over:
                if bar is not None:
                    bar.close()
                raise Stopped(run["step"], total, state_path)
    if bar is not None:
        bar.close()
    history = run["history"]
    stopped = stopper.finish(model, len(history))  # the best epoch's weights, in every process
    distributed.check_in_step(objective)
    objective.cpu()  # the checkpoint, the prior's tables and export work on the CPU
    record = {
        "history": history,
        "curve": run["curve"],
        "data": _data_record(cfg, ds, len(x_train), len(x_val)),
        "train_seconds": elapsed(),  # every session's training time, summed
        "train_cpu_seconds": cpu(),
        "sessions": run["sessions"],
        "steps": {"done": run["step"], "planned": total, "per_epoch": per_epoch},
        "stability": {"schedule": cfg.schedule, **clipper.report(), **guard.report()},
        "device": {
            "type": rt.device.type,
            "processes": rt.world_size,
            "items_per_process": (n - n % rt.world_size) // rt.world_size,
        },
    }
    if pre is not None:
        record["pretraining"] = pre
    if stopped:
        record["early_stopping"] = stopped
    if guard.events and guard.events[-1].get("stopped"):
        if history:
            history[-1]["diverged"] = True
        record["diverged"] = True
    if rate is not None:  # the learned prior, tabulated on the integer grid, for export (--quant learned)
        record["rate_prior"] = rate.export_record(model, x_train)
    save_state(finished=True)
    return model, record


def save_checkpoint(path: str | Path, model, cfg: TrainConfig, record: dict) -> Path:
    """Rank 0 writes (under torchrun the others wait until the file exists, then may read it)."""
    path = Path(path)
    if distributed.is_main():
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "model": model.registry_name,
                "model_args": model.args,
                "state_dict": model.state_dict(),
                "config": asdict(cfg),
                # JSON text: weights_only loading accepts it whatever the nesting.
                "record_json": json.dumps(record),
            },
            path,
        )
    distributed.barrier()
    return path


def load_checkpoint(path: str | Path, for_export: bool = True):
    """-> (model in eval mode, config dict, record dict). Rebuilds from stored constructor args.

    training.export reads checkpoints through here: a model whose bundle format does not exist yet says so
    (model.export_refusal()) instead of failing deep inside the export; training passes for_export=False.
    """
    path = Path(path)
    if not path.is_file():
        raise CodecError(f"checkpoint not found: {path}")
    try:
        ck = torch.load(path, weights_only=True, map_location="cpu")
        model = build_model(ck["model"], ck["model_args"])
        model.load_state_dict(ck["state_dict"])
    except (KeyError, RuntimeError, EOFError, ValueError) as exc:
        raise CodecError(f"{path}: not a valid checkpoint ({exc})") from None
    refusal = model.export_refusal() if for_export and hasattr(model, "export_refusal") else None
    if refusal:
        raise CodecError(f"{path}: {refusal}")
    model.eval()
    return model, ck["config"], json.loads(ck.get("record_json", "{}"))


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="aecodec-train", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="conv", choices=model_names())
    p.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model constructor argument (Python literal), e.g. code_dim=32 or channels=(16,32)",
    )
    p.add_argument(
        "--data",
        default="fashion-mnist",
        help="fashion-mnist | digits | an IDX folder, .npz, or image folder",
    )
    p.add_argument("--data-dir", dest="data", help="alias of --data for an IDX folder")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument(
        "--rd-lambda", type=float, default=0.0, help="rate-distortion training: weight of bits per item"
    )
    p.add_argument(
        "--quant-noise",
        default="none",
        choices=["none", "noise", "ste", "mixed"],
        help="quantisation-aware training: how the decoder sees rounded codes",
    )
    p.add_argument("--rd-distortion", default="mse", choices=["mse", "model"])
    p.add_argument(
        "--mask-noise", type=float, default=0.0, metavar="Q", help="denoising: masking probability q"
    )
    p.add_argument(
        "--gauss-noise", type=float, default=0.0, metavar="SIGMA", help="denoising: additive Gaussian sigma"
    )
    p.add_argument(
        "--block-noise",
        type=int,
        default=0,
        metavar="SIZE",
        help="denoising / inpainting: a SIZE x SIZE hole (set to 0) at a random place in each item",
    )
    p.add_argument(
        "--noise-mix",
        action="store_true",
        help="give each item one of the active corruptions (chosen uniformly) instead of all of them",
    )
    p.add_argument(
        "--noise-clip", action="store_true", help="clip corrupted inputs to [0, 1], as pixels a device sends"
    )
    p.add_argument(
        "--l1", type=float, default=0.0, metavar="LAMBDA", help="sparse: L1 penalty on code activations"
    )
    p.add_argument(
        "--kl-sparsity",
        type=float,
        default=0.0,
        metavar="BETA",
        help="sparse: KL penalty towards --sparsity-target (needs code_activation='sigmoid')",
    )
    p.add_argument("--sparsity-target", type=float, default=TrainConfig.sparsity_target, metavar="RHO")
    p.add_argument(
        "--contractive",
        type=float,
        default=0.0,
        metavar="LAMBDA",
        help="contractive: squared Frobenius norm of the encoder Jacobian",
    )
    p.add_argument(
        "--contractive-samples",
        type=int,
        default=0,
        metavar="M",
        help="contractive: 0 = exact norm; M = unbiased estimate from M random projections (faster)",
    )
    p.add_argument(
        "--pretrain-epochs",
        type=int,
        default=0,
        metavar="N",
        help="stacked: greedy layer-wise pre-training epochs per layer, then --epochs of fine-tuning",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=0,
        metavar="N",
        help="early stopping: stop after N epochs without a better validation loss, keep the best weights",
    )
    p.add_argument(
        "--schedule",
        default=TrainConfig.schedule,
        choices=SCHEDULES,
        help="onecycle: 15 %% warm-up then cosine decay; cosine: --warmup, then a cosine down to --lr-final x --lr",
    )
    p.add_argument(
        "--warmup", type=float, default=TrainConfig.warmup, help="cosine: warm-up fraction of the steps"
    )
    p.add_argument(
        "--lr-final", type=float, default=TrainConfig.lr_final, help="cosine: last rate / peak rate"
    )
    p.add_argument(
        "--clip-grad",
        default=TrainConfig.clip_grad,
        help="gradient-norm clipping: auto (3 x the median of the last 200 norms), off, or a fixed bound",
    )
    p.add_argument(
        "--no-guard",
        action="store_true",
        help="no divergence guard (by default a loss blow-up rolls back to the last good state at half the rate)",
    )
    p.add_argument(
        "--steps", type=int, default=0, help="total optimizer steps instead of --epochs (0 = epochs)"
    )
    p.add_argument("--val-every", type=int, default=0, metavar="STEPS", help="validate every N steps too")
    p.add_argument(
        "--val-items", type=int, default=0, help="validate on the first N validation items (0 = all)"
    )
    p.add_argument(
        "--val-split",
        default=TrainConfig.val_split,
        choices=VAL_SPLITS,
        help="validate on --val-fraction of the training split, or on the data's test split",
    )
    p.add_argument("--val-fraction", type=float, default=TrainConfig.val_fraction)
    p.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=0.0,
        help="write the training state (OUT.state.pt) this often, mid-epoch too",
    )
    p.add_argument("--resume", action="store_true", help="continue from the training state when it exists")
    p.add_argument("--state", type=Path, default=None, help="the training-state file (default: OUT.state.pt)")
    p.add_argument(
        "--stop-at-step", type=int, default=0, help="end this session at this step (state written)"
    )
    p.add_argument("--stop-after-minutes", type=float, default=0.0, help="end this session after this long")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument(
        "--channels-last", action="store_true", help="4-d weights in channels-last layout (faster CPU steps)"
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model's forward: faster CPU steps after a minute or two of compiling",
    )
    p.add_argument(
        "--device",
        default=TrainConfig.device,
        choices=distributed.DEVICES,
        help="auto = cuda when torch sees a GPU, else cpu; under torchrun each process takes cuda:LOCAL_RANK",
    )
    p.add_argument(
        "--amp",
        default=TrainConfig.amp,
        choices=list(distributed.AMP_DTYPES),
        help="mixed precision for the forward pass on CUDA (plain, denoising and sparse training only)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True, type=Path, help="checkpoint path (.pt)")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    model_args = {}
    for kv in args.arg:
        if "=" not in kv:
            raise CodecError(f"--arg {kv!r}: expected KEY=VALUE")
        k, v = kv.split("=", 1)
        model_args[k.strip()] = _parse_value(v.strip())
    resumable = bool(
        args.checkpoint_minutes or args.resume or args.state or args.stop_at_step or args.stop_after_minutes
    )
    return TrainConfig(
        model=args.model,
        model_args=model_args,
        data=args.data,
        limit=args.limit,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        threads=args.threads,
        device=args.device,
        amp=args.amp,
        rd_lambda=args.rd_lambda,
        quant_noise=args.quant_noise,
        rd_distortion=args.rd_distortion,
        mask_noise=args.mask_noise,
        gauss_noise=args.gauss_noise,
        block_noise=args.block_noise,
        noise_mix=args.noise_mix,
        noise_clip=args.noise_clip,
        l1=args.l1,
        kl_sparsity=args.kl_sparsity,
        sparsity_target=args.sparsity_target,
        contractive=args.contractive,
        contractive_samples=args.contractive_samples,
        pretrain_epochs=args.pretrain_epochs,
        patience=args.patience,
        val_fraction=args.val_fraction,
        schedule=args.schedule,
        warmup=args.warmup,
        lr_final=args.lr_final,
        clip_grad=str(args.clip_grad),
        guard=not args.no_guard,
        steps=args.steps,
        val_every=args.val_every,
        val_items=args.val_items,
        val_split=args.val_split,
        state=str(args.state or state_path_for(args.out)) if resumable else "",
        checkpoint_minutes=args.checkpoint_minutes,
        resume=args.resume,
        stop_at_step=args.stop_at_step,
        stop_after_minutes=args.stop_after_minutes,
        channels_last=args.channels_last,
        compile=args.compile,
    )


def _request_stop(signum, frame) -> None:
    _STOP.set()  # the loop writes the state after the current step and raises Stopped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = config_from_args(args)
        if cfg.state:  # a resumable run: a signal ends it cleanly, with its state written
            signal.signal(signal.SIGTERM, _request_stop)
            signal.signal(signal.SIGINT, _request_stop)
        model, record = train(cfg, progress=not args.no_progress)
        path = save_checkpoint(args.out, model, cfg, record)
        main_process = distributed.is_main()
    except Stopped as stop:
        if distributed.is_main():
            print(
                f"{stop}: training state in {stop.state}; the same command with --resume continues it",
                file=sys.stderr,
            )
        return 3
    except (CodecError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        distributed.teardown()
    last = record["history"][-1] if record["history"] else {}
    if main_process:
        print(
            f"saved {path}: {cfg.model} {model.args}, val PSNR {last.get('val_psnr', float('nan')):.2f} dB, "
            f"{record['train_seconds']:.0f} s, {record.get('device', {}).get('processes', 1)} process(es)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

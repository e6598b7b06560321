"""Train an autoencoder from the registry and save a checkpoint.

    python -m training.train --model conv --arg code_dim=32 --epochs 3 --out runs/conv.pt
    torchrun --standalone --nproc-per-node 2 -m training.train --model conv ... --out runs/conv.pt

--batch-size is the global batch: under torchrun each of the N processes takes
batch_size / N items of every step (DistributedSampler shards each epoch), and
DistributedDataParallel averages the gradients, so a step sees the same items
and the same learning rate as in one process (training/distributed.py).

The checkpoint holds weights, the constructor arguments and the config, and
loads with ``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from latent_codec.errors import CodecError
from training import distributed
from training.data import load_split, to_tensor, train_val_split
from training.noise import Corruption
from training.registry import build_model, model_names
from training.regularizers import Regularizers
from training.stacked import pretrain_stacked


@dataclass
class TrainConfig:
    model: str = "conv"
    model_args: dict = field(default_factory=dict)  # constructor arguments beyond input_shape
    data: str = "fashion-mnist"  # a datasets.load spec: fashion-mnist, digits, or a path
    limit: int = 0  # use only the first N training items (0 = all); for smoke tests
    epochs: int = 5
    batch_size: int = 128  # the global batch (split over torchrun's processes); small is fastest on 2 cores
    lr: float = 2e-3  # Adam, for the global batch; a short schedule with cosine decay needs a brisk start
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


BLOW_UP = 20.0  # a fine-tune whose validation loss ends an epoch this many times above its start has diverged


def _set_seed(seed: int) -> None:
    torch.manual_seed(seed)


def evaluate(model, x: torch.Tensor, batch_size: int = 1000) -> dict:
    """Mean per-item loss and pixel MSE / PSNR on [0, 1] (batches go to the model's device)."""
    model.eval()
    loss = se = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(model.input_mean.device)
            out = model(xb)
            loss += float(model.reconstruction_loss(out, xb)) * len(xb)
            se += float(((out["x_hat"].clamp(0, 1) - xb) ** 2).sum())
    mse = se / x.numel()
    return {"loss": loss / len(x), "mse": mse, "psnr": -10 * math.log10(max(mse, 1e-10))}


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


def train(cfg: TrainConfig, progress: bool | None = True) -> tuple[torch.nn.Module, dict]:
    """Train and return (model on the CPU, record). The loop: batches, loss, step; validation each epoch.

    Under torchrun every process runs this with its shard of each epoch; all return the same model.
    """
    rt = distributed.setup(cfg.device)
    amp = distributed.check_options(
        cfg.amp, rt.device, cfg.rd_lambda > 0 or cfg.quant_noise != "none", cfg.contractive > 0
    )
    if cfg.batch_size % rt.world_size:
        raise ValueError(
            f"--batch-size {cfg.batch_size} is the global batch: it must split evenly over {rt.world_size} processes"
        )
    progress = progress if rt.main else None  # one process prints
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _set_seed(cfg.seed)
    ds = load_split(cfg.data, "train", cfg.limit)
    x_all = to_tensor(ds)
    x_train, x_val = train_val_split(x_all, cfg.val_fraction, cfg.seed)
    model = build_model(cfg.model, {"input_shape": list(ds.item_shape), **cfg.model_args})
    model.set_input_stats(x_train.mean(0), x_train.std(0))
    if cfg.init_checkpoint:
        start = load_checkpoint(cfg.init_checkpoint)[0]
        if hasattr(model, "init_from"):  # e.g. a spatial model taking another entropy model's transforms
            model.init_from(start)
        else:
            model.load_state_dict(start.state_dict())
    if hasattr(
        model, "codebook"
    ):  # vector quantiser: Lloyd iterations, not gradient steps (training/vq_lloyd.py)
        from training.vq_lloyd import (
            train_vq,  # on the CPU; under torchrun every process runs the same iterations
        )

        record = train_vq(model, x_train, x_val, cfg, progress)
        record["data"] = {
            "spec": cfg.data,
            "source": ds.source,
            "items": len(x_train),
            "val_items": len(x_val),
            "shape": list(ds.item_shape),
        }
        record["device"] = {"type": "cpu", "processes": rt.world_size, "items_per_process": len(x_train)}
        return model.eval(), record
    corrupt = Corruption.from_config(cfg)  # denoising (identity when off)
    reg = Regularizers.from_config(
        cfg, model, denoising=corrupt.active
    )  # refuses unregularised overcomplete codes
    model.quant_proxy = cfg.quant_noise
    t0 = time.perf_counter()
    # Stacked pre-training runs on the CPU, before the model moves to its device.
    pre = pretrain_stacked(model, x_train, cfg, corrupt, progress) if cfg.pretrain_epochs else None
    rate = None
    if cfg.rd_lambda > 0:
        from training.rate import build_rate

        rate = build_rate(model, cfg.rd_lambda, cfg.rd_distortion)
        first = x_train[: cfg.batch_size]
        with torch.no_grad():  # the prior starts from one fixed batch's codes, the same in every process
            rate.terms(model, model(first), first)
    if rt.distributed:
        torch.manual_seed(cfg.seed + rt.rank)  # same weights everywhere (above), own noise draws from here
    objective = Objective(model, rate, reg, amp).to(rt.device)
    step_fn = DistributedDataParallel(objective) if rt.distributed else objective
    opt = torch.optim.Adam(objective.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=amp == torch.float16)  # fp16 only
    # Each epoch: one permutation, the same in every process (seed + epoch), cut into world_size shards.
    sampler = DistributedSampler(
        range(len(x_train)), rt.world_size, rt.rank, shuffle=True, seed=cfg.seed, drop_last=True
    )
    local_batch = cfg.batch_size // rt.world_size
    steps = cfg.epochs * math.ceil(len(sampler) / local_batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 1), pct_start=0.15)
    history = []
    stopper = EarlyStopping(cfg.patience)  # --patience: stop when validation stops improving
    # A fine-tune that blows up (GDN at the learning-rate peak, once in a while) stops after that epoch and says
    # so in the record (bench/train_ladder.py then trains the rung again at a lower rate).
    start_val = evaluate(model, x_val)["loss"] if cfg.init_checkpoint and len(x_val) else None
    for epoch in range(1, cfg.epochs + 1):
        objective.train()
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), dtype=torch.long)
        bar = tqdm(
            range(0, len(order), local_batch),
            desc=f"epoch {epoch}/{cfg.epochs}",
            disable=not progress,
            leave=False,
            file=sys.stderr,
        )  # None and False: no bar
        total = 0.0
        for i in bar:
            xb = x_train[order[i : i + local_batch]]
            x_in = corrupt(xb)  # denoising: the model sees x~, the loss compares with the clean xb
            loss = step_fn(x_in.to(rt.device), xb.to(rt.device))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            total += float(loss.detach()) * len(xb)
            bar.set_postfix(loss=f"{float(loss.detach()):.2f}", refresh=False)
        val = evaluate(model, x_val) if len(x_val) else {}
        rec = {
            "epoch": epoch,
            "train_loss": rt.sum(total) / (len(order) * rt.world_size),
            **{f"val_{k}": v for k, v in val.items()},
            "seconds": time.perf_counter() - t0,
        }
        rec.update(reg.epoch_report(progress))  # sparse: mean code activation rho_hat per unit
        history.append(rec)
        if progress is not None:  # None: silent (tests); False: no bar, one line per epoch
            print(
                f"epoch {epoch}: train loss {rec['train_loss']:.3f}  val loss {val.get('loss', float('nan')):.3f}  "
                f"val PSNR {val.get('psnr', float('nan')):.2f} dB",
                file=sys.stderr,
            )
        if stopper.update(epoch, val.get("loss"), model):
            break
        if start_val is not None and not val.get("loss", 0.0) < BLOW_UP * max(start_val, 1e-9):
            history[-1]["diverged"] = True  # not finite, or BLOW_UP times worse than where it started
            break
    stopped = stopper.finish(model, len(history))  # the best epoch's weights, in every process
    distributed.check_in_step(objective)
    objective.cpu()  # the checkpoint, the prior's tables and export work on the CPU
    record = {
        "history": history,
        "data": {
            "spec": cfg.data,
            "source": ds.source,
            "items": len(x_train),
            "val_items": len(x_val),
            "shape": list(ds.item_shape),
        },
        "train_seconds": time.perf_counter() - t0,
        "device": {"type": rt.device.type, "processes": rt.world_size, "items_per_process": len(sampler)},
    }
    if pre is not None:
        record["pretraining"] = pre
    if stopped:
        record["early_stopping"] = stopped
    if rate is not None:  # the learned prior, tabulated on the integer grid, for export (--quant learned)
        record["rate_prior"] = rate.export_record(model, x_train)
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


def load_checkpoint(path: str | Path):
    """-> (model in eval mode, config dict, record dict). Rebuilds from stored constructor args."""
    path = Path(path)
    if not path.is_file():
        raise CodecError(f"checkpoint not found: {path}")
    try:
        ck = torch.load(path, weights_only=True, map_location="cpu")
        model = build_model(ck["model"], ck["model_args"])
        model.load_state_dict(ck["state_dict"])
    except (KeyError, RuntimeError, EOFError, ValueError) as exc:
        raise CodecError(f"{path}: not a valid checkpoint ({exc})") from None
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
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
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = config_from_args(args)
        model, record = train(cfg, progress=not args.no_progress)
        path = save_checkpoint(args.out, model, cfg, record)
        main_process = distributed.is_main()
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

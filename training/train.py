"""Train an autoencoder from the registry and save a checkpoint.

    python -m training.train --model conv --arg code_dim=32 --epochs 3 --out runs/conv.pt

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
from tqdm import tqdm

from latent_codec.errors import CodecError
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
    batch_size: int = 128  # small batches train these tiny models fastest on 2 cores
    lr: float = 2e-3  # Adam; a short schedule with cosine decay needs a brisk start
    weight_decay: float = 0.0  # L2 on weights (the notes' regularised autoencoder)
    val_fraction: float = 0.1  # held out from train for the per-epoch validation loss
    seed: int = 0
    threads: int = 0  # torch intra-op threads (0 = torch's default)
    # Autoencoder family (docs/models.md): denoising, sparse, contractive, stacked. 0 = off.
    mask_noise: float = 0.0  # denoising: each input pixel set to 0 with probability q (training/noise.py)
    gauss_noise: float = 0.0  # denoising: additive N(0, sigma^2) on [0, 1] inputs
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


def _set_seed(seed: int) -> None:
    torch.manual_seed(seed)


def evaluate(model, x: torch.Tensor, batch_size: int = 1000) -> dict:
    """Mean per-item loss and pixel MSE / PSNR on [0, 1]."""
    model.eval()
    loss = se = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size]
            out = model(xb)
            loss += float(model.reconstruction_loss(out, xb)) * len(xb)
            se += float(((out["x_hat"].clamp(0, 1) - xb) ** 2).sum())
    mse = se / x.numel()
    return {"loss": loss / len(x), "mse": mse, "psnr": -10 * math.log10(max(mse, 1e-10))}


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
    """Train and return (model, record). The loop: batches, loss, step; validation each epoch."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _set_seed(cfg.seed)
    ds = load_split(cfg.data, "train", cfg.limit)
    x_all = to_tensor(ds)
    x_train, x_val = train_val_split(x_all, cfg.val_fraction, cfg.seed)
    model = build_model(cfg.model, {"input_shape": list(ds.item_shape), **cfg.model_args})
    model.set_input_stats(x_train.mean(0), x_train.std(0))
    if cfg.init_checkpoint:
        model.load_state_dict(load_checkpoint(cfg.init_checkpoint)[0].state_dict())
    if hasattr(model, "codebook"):  # vector quantiser: Lloyd iterations, not gradient steps (training/vq.py)
        from training.vq import train_vq

        record = train_vq(model, x_train, x_val, cfg, progress)
        record["data"] = {
            "spec": cfg.data,
            "source": ds.source,
            "items": len(x_train),
            "val_items": len(x_val),
            "shape": list(ds.item_shape),
        }
        return model.eval(), record
    corrupt = Corruption.from_config(cfg)  # denoising (identity when off)
    reg = Regularizers.from_config(
        cfg, model, denoising=corrupt.active
    )  # refuses unregularised overcomplete codes
    model.quant_proxy = cfg.quant_noise
    rate = None
    if cfg.rd_lambda > 0:
        from training.rate import build_rate

        rate = build_rate(model, cfg.rd_lambda, cfg.rd_distortion)
    params = list(model.parameters()) + (list(rate.parameters()) if rate is not None else [])
    opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(x_train) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 1), pct_start=0.15)
    g = torch.Generator().manual_seed(cfg.seed)
    history = []
    t0 = time.perf_counter()
    pre = pretrain_stacked(model, x_train, cfg, corrupt, progress) if cfg.pretrain_epochs else None
    stopper = EarlyStopping(cfg.patience)
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        perm = torch.randperm(len(x_train), generator=g)
        bar = tqdm(
            range(0, len(x_train), cfg.batch_size),
            desc=f"epoch {epoch}/{cfg.epochs}",
            disable=not progress,
            leave=False,
            file=sys.stderr,
        )  # None and False: no bar
        total = 0.0
        for i in bar:
            xb = x_train[perm[i : i + cfg.batch_size]]
            x_in = corrupt(xb)  # denoising: the model sees x~, the loss compares with the clean xb
            out = model(x_in)
            loss = model.reconstruction_loss(out, xb) if rate is None else rate.loss(model, out, xb)
            loss = loss + reg(model, x_in, out)  # sparse / contractive penalties (0 when off)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(xb)
            bar.set_postfix(loss=f"{float(loss.detach()):.2f}", refresh=False)
        val = evaluate(model, x_val) if len(x_val) else {}
        rec = {
            "epoch": epoch,
            "train_loss": total / len(x_train),
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
    stopped = stopper.finish(model, len(history))
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
    }
    if pre is not None:
        record["pretraining"] = pre
    if stopped:
        record["early_stopping"] = stopped
    if rate is not None:  # the learned prior, tabulated on the integer grid, for export (--quant learned)
        record["rate_prior"] = rate.export_record(model, x_train)
    return model, record


def save_checkpoint(path: str | Path, model, cfg: TrainConfig, record: dict) -> Path:
    path = Path(path)
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
        rd_lambda=args.rd_lambda,
        quant_noise=args.quant_noise,
        rd_distortion=args.rd_distortion,
        mask_noise=args.mask_noise,
        gauss_noise=args.gauss_noise,
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
    except (CodecError, ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = save_checkpoint(args.out, model, cfg, record)
    last = record["history"][-1] if record["history"] else {}
    print(
        f"saved {path}: {cfg.model} {model.args}, val PSNR {last.get('val_psnr', float('nan')):.2f} dB, "
        f"{record['train_seconds']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train the rate ladder: one base autoencoder, then one rate-distortion fine-tune and bundle per lambda.

    python -m bench.train_ladder                      # every preset (DEFAULT_PRESETS, in turn) -> zoo/
    python -m bench.train_ladder --preset conv --epochs 6        # one preset, a flag overridden
    python -m bench.train_ladder --data digits:28 --out /tmp/ladder  # other data: the map ladder (recipe preset)
    python -m bench.train_ladder --model dense --args '{"code_dim": 16}' --lambdas 0.01,0.04 --limit 5000 --out /tmp/ladder
    torchrun --standalone --nproc-per-node 2 -m bench.train_ladder --preset conv --threads 1   # 2 processes

Each rung is trained with loss = squared error + lambda * bits under the
learned prior (straight-through rounding for the decoder, additive uniform
noise for the rate). A model with a PCA start (linres) starts every rung from
PCA at that rung's step; any other model is chained: the first rung trains
from scratch (or from a --base-epochs plain base) for --first-epochs, and each
later rung starts from the one before, so the lambdas run from the highest
rate to the lowest and every rung inherits the features already learned; with --start-from each rung
starts from another ladder's rung of the same lambda (spatial-factorized takes the spatial ladder's
transforms). --resume reuses a rung whose checkpoint was trained with exactly its config. Each bundle's
manifest carries its measured test bytes/item and PSNR; docs/rd_ladder_NAME.json summarises each ladder.
Each rung is training.train's train(), so under torchrun every process trains
its shard (--batch-size is the global batch) and only rank 0 writes
checkpoints, bundles and the summary.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from pathlib import Path

from latent_codec.errors import CodecError

# The conv ladder's model (the chained conv preset and the long conv-long rung).
CONV_ARGS = {
    "channels": [32, 32],
    "pool": "stride",
    "kernel": 5,
    "hidden": 256,
    "code_dim": 64,
    "output": "linear",
}
# The photo ladder's model (both stages): GDN, 3x3 kernels, mean-and-scale hyperprior (docs/photo_training.md).
PHOTO_ARGS = {"channels": 64, "code_channels": 32, "hyper_channels": 24, "entropy": "meanscale", "kernel": 3}
PHOTO_DEEP_ARGS = {**PHOTO_ARGS, "code_channels": 64, "hyper_channels": 48, "downsamples": 3}
# What the photo ladder's three stages share (photo, photo-long, photo-checkerboard); the later two continue each
# rung from its own lambda's checkpoint of the stage before under a fresh cosine schedule at this rate, half the
# first stage's peak.
PHOTO_RECIPE = {
    "data": "data/crops/photo-64.npz",
    "lr": 5e-4,
    "batch_size": 16,
    "threads": 1,
    "schedule": "cosine",
    "val_split": "test",
    "val_items": 500,
    "val_every": 500,
    "checkpoint_minutes": 10,
}

# The committed ladder (docs/rd.md) is three presets, one per stretch of the rate axis. Each preset's values
# are the defaults of the flags below; any flag given on the command line overrides them.
PRESETS: dict[str, dict] = {
    # ~3 bytes/item: one 12-bit index fills the ANS coder's minimum payload (Lloyd iterations, ~2 min); the
    # 4096 codewords live in the top-64 PCA subspace, so the bundle holds 4096 x 64 numbers, not 4096 x 784.
    "vq": {"model": "vq", "args": {"codewords": 4096, "subspace": 64}, "lambdas": "0", "epochs": 15},
    # ~4-12 bytes/item: 5x5 strided convolutions and an MLP to a 64-dim global code, chained from the
    # highest rate down (10 epochs from scratch, then 4 per rung; ~12 min).
    "conv": {
        "model": "conv",
        "args": CONV_ARGS,
        "lambdas": "0.03,0.1,0.3,1",
        "first_epochs": 10,
        "epochs": 4,
        "lr": 2e-3,
        "batch_size": 128,
    },
    # ~7 bytes/item: the conv preset's model at one rate trained 30 epochs from scratch instead of chained (10 + 4
    # epochs): the same PSNR as the chained lambda-0.1 rung at 15 % fewer bytes (issue 26's learning curve, ~45 min
    # on one core).
    "conv-long": {
        "model": "conv",
        "args": CONV_ARGS,
        "lambdas": "0.13",
        "first_epochs": 30,
        "lr": 2e-3,
        "batch_size": 128,
        "bundle_name": "conv",
    },
    # The same model and schedule at lambda 0.06, from scratch on its own: the rung that reaches 20 dB at under
    # 8 bytes once range-coded (issue 26; ~70 minutes on one core shared with two other trainings).
    "conv-long-0.06": {
        "model": "conv",
        "args": CONV_ARGS,
        "lambdas": "0.06",
        "first_epochs": 30,
        "lr": 2e-3,
        "batch_size": 128,
        "bundle_name": "conv",
        "threads": 1,
        "checkpoint_minutes": 10,
        "runs": "runs/conv-long-0.06",
    },
    # ~25-60 bytes/item: PCA-initialised linear path + MLP corrections, every rung from PCA (~3 min).
    "linres": {
        "model": "linres",
        "args": {"code_dim": 128, "hidden": 512},
        "lambdas": "0.035,0.012,0.004,0.0015",
        "epochs": 2,
        "lr": 1e-3,
        "batch_size": 256,
    },
    # ~40-290 bytes/item: spatial code maps (7x7x32 for 28x28) with GDN and an integer hyperprior, chained
    # from the highest rate down: lambda 0.0001 trained 16 epochs from scratch, then 4 epochs per rung, each from
    # the rung before it. Starting the chain at 0.0001 rather than 0.0004 (the ladder before 2026-12-07) gave the
    # rungs 0.2-2.3 dB more at equal bytes (docs/training_length.md); 109 minutes on one shared core.
    "spatial": {
        "model": "spatial",
        "args": {"channels": 64, "code_channels": 32, "hyper_channels": 24, "entropy": "hyperprior"},
        "lambdas": "0.0001,0.0002,0.0004,0.0008,0.0016,0.0032,0.0064,0.0128,0.0256",
        "first_epochs": 16,
        "epochs": 4,
        "lr": 1e-3,
        "batch_size": 32,
    },
    # The spatial chain's second stage: every rung from 0.0004 to 0.0256 (the rungs the 24-36 dB comparison
    # uses) continues from its own lambda's first-stage checkpoint for another 4 epochs under a fresh cosine
    # schedule at half the first stage's peak rate (a warm restart, as photo-long); its bundles keep the first
    # stage's names (zoo/spatial-lambda-L). The zoo's were continued from the committed first stage
    # (--start-from checkpoints/spatial; their own checkpoints are in checkpoints/spatial-long). Rungs are
    # independent, so two processes can share the lambdas (--lambdas ... --checkpoints-only, then one run with
    # --resume exports them all).
    "spatial-long": {
        "model": "spatial",
        "args": {"channels": 64, "code_channels": 32, "hyper_channels": 24, "entropy": "hyperprior"},
        "lambdas": "0.0004,0.0008,0.0016,0.0032,0.0064,0.0128,0.0256",
        "start_from": "runs/rd-ladder-spatial",
        "epochs": 4,
        "bundle_name": "spatial",
        "lr": 5e-4,
        "batch_size": 32,
        "threads": 1,
        "schedule": "cosine",
        "checkpoint_minutes": 10,
        "runs": "runs/spatial-long",
    },
    # The same maps with a per-channel factorised prior instead of the hyperprior, at two rates: each rung starts
    # from the hyperprior ladder's transforms at the same lambda and trains 4 epochs, as the hyperprior rungs do,
    # so the two entropy models are compared on equal footing (run after the spatial preset). The committed
    # zoo/spatial-factorized-lambda-0.0064 was fine-tuned from the chain before 2026-12-07 (its summary,
    # docs/rd_ladder_spatial-factorized.json, names the checkpoint).
    "spatial-factorized": {
        "model": "spatial",
        "args": {"channels": 64, "code_channels": 32, "entropy": "factorized"},
        "lambdas": "0.0016,0.0064",
        "start_from": "runs/rd-ladder-spatial",
        "epochs": 4,
        "lr": 1e-3,
        "batch_size": 32,
    },
    # Colour photographs (docs/photo_training.md): 64x64 crops of the Debian wallpaper photographs
    # (make photos; python -m training.crops ... --out data/crops/photo-64.npz). The first rung is the long run at
    # a mid lambda (~0.8 bits per pixel), checkpointed every 10 minutes and resumable across sessions; every
    # other rung is fine-tuned from the trained rung of the nearest lambda, outwards in both directions. Bundles
    # are map+meanscale (latent_codec/families/mean_scale.py); make photo-zoo runs it into zoo/photo.
    "photo": {
        "model": "spatial",
        "args": PHOTO_ARGS,
        "lambdas": "0.005,0.0025,0.0012,0.012,0.04",
        "chain": "nearest",
        "first_steps": 20000,
        "steps": 8000,
        **PHOTO_RECIPE,
        "lr": 1e-3,
        "runs": "runs/photo",
    },
    # The deeper photo ladder (docs/photo_training.md): the photo preset's recipe on a code map at 1/8 of the
    # photograph's side (three strided convolutions, 64 code channels, 48 hyper channels), whose code elements
    # each see a wider neighbourhood of pixels; compiled, channels-last steps (training/step_speed.py).
    "photo-deep": {
        "model": "spatial",
        "args": PHOTO_DEEP_ARGS,
        "lambdas": "0.005,0.0025,0.012,0.0012,0.04",
        "chain": "nearest",
        "first_steps": 20000,
        "steps": 8000,
        **PHOTO_RECIPE,
        "lr": 1e-3,
        "checkpoint_minutes": 5,
        "compile": True,
        "channels_last": True,
        "bundle_name": "photo-deep",
        "runs": "runs/photo-deep",
    },
    # The deeper photo ladder's checkerboard family: each rung from its own lambda's photo-deep checkpoint, as
    # photo-checkerboard does for the photo ladder.
    "photo-deep-checkerboard": {
        "model": "spatial",
        "args": {**PHOTO_DEEP_ARGS, "entropy": "checkerboard"},
        "lambdas": "0.005,0.0025,0.012,0.0012,0.04",
        "start_from": "runs/photo-deep",
        "steps": 6000,
        **PHOTO_RECIPE,
        "checkpoint_minutes": 5,
        "compile": True,
        "channels_last": True,
        "bundle_name": "photo-deep-checkerboard",
        "runs": "runs/photo-deep-checkerboard",
    },
    # The photo ladder's second stage: every rung continues from its own lambda's first-stage checkpoint
    # (runs/photo, or the committed checkpoints/photo) for another 10,000 steps (6,000 for the two end rungs,
    # what one session's time allowed) under a fresh cosine schedule at half the first stage's peak rate (a
    # warm restart); its bundles keep the first stage's names (zoo/photo/photo-lambda-L). make photo-zoo runs
    # both stages.
    "photo-long": {
        "model": "spatial",
        "args": PHOTO_ARGS,
        "lambdas": "0.005,0.0025,0.012,0.0012,0.04",
        "start_from": "runs/photo",
        "steps": 10000,
        "rung_steps": "0.0012:6000,0.04:6000",
        "bundle_name": "photo",
        **PHOTO_RECIPE,
        "runs": "runs/photo-long",
    },
    # The photo ladder's checkerboard family (docs/photo_training.md): every rung starts from its own lambda's
    # second-stage mean-and-scale checkpoint (runs/photo-long, or the committed checkpoints/photo-long) and
    # trains a checkerboard context (latent_codec/families/checkerboard.py) with everything else for 6,000 more
    # steps; the start's transforms and hyperprior come along and the context starts at zero, so a rung begins
    # exactly where its mean-and-scale rung ended. Bundles beside the mean-and-scale ones in zoo/photo.
    "photo-checkerboard": {
        "model": "spatial",
        "args": {**PHOTO_ARGS, "entropy": "checkerboard"},
        "lambdas": "0.005,0.0025,0.012,0.0012,0.04",
        "start_from": "runs/photo-long",
        "steps": 6000,
        "bundle_name": "photo-checkerboard",
        **PHOTO_RECIPE,
        "runs": "runs/photo-checkerboard",
    },
    # Any other data (bench/recipe.py, make bench-rd DATA=...): the map ladder, because it is what transfers (the
    # flat rungs learn one item size and one dataset's look). Steps, not epochs, so the time does not grow with
    # the dataset and a dataset of 1,500 items still gets enough updates: 6,000 + 8 x 1,500 steps of 32 items, about
    # 18 minutes for 28x28 items on one core. The first rung is the long one, the others fine-tune from it. Nine
    # rates, two beyond the zoo's: on smooth data lambda 0.0256 still gives 28 dB (digits at 28x28), and the
    # comparison with WebP starts at 24 dB.
    "recipe": {
        "model": "spatial",
        "args": {"channels": 64, "code_channels": 32, "hyper_channels": 24, "entropy": "hyperprior"},
        "lambdas": "0.0004,0.0008,0.0016,0.0032,0.0064,0.0128,0.0256,0.0512,0.1024",
        "first_steps": 6000,
        "steps": 1500,
        "lr": 1e-3,
        "batch_size": 32,
        "schedule": "cosine",
    },
}
DEFAULT_PRESETS = (
    "vq",
    "conv",
    "conv-long",
    "conv-long-0.06",
    "linres",
    "spatial",
    "spatial-long",
    "spatial-factorized",
)
OWN_DATA_PRESET = "recipe"  # --data other than Fashion-MNIST and no --preset: the presets are Fashion-MNIST's
# TrainConfig fields whose default changed after checkpoints were written without them: a stored config that
# lacks one was trained the old way (no clipping, no guard), not with today's default.
LEGACY = {"clip_grad": "off", "guard": False}


def same_config(path: Path, cfg, ignore: tuple[str, ...] = ()) -> bool:
    """Whether the checkpoint at path was trained with exactly this config (what --resume may reuse).

    A field the stored config lacks (added to TrainConfig since) counts as its default.
    """
    from dataclasses import asdict

    import torch

    from training.resume import FREE_FIELDS
    from training.train import TrainConfig

    if not path.is_file():
        return False
    try:
        stored = torch.load(path, weights_only=True, map_location="cpu").get("config")
    except Exception:
        return False
    if not isinstance(stored, dict):
        return False
    full = {**asdict(TrainConfig()), **LEGACY, **stored}
    want = asdict(cfg)
    return all(full.get(k) == v for k, v in want.items() if k not in ignore and k not in FREE_FIELDS)


def exported_from(out: Path, ckpt: Path, quant: str, args: argparse.Namespace):
    """The manifest of the bundle at out when it is this checkpoint's export with these options (so --resume
    need not export it again), else None."""
    import torch

    from latent_codec.bundle import MANIFEST_NAME, Manifest
    from latent_codec.errors import BundleError

    try:
        m = Manifest.from_json((out / MANIFEST_NAME).read_text())
        stored = torch.load(ckpt, weights_only=True, map_location="cpu")["config"]
    except (OSError, BundleError, KeyError):
        return None
    t, test = m.training, m.metrics.get("test") or {}
    same = t.get("config") == stored and t.get("weights") == args.weights and t.get("checkpoint") == ckpt.name
    # The quantiser a bundle was exported with (recorded since the codec-family registry; before, only "learned").
    quant_ok = t.get("quant", "learned") == quant
    full = not args.test_limit and ":test[" not in str(test.get("data", ""))  # measured on the whole split
    return m if same and quant_ok and full else None


DIVERGED_DB = 6.0  # a rung this far below the rung it started from has diverged (neighbours differ by ~2 dB)


def diverged(record: dict, start_psnr: float | None) -> bool:
    """Non-finite losses, or a final validation PSNR far below the chained start's."""
    import math

    h = (record.get("history") or [{}])[-1]
    if h.get("diverged"):  # training.train stopped it
        return True
    if not all(math.isfinite(float(h.get(k, 0.0))) for k in ("train_loss", "val_loss")):
        return True
    psnr = h.get("val_psnr")
    return start_psnr is not None and psnr is not None and psnr < start_psnr - DIVERGED_DB


def step_for(rd_lambda: float) -> float:
    """The uniform step that is rate-distortion optimal for a Gaussian-like linear code at this lambda.

    Per active dimension D ~ step^2 / 12 (summed squared error, orthonormal
    basis) and dR/dstep = -1 / (step ln 2) bits, so lambda = -dD/dR gives
    step = sqrt(6 lambda / ln 2): where each rung's PCA start should sit.
    """
    return math.sqrt(6.0 * rd_lambda / math.log(2.0))


def pca_start(path: Path, model_name: str, model_args: dict, data: str, limit: int, step: float) -> Path:
    """A checkpoint of the model with its linear path set to PCA at `step` (no training yet)."""
    from training.data import load_split, to_tensor
    from training.registry import build_model
    from training.train import TrainConfig, save_checkpoint

    ds = load_split(data, "train", limit)
    model = build_model(model_name, {"input_shape": list(ds.item_shape), **model_args})
    model.init_pca(to_tensor(ds).numpy(), step)
    cfg = TrainConfig(model=model_name, model_args=model_args, data=data, limit=limit, epochs=0)
    return save_checkpoint(path, model, cfg, {"history": [], "pca_init_step": step})


def counted_bits(ckpt: Path, rate_prior: dict, data: str, items: int) -> tuple[float, float]:
    """(learned-prior bits, counted-prior bits) per item on training codes: which tables to ship."""
    import torch

    from latent_codec.factorized_prior import FactorizedPrior
    from training.data import load_split, to_tensor
    from training.rate import learned_payload
    from training.train import load_checkpoint

    model, _, _ = load_checkpoint(ckpt)
    x = to_tensor(load_split(data, "train", items))
    with torch.no_grad():
        z = torch.cat(
            [model.encode(model.normalize(x[i : i + 1000]))[0].flatten(1) for i in range(0, len(x), 1000)]
        )
    q, learned = learned_payload(rate_prior, z.shape[1])
    s = q.quantise(z.numpy())
    counted = FactorizedPrior.fit(s, q.levels)
    return float(learned.bits(s).mean()), float(counted.bits(s).mean())


def _parser(preset: dict) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train-ladder", description=__doc__.split("\n")[0])
    p.add_argument(
        "--preset",
        choices=[*PRESETS, "all"],
        default="all",
        help="which ladder's defaults to use; all = " + " + ".join(DEFAULT_PRESETS) + " in turn",
    )
    p.add_argument("--model", default=preset.get("model", "linres"))
    p.add_argument(
        "--args", default=json.dumps(preset.get("args", {})), help="model constructor arguments, JSON"
    )
    p.add_argument(
        "--lambdas", default=preset.get("lambdas", "0.01"), help="comma-separated rd_lambda values"
    )
    p.add_argument("--data", default=preset.get("data", "fashion-mnist"))
    p.add_argument("--limit", type=int, default=0, help="training items (0 = all)")
    p.add_argument(
        "--base-epochs",
        type=int,
        default=0,
        help="plain training before the rungs; 0 with a PCA-initialisable model: each rung starts from PCA",
    )
    p.add_argument(
        "--epochs", type=int, default=preset.get("epochs", 2), help="rate-distortion epochs per rung"
    )
    p.add_argument(
        "--first-epochs",
        type=int,
        default=preset.get("first_epochs", 0),
        help="epochs of the first rung of a chained ladder (0 = --epochs)",
    )
    p.add_argument(
        "--steps", type=int, default=preset.get("steps", 0), help="steps per rung instead of --epochs"
    )
    p.add_argument(
        "--first-steps", type=int, default=preset.get("first_steps", 0), help="steps of the first rung"
    )
    p.add_argument(
        "--rung-steps",
        default=preset.get("rung_steps", ""),
        metavar="L:N,...",
        help="steps of the rungs of these lambdas instead of --steps (e.g. 0.04:6000)",
    )
    p.add_argument(
        "--bundle-name",
        default=preset.get("bundle_name"),
        help="bundles are named NAME-lambda-L (default: the preset's or model's name)",
    )
    p.add_argument(
        "--chain",
        choices=["previous", "nearest"],
        default=preset.get("chain", "previous"),
        help="a chained rung starts from the rung before it, or from the trained rung of the nearest lambda",
    )
    p.add_argument("--batch-size", type=int, default=preset.get("batch_size", 256))
    p.add_argument("--lr", type=float, default=preset.get("lr", 1e-3))
    p.add_argument("--schedule", choices=["onecycle", "cosine"], default=preset.get("schedule", "onecycle"))
    p.add_argument("--val-split", choices=["train", "test"], default=preset.get("val_split", "train"))
    p.add_argument("--val-items", type=int, default=preset.get("val_items", 0))
    p.add_argument("--val-every", type=int, default=preset.get("val_every", 0))
    p.add_argument(
        "--checkpoint-minutes",
        type=float,
        default=preset.get("checkpoint_minutes", 0.0),
        help="each rung writes its training state (runs/lambda-L.state.pt) this often; --resume continues it",
    )
    p.add_argument("--threads", type=int, default=preset.get("threads", 2))
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=preset.get("compile", False),
        help="as training.train --compile (faster CPU steps after a minute or two of compiling)",
    )
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=preset.get("channels_last", False),
        help="as training.train --channels-last",
    )
    p.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda"], help="as training.train --device"
    )
    p.add_argument(
        "--test-limit", type=int, default=0, help="test items measured into each manifest (0 = all)"
    )
    p.add_argument(
        "--weights",
        default="float16",
        choices=["float32", "float16"],
        help="bundle weights (training.export --weights); float16 keeps the committed zoo small",
    )
    p.add_argument(
        "--start-from",
        type=Path,
        default=preset.get("start_from"),
        help="a folder of another ladder's lambda-L.pt: each rung starts from the one of its own lambda",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="reuse a rung's checkpoint in --runs when it was trained with exactly this rung's config",
    )
    p.add_argument(
        "--checkpoints-only",
        action="store_true",
        help="train and save the rungs' checkpoints, export nothing",
    )
    p.add_argument("--runs", type=Path, default=None, help="checkpoints (default runs/rd-ladder-MODEL)")
    p.add_argument(
        "--out", type=Path, default=Path("zoo"), help="one bundle per lambda (zoo/: the committed zoo)"
    )
    p.add_argument("--summary", type=Path, default=None, help="default docs/rd_ladder_MODEL.json")
    return p


def parse_args(argv: list[str] | None) -> list[argparse.Namespace]:
    """One namespace per ladder to train: the chosen preset's values as defaults, the command line on top."""
    argv = list(sys.argv[1:] if argv is None else argv)
    chosen = _parser({}).parse_known_args(argv)[0].preset
    out = []
    custom = chosen == "all" and any(
        a.split("=")[0] == "--model" for a in argv
    )  # one ladder of the user's own
    data = _parser({}).parse_known_args(argv)[0].data
    presets = DEFAULT_PRESETS if data == "fashion-mnist" else (OWN_DATA_PRESET,)
    for name in (None,) if custom else presets if chosen == "all" else (chosen,):
        args = _parser(PRESETS.get(name, {})).parse_args(argv)
        args.name = name if name in PRESETS else args.model  # names the runs, the bundles and the summary
        args.runs = args.runs or Path(PRESETS.get(name, {}).get("runs", f"runs/rd-ladder-{args.name}"))
        args.summary = args.summary or Path(f"docs/rd_ladder_{args.name}.json")
        args.argv = argv
        out.append(args)
    return out


def main(argv: list[str] | None = None) -> int:
    from training import distributed
    from training.train import Stopped, _request_stop

    t0 = time.perf_counter()
    ladders = parse_args(argv)
    if any(a.checkpoint_minutes for a in ladders):  # a signal ends the rung cleanly, its state written
        signal.signal(signal.SIGTERM, _request_stop)
        signal.signal(signal.SIGINT, _request_stop)
    try:
        for args in ladders:
            train_ladder(args)
    except Stopped as stop:
        print(
            f"{stop}: training state in {stop.state}; the same command with --resume continues it",
            file=sys.stderr,
        )
        return 3
    except CodecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        distributed.teardown()
    print(f"ladder trained and exported in {(time.perf_counter() - t0) / 60:.1f} min", file=sys.stderr)
    return 0


def train_ladder(args: argparse.Namespace) -> dict:
    """Train and export one ladder; writes its summary JSON and returns it."""
    from training.distributed import is_main
    from training.export import export_bundle
    from training.train import TrainConfig, load_checkpoint, save_checkpoint, train

    lambdas = [float(v) for v in args.lambdas.split(",") if v.strip()]
    try:
        rung_steps = {
            float(lam): int(n)
            for lam, n in (item.split(":") for item in args.rung_steps.split(",") if item.strip())
        }
    except ValueError as exc:
        raise CodecError(f"--rung-steps {args.rung_steps!r}: expected LAMBDA:STEPS,... ({exc})") from exc
    model_args = json.loads(args.args)
    common = dict(
        model=args.model,
        model_args=model_args,
        data=args.data,
        limit=args.limit,
        batch_size=args.batch_size,
        lr=args.lr,
        threads=args.threads,
        device=args.device,
        compile=args.compile,
        channels_last=args.channels_last,
        schedule=args.schedule,
        val_split=args.val_split,
        val_items=args.val_items,
        val_every=args.val_every,
        checkpoint_minutes=args.checkpoint_minutes,
        resume=args.resume and args.checkpoint_minutes > 0,
    )
    t0 = time.perf_counter()
    args.runs.mkdir(parents=True, exist_ok=True)
    from training.registry import MODELS, model_names

    model_names()
    pca_init = args.base_epochs == 0 and hasattr(MODELS[args.model], "init_pca")
    base = None
    if not pca_init and args.base_epochs:
        base_cfg = TrainConfig(epochs=args.base_epochs, **common)
        model, record = train(base_cfg, progress=False)
        base = save_checkpoint(args.runs / "base.pt", model, base_cfg, record)
        if is_main():
            print(
                f"base: val PSNR {record['history'][-1]['val_psnr']:.2f} dB ({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
            )
    rungs = []
    prev = base  # chained ladder: each rung starts from the one before (or the nearest lambda's, --chain nearest)
    prev_psnr: float | None = None
    done_rungs: dict[float, tuple[Path, float | None]] = {}
    for i, lam in enumerate(lambdas):
        if args.chain == "nearest" and done_rungs:
            near = min(done_rungs, key=lambda t: abs(math.log(t / lam)))
            prev, prev_psnr = done_rungs[near]
        if pca_init:
            start = pca_start(
                args.runs / f"pca-start-{lam:g}.pt",
                args.model,
                model_args,
                args.data,
                args.limit,
                step_for(lam),
            )
        elif args.start_from:
            start = Path(args.start_from) / f"lambda-{lam:g}.pt"
            if not start.is_file():
                raise CodecError(f"--start-from: {start} is missing (train that ladder first)")
            # A rung continued from its own lambda's checkpoint is judged against that checkpoint, not against
            # the rung trained before it in this run (another lambda, many dB away).
            history = load_checkpoint(start, for_export=False)[2].get("history") or [{}]
            prev_psnr = history[-1].get("val_psnr")
        else:
            start = prev
        chained = not pca_init and not args.start_from
        epochs = args.first_epochs if i == 0 and chained and args.first_epochs else args.epochs
        steps = args.first_steps if i == 0 and chained and args.first_steps else args.steps
        steps = rung_steps.get(lam, steps)
        ckpt_path = args.runs / f"lambda-{lam:g}.pt"

        def state_for(k: int, lam: float = lam) -> str:  # each rate of the retry sequence has its own state
            return (
                str(args.runs / f"lambda-{lam:g}.lr{args.lr / 4**k:g}.state.pt")
                if args.checkpoint_minutes
                else ""
            )

        # A rung that diverges (its loss blows up; seen once with GDN at the learning-rate peak) is trained
        # again from the same start at a quarter of the learning rate, up to twice; the checkpoint records the
        # rate it was trained with, and --resume accepts a rung trained at any rate of this sequence.
        cfgs = [
            TrainConfig(
                epochs=epochs,
                steps=steps,
                state=state_for(k),
                rd_lambda=lam,
                quant_noise="mixed",
                init_checkpoint=str(start) if start else "",
                **{**common, "lr": args.lr / 4**k},
            )
            for k in range(3)
        ]
        record, attempt = None, 0
        if args.resume:
            for k, c in enumerate(cfgs):
                if same_config(ckpt_path, c):
                    stored = load_checkpoint(ckpt_path, for_export=False)[2]
                    if not diverged(stored, prev_psnr) or k == len(cfgs) - 1:
                        record = stored
                    else:
                        attempt = k + 1
                    break
        reused = record is not None
        if record is None and args.resume and args.checkpoint_minutes:  # a rung stopped mid-way continues
            attempt = max([k for k in range(len(cfgs)) if Path(state_for(k)).is_file()], default=attempt)
        while record is None:
            model, trained = train(cfgs[attempt], progress=False)
            save_checkpoint(ckpt_path, model, cfgs[attempt], trained)
            if not diverged(trained, prev_psnr) or attempt == len(cfgs) - 1:
                record = trained
            else:
                if is_main():
                    print(
                        f"lambda {lam:g}: diverged at lr {cfgs[attempt].lr:g}; again at {cfgs[attempt + 1].lr:g}",
                        file=sys.stderr,
                    )
                attempt += 1
        ckpt = prev = ckpt_path
        prev_psnr = record["history"][-1]["val_psnr"] if record.get("history") else None
        done_rungs[lam] = (ckpt_path, prev_psnr)
        if is_main():
            h = record["history"][-1]
            print(
                f"lambda {lam:g}: {'reused' if reused else 'trained'} {ckpt_path}, val PSNR {h['val_psnr']:.2f} dB, "
                f"train bits/item {record['rate_prior']['train_bits_per_item']:.0f} ({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
        if (
            not is_main() or args.checkpoints_only
        ):  # under torchrun rank 0 exports and reports; the others go on to the next rung
            continue
        if record["rate_prior"].get("kind") == "model":  # the model's own entropy model (spatial maps)
            learned = counted = record["rate_prior"]["train_bits_per_item"]
            quant = "learned"
        else:
            learned, counted = counted_bits(ckpt, record["rate_prior"], args.data, 10000)
            # Ship the learned tables unless counting the training codes is clearly (> 1 %) cheaper.
            quant = "learned" if learned <= counted * 1.01 else "learned-fit"
        out = args.out / f"{args.bundle_name or args.name}-lambda-{lam:g}"
        m = (reused and exported_from(out, ckpt, quant, args)) or export_bundle(
            ckpt, out, quant=quant, test_limit=args.test_limit, weights=args.weights
        )
        t = m.metrics["test"]
        rungs.append(
            {
                "rd_lambda": lam,
                "bundle": str(out),
                "bundle_id": m.bundle_id,
                "tables": quant,
                "train_bits_learned": learned,
                "train_bits_counted": counted,
                "grid_bits": record["rate_prior"].get("grid_bits", getattr(m.payload, "grid_bits", None)),
                "test_psnr": t["psnr"],
                "test_bytes_per_item": t["bytes_per_item"],
                "epochs": epochs,
                "steps": steps,
                "started_from": str(start) if start else "scratch",
                "train_seconds": record["train_seconds"],
            }
        )
        print(
            f"lambda {lam:g}: {t['bytes_per_item']:.2f} bytes/item, PSNR {t['psnr']:.2f} dB, tables {quant} "
            f"(learned {learned / 8:.2f} vs counted {counted / 8:.2f} bytes ideal) "
            f"({time.perf_counter() - t0:.0f} s)",
            file=sys.stderr,
        )
    summary = {
        "command": " ".join(["python -m bench.train_ladder", *args.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "ladder": args.name,
        "model": args.model,
        "model_args": model_args,
        "lambdas": lambdas,
        "base_epochs": args.base_epochs,
        "first_epochs": args.first_epochs,
        "epochs": args.epochs,
        "first_steps": args.first_steps,
        "steps": args.steps,
        "rung_steps": args.rung_steps,
        "chain": args.chain,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "seconds": round(time.perf_counter() - t0, 1),
        "rungs": rungs,
    }
    if not is_main():
        return summary
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    args.summary.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    sys.exit(main())

"""Small bundles the uses benchmarks share (bench/map2d.py, features.py, denoise.py, anomaly.py, hashing.py):
trained through training.train (the CLI's code path), exported through training.export, cached by recipe.

A recipe is a model, its constructor arguments and the TrainConfig fields beyond the shared budget. The
bundle of a recipe is trained once into ``work_dir/<name>/`` and reused while its recipe and budget are the
same (``recipe.json`` beside it says what it was trained with), so the benchmarks can share the family.
Labels are never read: training sees the items only.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

D256 = {"code_dim": 32, "hidden": [256]}


@dataclass
class Recipe:
    name: str
    model: str
    model_args: dict
    train: dict = field(default_factory=dict)  # TrainConfig fields beyond the shared budget
    note: str = ""
    binary_code: bool = False  # export with --binary-code (semantic hashing thresholds in the manifest)

    def flags(self) -> str:
        """The training CLI flags of this recipe (for the tables)."""

        def lit(v) -> str:
            return v if isinstance(v, str) else repr(v).replace(" ", "")

        parts = [f"--model {self.model}"] + [f"--arg {k}={lit(v)}" for k, v in self.model_args.items()]
        for k, v in self.train.items():
            flag = f"--{k.replace('_', '-')}"
            parts.append(flag if v is True else f"{flag} {v:g}" if isinstance(v, float) else f"{flag} {v}")
        return " ".join(parts)


@dataclass
class Budget:
    data: str = "fashion-mnist"
    limit: int = 20000  # training items (10% of them held out for validation)
    epochs: int = 10
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0
    threads: int = 1
    quant: str = "affine8"


# The family's regularised variants at the strengths docs/variants.md found to hold (factor 1 of bench/claims.py's
# calibration for sparse L1 and contractive), and the stacked deep network, at codes of 32 values.
PLAIN = Recipe("plain", "dense", D256, note="784-256-32")
DENOISING = Recipe("denoising", "dense", D256, {"mask_noise": 0.25}, "784-256-32, masking noise q = 0.25")
SPARSE = Recipe(
    "sparse", "dense", {**D256, "code_activation": "relu"}, {"l1": 0.311}, "784-256-32, L1 on ReLU codes"
)
CONTRACTIVE = Recipe(
    "contractive",
    "dense",
    {**D256, "code_activation": "sigmoid"},
    {"contractive": 11.04, "contractive_samples": 4},
    "784-256-32, sigmoid code, ||J||_F^2 penalty",
)
STACKED = Recipe(
    "stacked",
    "dense",
    {"code_dim": 32, "hidden": [512, 256]},
    {"pretrain_epochs": 2},
    "784-512-256-32, greedy layer-wise pre-training (2 epochs per layer), then fine-tuning",
)
MAP2D = Recipe(
    "map2d", "dense", {"code_dim": 2, "hidden": [512, 128]}, note="784-512-128-2: a code of two values"
)


def train_bundle(recipe: Recipe, budget: Budget, work_dir: Path, progress: bool = False) -> Path:
    """The recipe's bundle directory, trained and exported now unless an identical run is cached."""
    from training.export import export_bundle
    from training.train import TrainConfig, save_checkpoint, train

    out = Path(work_dir) / recipe.name
    stamp = {"recipe": asdict(recipe), "budget": asdict(budget)}
    record_path = out / "recipe.json"
    bundle = out / "bundle"
    if (bundle / "manifest.json").is_file() and record_path.is_file():
        if json.loads(record_path.read_text()).get("stamp") == stamp:
            return bundle
    out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(
        model=recipe.model,
        model_args=dict(recipe.model_args),
        data=budget.data,
        limit=budget.limit,
        epochs=budget.epochs,
        batch_size=budget.batch_size,
        lr=budget.lr,
        seed=budget.seed,
        threads=budget.threads,
        device="cpu",
        **recipe.train,
    )
    t0 = time.perf_counter()
    model, record = train(cfg, progress=progress or None)
    ckpt = save_checkpoint(out / "model.pt", model, cfg, record)
    export_bundle(
        ckpt,
        bundle,
        budget.quant,
        fit_items=budget.limit,
        test_limit=2000,
        force=True,
        binary_code=recipe.binary_code,
    )
    record_path.write_text(json.dumps({"stamp": stamp, "train_seconds": time.perf_counter() - t0}, indent=1))
    return bundle


def train_seconds(bundle: Path) -> float:
    """How long the cached run of a bundle took to train and export."""
    path = Path(bundle).parent / "recipe.json"
    return float(json.loads(path.read_text()).get("train_seconds", 0.0)) if path.is_file() else 0.0


def stored_codes(codec, x_raw: np.ndarray, batch: int = 1000) -> np.ndarray:
    """(N, D) codes as the cloud holds them: encoded at the edge, then unpacked and dequantised from the payload."""
    out = []
    for i in range(0, len(x_raw), batch):
        symbols, side = codec.symbols(codec.encode(x_raw[i : i + batch]))
        out.append(np.asarray(codec.dequantise(symbols, side), np.float32).reshape(len(symbols), -1))
    return np.concatenate(out)


def reconstruct(codec, x_raw: np.ndarray, batch: int = 1000) -> np.ndarray:
    """Raw items -> raw reconstructions through the codec's encode and decode (the edge-to-cloud path)."""
    return np.concatenate(
        [codec.decode(codec.encode(x_raw[i : i + batch])) for i in range(0, len(x_raw), batch)]
    )


def labelled_splits(data: str, purpose: str):
    """The train and test splits of data, or None after saying on stderr that they carry no labels to
    `purpose` (the uses benchmarks score codes against class labels, which training never sees)."""
    import sys

    from latent_codec import datasets

    train, test = datasets.load(data, "train"), datasets.load(data, "test")
    if train.y is None or test.y is None:
        print(f"error: {data} has no labels to {purpose}", file=sys.stderr)
        return None
    return train, test


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)

"""Every autoencoder variant of the notes on Fashion-MNIST, each regularised one beside its plain twin, with the
benefit each one claims measured in its own column; writes the tables and a picture.

    python -m bench.variants                      # writes docs/variants.md, docs/variants.png, docs/variants.json
    python -m bench.variants --only dense-256 --only denoise-mask-0.5 --out-dir /tmp/v   # a quick look

Budget: every variant trains through training.train.train (the CLI's code path) on the same items for the same
--epochs (one-cycle Adam), a budget at which the linear autoencoder ends within 0.2 dB of exact PCA on the same
items (the run checks and reports it); the table gives each run's best validation epoch, so a row still
improving at the end is visible. --patience N adds early stopping (off by default: the clean validation loss
is not what a denoiser or a penalised model optimises, and stopping on it cut the denoisers short).

Clean quality and bytes are measured through each exported bundle (ONNX Runtime, affine8 payloads, uint8
pixels; exact PCA through the same Codec with FunctionTransforms). The claims (bench/claims.py) are measured
on float torch reconstructions: PSNR on corrupted inputs for the denoisers, near-zero code share and rho_hat
for the sparse codes, ||J||_F^2 for the contractive one, weight norm and train/test gap for weight decay and
tying, stacked against random initialisation for the deep network. A penalty's weight is calibrated against
its plain twin (bench/claims.py: lambda * Omega(twin) = factor x the twin's excess loss) and swept over a
decade either side of factor 1.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.options import add_run_options

FACTORS = (0.1, 1.0, 10.0)  # the calibrated penalties' sweep (bench/claims.py)
CLAIM_ITEMS = 2000  # test (and training) items for the float claim measurements
PCA_TOLERANCE_DB = 0.2
STILL_RECONSTRUCTS_DB = (
    1.0  # sparse and contractive codes must still reconstruct: at most this below the twin
)


@dataclass
class Variant:
    name: str
    model: str
    model_args: dict
    train: dict = field(default_factory=dict)  # TrainConfig fields beyond the shared budget
    note: str = ""
    twin: str = ""  # the plain twin: same architecture and budget without the idea
    claim: str = ""  # what this row claims over its twin (judge())
    penalty: str = ""  # a TrainConfig field whose weight is calibrated against the twin
    factor: float = 0.0  # the calibration factor (bench/claims.py)

    def flags(self, train: dict | None = None) -> str:
        """The equivalent training CLI flags (for the table)."""

        def lit(v) -> str:
            return v if isinstance(v, str) else repr(v).replace(" ", "")

        parts = [f"--model {self.model}"] + [f"--arg {k}={lit(v)}" for k, v in self.model_args.items()]
        for k, v in (self.train if train is None else train).items():
            parts.append(
                f"--{k.replace('_', '-')} {v:.4g}" if isinstance(v, float) else f"--{k.replace('_', '-')} {v}"
            )
        return " ".join(parts)


D256 = {"code_dim": 32, "hidden": [256]}
RELU_CODE = {**D256, "code_activation": "relu"}
SIGMOID_CODE = {**D256, "code_activation": "sigmoid"}
DEEP = {"code_dim": 30, "hidden": [1000, 500, 250]}


def _sweep(prefix: str, args: dict, penalty: str, twin: str, note: str, train: dict | None = None) -> list:
    return [
        Variant(f"{prefix}-x{f:g}", "dense", args, dict(train or {}), note, twin, penalty, penalty, f)
        for f in FACTORS
    ]


# Twins come before the rows compared with them. Code sizes are comparable (30-32 values) unless the row is about size.
VARIANTS: list[Variant] = [
    Variant(
        "linear-pca",
        "linear",
        {"code_dim": 32},
        note="linear, squared error, centred = PCA subspace",
        twin="pca-exact",
        claim="pca",
    ),
    Variant("dense", "dense", {"code_dim": 32}, note="784-32: one hidden layer, the code"),
    Variant("dense-256", "dense", D256, note="784-256-32; the plain twin of the denoisers and weight decay"),
    Variant("dense-256-relu-code", "dense", RELU_CODE, note="ReLU code; the plain twin of L1"),
    Variant(
        "dense-256-sigmoid-code",
        "dense",
        SIGMOID_CODE,
        note="sigmoid code; the plain twin of KL and contractive",
    ),
    Variant(
        "dense-sigmoid-mse",
        "dense",
        {**D256, "loss": "mse"},
        note="sigmoid output trained with squared error (seeds 000/003)",
    ),
    Variant(
        "dense-linear-mse",
        "dense",
        {**D256, "output": "linear", "standardize": True},
        note="linear output, squared error on standardised inputs",
    ),
    Variant("deep", "dense", DEEP, note="784-1000-500-250-30, random initialisation"),
    Variant(
        "deep-stacked",
        "dense",
        DEEP,
        {"pretrain_epochs": 2},
        "greedy layer-wise pre-training (2 epochs per layer), then the same fine-tuning",
        "deep",
        "stacked",
    ),
    Variant(
        "deep-tied",
        "dense",
        {**DEEP, "tied": True},
        note="W* = W^T in every layer",
        twin="deep",
        claim="tied",
    ),
    Variant(
        "conv-deconv-k2",
        "conv",
        {"code_dim": 32, "channels": [8, 16], "pool": "max", "up": "deconv", "deconv_kernel": 2},
        note="max pooling / transposed convolution, kernel = stride = 2",
    ),
    Variant(
        "conv-deconv-k3",
        "conv",
        {"code_dim": 32, "channels": [8, 16], "pool": "max", "up": "deconv", "deconv_kernel": 3},
        note="transposed convolution with a (2k+1) = 3 kernel, output u + u(s-1)",
    ),
    Variant(
        "conv-stride-k4",
        "conv",
        {"code_dim": 32, "channels": [8, 16], "pool": "stride", "up": "deconv", "deconv_kernel": 4},
        note="strided convolution / transposed convolution, kernel 4",
    ),
    Variant(
        "conv-notes-3block",
        "conv",
        {"code_dim": 32, "channels": [16, 8, 8], "pool": "max", "up": "avg"},
        note="seed 003's network: 16-8-8 channels, max pooling, upsampling (average unpooling); 28 padded to 32",
    ),
    Variant(
        "conv-max-unpool",
        "conv",
        {"code_dim": 32, "channels": [4, 8], "pool": "max", "up": "max"},
        note="max unpooling; 2-bit switches in the payload",
    ),
    Variant(
        "conv-random-unpool",
        "conv",
        {"code_dim": 32, "channels": [8, 16], "pool": "max", "up": "random"},
        note="seed 001's random-location inverse of pooling",
    ),
    Variant(
        "overcomplete-denoise",
        "dense",
        {"code_dim": 1024},
        {"mask_noise": 0.5},
        "1024-value code > 784 inputs; a plain twin is refused (identity map)",
    ),
    Variant(
        "denoise-mask-0.25",
        "dense",
        D256,
        {"mask_noise": 0.25},
        "masking noise q = 0.25",
        "dense-256",
        "mask",
    ),
    Variant(
        "denoise-mask-0.5", "dense", D256, {"mask_noise": 0.5}, "masking noise q = 0.5", "dense-256", "mask"
    ),
    Variant(
        "denoise-gauss-0.2",
        "dense",
        D256,
        {"gauss_noise": 0.2},
        "Gaussian noise sigma = 0.2",
        "dense-256",
        "gauss",
    ),
    Variant(
        "denoise-gauss-0.5",
        "dense",
        D256,
        {"gauss_noise": 0.5},
        "Gaussian noise sigma = 0.5",
        "dense-256",
        "gauss",
    ),
    *_sweep("sparse-l1", RELU_CODE, "l1", "dense-256-relu-code", "L1 on ReLU codes"),
    *_sweep(
        "sparse-kl",
        SIGMOID_CODE,
        "kl_sparsity",
        "dense-256-sigmoid-code",
        "KL to rho = 0.05, sigmoid codes",
        {"sparsity_target": 0.05},
    ),
    *_sweep(
        "contractive",
        SIGMOID_CODE,
        "contractive",
        "dense-256-sigmoid-code",
        "||J||_F^2 of the encoder (4-projection estimate)",
        {"contractive_samples": 4},
    ),
    *_sweep("weight-decay", D256, "weight_decay", "dense-256", "L2 on all weights (Adam's weight_decay)"),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.variants", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument(
        "--limit", type=int, default=10000, help="training items (10%% of them held out for validation)"
    )
    p.add_argument("--epochs", type=int, default=20, help="at most this many epochs per variant")
    p.add_argument(
        "--patience", type=int, default=0, help="early stopping: epochs without a better val loss (0 = off)"
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="Adam, one-cycle schedule")
    p.add_argument(
        "--test-limit", type=int, default=0, help="test items measured through each bundle (0 = all)"
    )
    add_run_options(p, "runs/variants", "run only these variants (their twins too)")
    return p.parse_args(argv)


@dataclass
class Context:
    """The items every variant shares: training/validation split as train() makes it, raw and float test items."""

    x_train: object
    x_val: object
    test_raw: np.ndarray
    claim_test: object  # float [0, 1] tensors for the claim measurements
    claim_train: object


def load_context(args: argparse.Namespace) -> Context:
    from training.data import load_split, to_tensor, train_val_split

    x_train, x_val = train_val_split(to_tensor(load_split(args.data, "train", args.limit)), 0.1, args.seed)
    test = load_split(args.data, "test", args.test_limit)
    return Context(x_train, x_val, test.x, to_tensor(test)[:CLAIM_ITEMS], x_train[:CLAIM_ITEMS])


def pca_row(ctx: Context, args: argparse.Namespace, k: int = 32) -> dict:
    """Exact PCA with k components on the same training items, through the Codec with the same quantiser."""
    from bench.pca import PCA, codec
    from latent_codec.families.flat import FlatPayload
    from training.bundle_writer import measure_codec
    from training.export_flat import make_quantiser

    x = ctx.x_train.numpy()
    pca = PCA.fit(x, k)
    q = make_quantiser(args.quant, pca.encode(x, k).astype(np.float32), 0.0)
    t = measure_codec(codec(pca, FlatPayload(q, k), k, ctx.test_raw), ctx.test_raw)
    return {
        "variant": "pca-exact",
        "note": f"exact PCA, {k} components (eigenvectors of the training covariance)",
        "flags": "",
        "params": int(pca.components.size + pca.mean.size),
        "code_values": k,
        "side_bits": 0,
        "test_items": t["items"],
        "test_mse": t["mse"],
        "test_psnr": t["psnr"],
        "bytes_per_item": t["bytes_per_item"],
        "compression_ratio": t["compression_ratio"],
        "train_seconds": 0.0,
        "epochs": "",
        "pca": pca,
    }


def train_config(v: Variant, args: argparse.Namespace, train: dict):
    from training.train import TrainConfig

    return TrainConfig(
        model=v.model,
        model_args=dict(v.model_args),
        data=args.data,
        limit=args.limit,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
        patience=args.patience,
        **train,
    )


def best_epoch(record: dict) -> int:
    """The epoch of the lowest clean validation loss (1-based; 0 without validation)."""
    losses = [h.get("val_loss", float("inf")) for h in record["history"]]
    return 1 + losses.index(min(losses)) if losses else 0


def run_variant(v: Variant, args: argparse.Namespace, ctx: Context, twins: dict) -> tuple[dict, object]:
    """Train (calibrating the penalty against the twin), export, measure; -> (row, model)."""
    import torch

    from bench import claims
    from training.export import export_bundle
    from training.train import save_checkpoint, train

    train_args = dict(v.train)
    if v.penalty:
        twin_model = twins[v.twin][1]
        lam = claims.strength(
            v.penalty, v.factor, twin_model, ctx.x_val, train_args.get("sparsity_target", 0.05)
        )
        train_args[v.penalty] = lam
    cfg = train_config(v, args, train_args)
    model, record = train(cfg, progress=False)
    ckpt = save_checkpoint(args.work_dir / f"{v.name}.pt", model, cfg, record)
    bundle = args.work_dir / f"bundle-{v.name}"
    t0 = time.perf_counter()
    m = export_bundle(
        ckpt, bundle, quant=args.quant, fit_items=args.limit, test_limit=args.test_limit, force=True
    )
    t = m.metrics["test"]
    row = {
        "variant": v.name,
        "note": v.note,
        "flags": v.flags(train_args),
        "model": v.model,
        "model_args": model.args,
        "train": train_args,
        "params": int(sum(p.numel() for p in model.parameters())),
        "code_values": int(np.prod(m.code_shape)),
        "side_bits": sum(int(np.prod(f.shape)) * f.bits for f in m.payload.side),
        "test_items": t["items"],
        "test_mse": t["mse"],
        "test_psnr": t["psnr"],
        "bytes_per_item": t["bytes_per_item"],
        "compression_ratio": t["compression_ratio"],
        "train_seconds": record["train_seconds"],
        "export_seconds": time.perf_counter() - t0,
        "onnx_parity": m.training["onnx_parity"],
        "bundle": str(bundle),
        "bundle_id": m.bundle_id,
        "output": m.input.output,
        "loss": m.input.loss,
        "epochs": f"{best_epoch(record)}/{len(record['history'])}",
        "still_improving": best_epoch(record) == args.epochs,
        **claims.generalisation(model, ctx.claim_train, ctx.claim_test),
    }
    if "pretraining" in record:
        row["pretrain_seconds"] = sum(layer["seconds"] for layer in record["pretraining"]["layers"])
    torch.set_num_threads(args.threads)
    return row, model.eval()


def _verdict(measure: str, row: str, twin: str, checks: list[tuple[bool, str]]) -> dict:
    """holds = every check passes; why = the first failing check's reason."""
    failed = [why for ok, why in checks if not ok]
    return {
        "measure": measure,
        "row": row,
        "twin": twin,
        "holds": not failed,
        "why": failed[0] if failed else "",
    }


def judge(v: Variant, row: dict, model, twin_row: dict, twin_model, ctx: Context) -> dict:
    """The row's claim against its twin: {"measure", "row", "twin", "holds", "why"} (float torch measurements)."""
    from bench import claims

    x = ctx.claim_test
    cost = twin_row["test_psnr"] - row["test_psnr"]
    # The notes: a sparse or contractive code must still reconstruct ("still able to extract features").
    keeps = (cost <= STILL_RECONSTRUCTS_DB, f"clean PSNR {cost:.1f} dB below the twin's")
    if v.claim in ("mask", "gauss"):
        kw = {"mask_q": v.train["mask_noise"]} if v.claim == "mask" else {"sigma": v.train["gauss_noise"]}
        a = claims.corrupted_psnr(model, x, **kw, seed=1)
        b = claims.corrupted_psnr(twin_model, x, **kw, seed=1)
        what = f"q = {kw['mask_q']}" if v.claim == "mask" else f"sigma = {kw['sigma']}"
        return _verdict(
            f"PSNR on corrupted test items ({what}), dB",
            f"{a:.2f}",
            f"{b:.2f}",
            [(a > b + 0.1, "no better than the plain model on corrupted items")],
        )
    if v.claim in ("l1", "kl_sparsity"):
        a, b = claims.code_stats(model, x), claims.code_stats(twin_model, x)
        row.update({f"code_{k}": val for k, val in a.items()})
        if v.claim == "l1":
            fmt = "{near_zero_codes:.0%} zero, L1 {code_l1:.1f}"
            return _verdict(
                "codes below 0.01; L1 per item",
                fmt.format(**a),
                fmt.format(**b),
                [
                    (a["near_zero_codes"] < 1.0, "every code is zero (dead units)"),
                    keeps,
                    (a["code_l1"] < b["code_l1"], "L1 not smaller"),
                    (a["near_zero_codes"] > b["near_zero_codes"], "smaller codes, but not more zeros"),
                ],
            )
        rho = v.train["sparsity_target"]
        fmt = "rho_hat {rho_hat_mean:.3f} (max {rho_hat_max:.2f}), {near_zero_codes:.0%} < 0.01"
        return _verdict(
            f"mean activation rho_hat (target {rho:g}, within x2)",
            fmt.format(**a),
            fmt.format(**b),
            [
                keeps,
                (a["rho_hat_mean"] <= 2 * rho, "moves towards rho, stays above 2 rho at this beta"),
                (a["rho_hat_mean"] >= rho / 2, "below rho / 2"),
            ],
        )
    if v.claim == "contractive":
        a, b = claims.jacobian_sq(model, x[:500]), claims.jacobian_sq(twin_model, x[:500])
        row["jacobian_sq"] = a
        return _verdict(
            "||J||_F^2 per test item",
            f"{a:.3g} ({a / b:.0%})",
            f"{b:.3g}",
            [(a < 0.9 * b, "Jacobian not 10% smaller"), keeps],
        )
    if v.claim in ("weight_decay", "tied"):
        a, b = claims.weight_sq(model), claims.weight_sq(twin_model)
        row["weight_sq"] = a
        fmt = "{:.3g}; gap {:.5f}; test {:.5f}"
        better = row["test_mse_float"] < twin_row["test_mse_float"]
        smaller_gap = row["gap_mse"] < twin_row["gap_mse"]
        if smaller_gap:
            why = "a smaller gap, but a worse test error (the plain model barely overfits)"
        elif better:
            why = "a better test error, but a larger gap (a better fit, not a more regular one)"
        else:
            why = "neither a better test error nor a smaller gap"
        return _verdict(
            "sum theta^2; train/test MSE gap; test MSE (float)",
            fmt.format(a, row["gap_mse"], row["test_mse_float"]),
            fmt.format(b, twin_row["gap_mse"], twin_row["test_mse_float"]),
            [(better and smaller_gap, why)],
        )
    if v.claim == "stacked":
        return _verdict(
            "clean test PSNR, same fine-tuning epochs, dB",
            f"{row['test_psnr']:.2f}",
            f"{twin_row['test_psnr']:.2f}",
            [(row["test_psnr"] > twin_row["test_psnr"], "random initialisation does as well")],
        )
    if v.claim == "pca":
        d = row["test_psnr"] - twin_row["test_psnr"]
        return _verdict(
            f"clean test PSNR vs exact PCA (within {PCA_TOLERANCE_DB} dB), dB",
            f"{row['test_psnr']:.2f} ({d:+.2f})",
            f"{twin_row['test_psnr']:.2f}",
            [(abs(d) <= PCA_TOLERANCE_DB, "undertrained: not the PCA subspace yet")],
        )
    raise ValueError(f"unknown claim {v.claim!r}")


def reconstructions(bundle_dir: str, x_raw: np.ndarray) -> np.ndarray:
    """Items through a sealed bundle's codec (encode, then decode): [0, 1] reconstructions."""
    from latent_codec.codec import Codec

    codec = Codec.open(bundle_dir)
    return codec.decode(codec.encode(x_raw), unit=True)


def write_png(rows: list[dict], x_raw: np.ndarray, path: Path) -> None:
    from bench.figures import image_grid
    from latent_codec.bundle import InputSpec

    grid = [("original", InputSpec.of_items(x_raw).to_unit(x_raw))] + [
        (r["variant"], reconstructions(r["bundle"], x_raw)) for r in rows if "bundle" in r
    ]
    image_grid(grid, path)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")  # a pipe would split the table cell


def write_markdown(
    rows: list[dict], args: argparse.Namespace, argv: list[str], path: Path, seconds: float
) -> None:
    cmd = "python -m bench.variants" + ("" if not argv else " " + " ".join(shlex.quote(a) for a in argv))
    by_name = {r["variant"]: r for r in rows}
    lin, pca = by_name.get("linear-pca"), by_name.get("pca-exact")
    budget_check = (
        f"At this budget the linear autoencoder is {lin['test_psnr'] - pca['test_psnr']:+.2f} dB from exact PCA "
        f"({'within' if abs(lin['test_psnr'] - pca['test_psnr']) <= PCA_TOLERANCE_DB else 'NOT within'} "
        f"{PCA_TOLERANCE_DB} dB). "
        if lin and pca
        else ""
    )
    lines = [
        "# Autoencoder variants on Fashion-MNIST",
        "",
        f"Generated by `{cmd}` (do not edit by hand). Every variant trains on the same {args.limit or 'all'} "
        f"training items (10% held out for validation) for {args.epochs} epochs (batch {args.batch_size}, "
        f"Adam lr {args.lr:g}, one-cycle"
        + (
            f", early stopping after {args.patience} epochs without a better validation loss"
            if args.patience
            else ""
        )
        + f"), seed {args.seed}, {args.threads} torch thread(s). "
        f"{budget_check}Total run {seconds / 60:.0f} min on the shared 2-core machine (training seconds depend on its "
        f"load at the time, so compare them only roughly).",
        "",
        "## Clean reconstruction and bytes",
        "",
        f"Through each exported bundle: ONNX Runtime, {args.quant} payloads, uint8 pixels, on "
        f"{rows[0]['test_items'] if rows else 0} test items (exact PCA through the same Codec with its transforms "
        f"as functions). Bytes per item include side information (max-unpooling switches); raw items are 784 bytes. "
        f"'epochs' is the epoch of the best clean validation loss / epochs run: a row whose best epoch is its last "
        f"was still improving at the budget (for denoisers and penalised models the clean loss is not the objective).",
        "",
        "| variant | what | parameters | code | test MSE | PSNR (dB) | bytes/item | ratio | epochs | training (s) |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        code = f"{r['code_values']}" + (f" + {r['side_bits']} switch bits" if r["side_bits"] else "")
        lines.append(
            f"| {r['variant']} | {_cell(r['note'])} | {r['params']:,} | {code} | {r['test_mse']:.5f} | "
            f"{r['test_psnr']:.2f} | {r['bytes_per_item']:.0f} | {r['compression_ratio']:.1f}:1 | {r['epochs']} | "
            f"{r['train_seconds']:.0f} |"
        )
    claimed = [r for r in rows if "claim" in r]
    lines += [
        "",
        "## What each idea claims, against its plain twin",
        "",
        "Each row beside its plain twin (same architecture, items, budget and seed, without the idea); measured on "
        f"float torch reconstructions of the first {CLAIM_ITEMS} test items (train/test gaps: the first "
        f"{CLAIM_ITEMS} training items). Penalty weights: lambda such that, at the plain twin's solution, the penalty "
        "would be factor x the twin's excess reconstruction loss (the loss above its floor; for cross-entropy on "
        "grey pixels the floor is the pixels' own entropy), factor 0.1, 1 and 10 (bench/claims.py). 'holds' is the "
        "notes' claim on this data at this strength: a denoiser must beat its twin on corrupted inputs by > 0.1 dB; "
        "sparse L1 codes must be more often zero with a smaller L1; KL's rho_hat must be within a factor 2 of its "
        "target; the contractive ||J||_F^2 must be < 90% of the twin's; sparse and contractive models must also "
        f"still reconstruct (clean PSNR at most {STILL_RECONSTRUCTS_DB:g} dB below the twin's); weight decay and tying must lower both the "
        "test error and the train/test gap; stacking must beat random initialisation; the linear AE must be within "
        f"{PCA_TOLERANCE_DB} dB of exact PCA.",
        "",
        "| variant | strength | claim measured | this row | plain twin | holds? | clean PSNR row / twin (dB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in claimed:
        c = r["claim"]
        twin = by_name[r["twin"]]
        lines.append(
            f"| {r['variant']} | {_cell(r.get('strength', ''))} | {_cell(c['measure'])} | {_cell(c['row'])} | "
            f"{_cell(c['twin'])} ({r['twin']}) | {'yes' if c['holds'] else '**no**: ' + c['why']} | "
            f"{r['test_psnr']:.2f} / {twin['test_psnr']:.2f} |"
        )
    failed = [r["variant"] for r in claimed if not r["claim"]["holds"]]
    lines += [
        "",
        (
            "Claims that do not hold on this data at the stated strength: " + ", ".join(failed) + "."
            if failed
            else "Every claim holds on this data at the stated strengths."
        ),
        "",
        "Training flags of each row (add `--data fashion-mnist --limit N --epochs E --out X.pt`):",
        "",
    ]
    lines += [f"- {r['variant']}: `{r['flags']}`" for r in rows if r.get("flags")]
    lines += ["", "![originals and reconstructions per variant](variants.png)", ""]
    path.write_text("\n".join(lines))


def chosen_variants(only: list[str]) -> list[Variant]:
    """The variants asked for and, before them, the twins they are compared with."""
    if not only:
        return list(VARIANTS)
    names = set(only)
    for v in VARIANTS:
        if v.name in names and v.twin and v.twin != "pca-exact":
            names.add(v.twin)
    return [v for v in VARIANTS if v.name in names]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from latent_codec.errors import CodecError
    from training.data import load_split

    torch.set_num_threads(args.threads)
    unknown = set(args.only) - {v.name for v in VARIANTS}
    if unknown:
        print(
            f"error: unknown variants {sorted(unknown)}; known: {', '.join(v.name for v in VARIANTS)}",
            file=sys.stderr,
        )
        return 2
    chosen = chosen_variants(args.only)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ctx = load_context(args)
    rows = [pca_row(ctx, args)]
    trained: dict[str, tuple[dict, object]] = {"pca-exact": (rows[0], None)}
    for v in chosen:
        print(f"[{v.name}] {v.flags()}", file=sys.stderr)
        try:
            row, model = run_variant(v, args, ctx, trained)
        except (CodecError, ValueError) as exc:
            print(f"error: variant {v.name}: {exc}", file=sys.stderr)
            return 1
        if v.penalty:
            row["strength"] = f"{v.penalty}={row['train'][v.penalty]:.3g} (x{v.factor:g})"
        elif v.claim in ("mask", "gauss"):
            row["strength"] = ", ".join(f"{k}={val}" for k, val in v.train.items())
        if v.claim:
            twin_row, twin_model = trained[v.twin]
            row["twin"] = v.twin
            row["claim"] = judge(v, row, model, twin_row, twin_model, ctx)
        trained[v.name] = (row, model if any(u.twin == v.name for u in VARIANTS) else None)
        rows.append(row)
        claim = (
            f", {row['claim']['measure']}: {row['claim']['row']} vs {row['claim']['twin']}" if v.claim else ""
        )
        print(
            f"[{v.name}] PSNR {row['test_psnr']:.2f} dB, {row['bytes_per_item']:.0f} bytes/item, epochs "
            f"{row['epochs']}, train {row['train_seconds']:.0f} s{claim}",
            file=sys.stderr,
        )
    seconds = time.perf_counter() - t0
    rows[0].pop("pca")
    shown = [r for r in rows if "bundle" in r and not r["variant"].endswith(("-x0.1", "-x10"))]
    write_png(shown, load_split(args.data, "test", 8).x, args.out_dir / "variants.png")
    write_markdown(
        rows, args, list(argv if argv is not None else sys.argv[1:]), args.out_dir / "variants.md", seconds
    )
    (args.out_dir / "variants.json").write_text(json.dumps(rows, indent=1, default=str) + "\n")
    print(f"wrote {args.out_dir / 'variants.md'}, variants.png, variants.json ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

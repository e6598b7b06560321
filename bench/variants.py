"""Train every autoencoder variant with one small fixed budget on Fashion-MNIST; write the table and a picture.

    python -m bench.variants                      # writes docs/variants.md, docs/variants.png, docs/variants.json
    python -m bench.variants --only conv-max-unpool --out-dir /tmp/v   # one variant, a quick look

Each variant is trained through training.train.train (the CLI's code path), exported through
training.export.export_bundle (ONNX parity checked, affine8 codes) and measured on the test split
through the real bundle: ONNX Runtime encoder, payload packing (switches included), decoder, uint8
pixels. Bytes per item are the packed payload's bytes. The markdown table is this command's output.
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


@dataclass
class Variant:
    name: str
    model: str
    model_args: dict
    train: dict = field(default_factory=dict)  # TrainConfig fields beyond the shared budget
    note: str = ""

    def flags(self) -> str:
        """The equivalent training CLI flags (for the table)."""

        def lit(v) -> str:
            return v if isinstance(v, str) else repr(v).replace(" ", "")

        parts = [f"--model {self.model}"] + [f"--arg {k}={lit(v)}" for k, v in self.model_args.items()]
        for k, v in self.train.items():
            parts.append(f"--{k.replace('_', '-')} {v}")
        return " ".join(parts)


# Variants of docs/models.md. Sizes are kept comparable (32-value codes unless the variant is about size).
VARIANTS: list[Variant] = [
    Variant("dense", "dense", {"code_dim": 32}, note="undercomplete, one hidden layer (the code)"),
    Variant("deep", "dense", {"code_dim": 30, "hidden": [1000, 500, 250]}, note="784-1000-500-250-30"),
    Variant(
        "deep-tied", "dense", {"code_dim": 30, "hidden": [1000, 500, 250], "tied": True}, note="W* = W^T"
    ),
    Variant(
        "dense-linear-mse",
        "dense",
        {"code_dim": 32, "hidden": [256], "output": "linear", "standardize": True},
        note="linear output, squared error on standardised inputs",
    ),
    Variant(
        "conv-deconv",
        "conv",
        {"code_dim": 32, "channels": [8, 16], "pool": "max", "up": "deconv", "deconv_kernel": 2},
        note="max pooling / transposed convolution, kernel = stride = 2",
    ),
    Variant(
        "conv-stride",
        "conv",
        {"code_dim": 32, "channels": [8, 16], "pool": "stride", "up": "deconv", "deconv_kernel": 4},
        note="strided convolution / transposed convolution, kernel 4, stride 2",
    ),
    Variant(
        "conv-avg-unpool",
        "conv",
        {"code_dim": 32, "channels": [8, 16], "pool": "avg", "up": "avg"},
        note="average pooling / average unpooling",
    ),
    Variant(
        "conv-max-unpool",
        "conv",
        {"code_dim": 32, "channels": [4, 8], "pool": "max", "up": "max"},
        note="max pooling / max unpooling; 2-bit switches in the payload",
    ),
    Variant(
        "denoise-mask", "dense", {"code_dim": 32, "hidden": [256]}, {"mask_noise": 0.3}, note="masking q=0.3"
    ),
    Variant(
        "denoise-gauss",
        "dense",
        {"code_dim": 32, "hidden": [256]},
        {"gauss_noise": 0.2},
        note="Gaussian sigma=0.2",
    ),
    Variant(
        "sparse-l1",
        "dense",
        {"code_dim": 32, "hidden": [256], "code_activation": "relu"},
        {"l1": 0.05},
        note="L1 on ReLU codes",
    ),
    Variant(
        "sparse-kl",
        "dense",
        {"code_dim": 32, "hidden": [256], "code_activation": "sigmoid"},
        {"kl_sparsity": 1.0, "sparsity_target": 0.05},
        note="KL to rho=0.05, sigmoid codes",
    ),
    Variant(
        "contractive",
        "dense",
        {"code_dim": 32, "hidden": [256], "code_activation": "sigmoid"},
        {"contractive": 0.1, "contractive_samples": 2},
        note="squared Frobenius norm of the Jacobian (2-projection estimate)",
    ),
    Variant(
        "weight-decay", "dense", {"code_dim": 32, "hidden": [256]}, {"weight_decay": 1e-4}, note="L2 1e-4"
    ),
    Variant(
        "stacked",
        "dense",
        {"code_dim": 32, "hidden": [256, 128]},
        {"pretrain_epochs": 1},
        note="1 pre-training epoch per layer, then fine-tuning",
    ),
    Variant(
        "overcomplete-denoise",
        "dense",
        {"code_dim": 1024},
        {"mask_noise": 0.5},
        note="1024-value code > 784 inputs; allowed because denoising",
    ),
    Variant("linear-pca", "linear", {"code_dim": 32}, note="linear, squared error, centred = PCA subspace"),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.variants", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--limit", type=int, default=6000, help="training items (the fixed budget)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs (the fixed budget)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3, help="Adam, one-cycle schedule")
    p.add_argument("--test-limit", type=int, default=2000, help="test items measured through each bundle")
    p.add_argument("--quant", default="affine8")
    p.add_argument("--threads", type=int, default=2, help="torch threads (the machine is shared)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", action="append", default=[], help="run only these variants (repeatable)")
    p.add_argument("--out-dir", type=Path, default=Path("docs"))
    p.add_argument("--work-dir", type=Path, default=Path("runs/variants"), help="checkpoints and bundles")
    return p.parse_args(argv)


def run_variant(v: Variant, args: argparse.Namespace) -> dict:
    import torch

    from training.export import export_bundle
    from training.train import TrainConfig, save_checkpoint, train

    cfg = TrainConfig(
        model=v.model,
        model_args=dict(v.model_args),
        data=args.data,
        limit=args.limit,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        threads=args.threads,
        **v.train,
    )
    model, record = train(cfg, progress=False)
    ckpt = save_checkpoint(args.work_dir / f"{v.name}.pt", model, cfg, record)
    bundle = args.work_dir / f"bundle-{v.name}"
    t0 = time.perf_counter()
    m = export_bundle(
        ckpt, bundle, quant=args.quant, fit_items=min(args.limit or 10000, 10000), test_limit=args.test_limit
    )
    t = m.metrics["test"]
    side_bits = sum(int(np.prod(f.shape)) * f.bits for f in m.payload.side)
    row = {
        "variant": v.name,
        "note": v.note,
        "flags": v.flags(),
        "model": v.model,
        "model_args": model.args,
        "params": int(sum(p.numel() for p in model.parameters())),
        "code_values": int(np.prod(m.code_shape)),
        "side_bits": side_bits,
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
    }
    last = record["history"][-1]
    if "rho_hat_mean" in last:
        row["rho_hat_mean"] = last["rho_hat_mean"]
    del model
    torch.set_num_threads(args.threads)
    return row


def reconstructions(bundle_dir: str, x_raw: np.ndarray) -> np.ndarray:
    """Items through a sealed bundle's codec (encode, then decode): [0, 1] reconstructions."""
    from latent_codec.codec import Codec

    codec = Codec.open(bundle_dir)
    return codec.decode(codec.encode(x_raw), unit=True)


def write_png(rows: list[dict], x_raw: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from latent_codec.bundle import InputSpec

    n = len(x_raw)
    grid = [("original", InputSpec.of_items(x_raw).to_unit(x_raw))] + [
        (r["variant"], reconstructions(r["bundle"], x_raw)) for r in rows
    ]
    fig, axes = plt.subplots(len(grid), n, figsize=(n * 0.9 + 1.6, len(grid) * 0.9), squeeze=False)
    for i, (name, imgs) in enumerate(grid):
        for j in range(n):
            ax = axes[i][j]
            ax.imshow(imgs[j, 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i][0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(left=0.2, right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.05)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_markdown(
    rows: list[dict], args: argparse.Namespace, argv: list[str], path: Path, seconds: float
) -> None:
    cmd = "python -m bench.variants" + ("" if not argv else " " + " ".join(shlex.quote(a) for a in argv))
    lines = [
        "# Autoencoder variants on Fashion-MNIST",
        "",
        f"Generated by `{cmd}` (do not edit by hand). Budget per variant: {args.limit or 'all'} training items, "
        f"{args.epochs} epochs (stacked: plus its pre-training epochs), batch {args.batch_size}, Adam lr {args.lr:g} "
        f"(one-cycle), seed {args.seed}, "
        f"{args.threads} torch threads; codes quantised {args.quant}; test metrics on the first "
        f"{rows[0]['test_items'] if rows else 0} test items through each exported bundle (ONNX Runtime, "
        f"payload packing, uint8 pixels). Bytes per item include side information (max-unpooling switches). "
        f"Raw items are 784 bytes. Total run {seconds / 60:.1f} min; training seconds depend on the machine's "
        f"load at the time (it is shared), so compare them only roughly.",
        "",
        "| variant | what | parameters | code size | test MSE | PSNR (dB) | bytes/item | ratio | training (s) |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        code = f"{r['code_values']}" + (f" + {r['side_bits']} switch bits" if r["side_bits"] else "")
        note = r["note"].replace("|", "\\|")  # a pipe would split the table cell
        lines.append(
            f"| {r['variant']} | {note} | {r['params']:,} | {code} | {r['test_mse']:.5f} | "
            f"{r['test_psnr']:.2f} | {r['bytes_per_item']:.0f} | {r['compression_ratio']:.1f}:1 | "
            f"{r['train_seconds']:.0f} |"
        )
    lines += [
        "",
        "Training flags of each row (add `--data fashion-mnist --limit N --epochs E --out X.pt`):",
        "",
    ]
    lines += [
        f"- {r['variant']}: `{r['flags']}`"
        + (f" (final mean code activation rho_hat {r['rho_hat_mean']:.3f})" if "rho_hat_mean" in r else "")
        for r in rows
    ]
    lines += ["", "![originals and reconstructions per variant](variants.png)", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from latent_codec.errors import CodecError
    from training.data import load_split

    torch.set_num_threads(args.threads)
    chosen = [v for v in VARIANTS if not args.only or v.name in args.only]
    unknown = set(args.only) - {v.name for v in VARIANTS}
    if unknown:
        print(
            f"error: unknown variants {sorted(unknown)}; known: {', '.join(v.name for v in VARIANTS)}",
            file=sys.stderr,
        )
        return 2
    args.work_dir.mkdir(parents=True, exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = []
    for v in chosen:
        print(f"[{v.name}] {v.flags()}", file=sys.stderr)
        try:
            row = run_variant(v, args)
        except (CodecError, ValueError) as exc:
            print(f"error: variant {v.name}: {exc}", file=sys.stderr)
            return 1
        rows.append(row)
        print(
            f"[{v.name}] PSNR {row['test_psnr']:.2f} dB, {row['bytes_per_item']:.0f} bytes/item, "
            f"train {row['train_seconds']:.0f} s, export {row['export_seconds']:.0f} s",
            file=sys.stderr,
        )
    seconds = time.perf_counter() - t0
    x_show = load_split(args.data, "test", 8).x
    write_png(rows, x_show, args.out_dir / "variants.png")
    write_markdown(
        rows, args, list(argv if argv is not None else sys.argv[1:]), args.out_dir / "variants.md", seconds
    )
    (args.out_dir / "variants.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(f"wrote {args.out_dir / 'variants.md'}, variants.png, variants.json ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

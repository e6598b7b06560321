"""GDN/IGDN against ReLU in the spatial model, and the hyperprior against the factorised prior, at equal budgets.

    python -m bench.gdn                      # -> docs/gdn.md (about 10 min on 2 cores)

Four small spatial models, identical but for the nonlinearity and the entropy model, trained from the same
seed with the same rate-distortion objective, budget and lambda on the first --limit Fashion-MNIST training
items, then exported and measured on --test-limit test images through the real codec (real payload bytes).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench-gdn", description=__doc__.split("\n")[0])
    p.add_argument("--limit", type=int, default=20000, help="training items")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--rd-lambda", type=float, default=0.0016)
    p.add_argument("--test-limit", type=int, default=2000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("docs/gdn.md"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from training.export import export_bundle
    from training.train import TrainConfig, save_checkpoint, train

    args = parse_args(argv)
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for gdn in (True, False):
            for entropy in ("hyperprior", "factorized"):
                cfg = TrainConfig(
                    model="spatial",
                    model_args={"channels": 64, "code_channels": 32, "entropy": entropy, "gdn": gdn},
                    limit=args.limit,
                    epochs=args.epochs,
                    batch_size=32,
                    lr=1e-3,
                    rd_lambda=args.rd_lambda,
                    quant_noise="mixed",
                    threads=args.threads,
                )
                model, record = train(cfg, progress=None)
                name = f"{'gdn' if gdn else 'relu'}-{entropy}"
                ckpt = save_checkpoint(Path(tmp) / f"{name}.pt", model, cfg, record)
                m = export_bundle(
                    ckpt, Path(tmp) / name, quant="learned", test_limit=args.test_limit, fit_items=5000
                )
                t = m.metrics["test"]
                rows.append((name, t["bytes_per_item"], t["psnr"], record["train_seconds"]))
                print(f"{name}: {t['bytes_per_item']:.1f} bytes, {t['psnr']:.2f} dB", file=sys.stderr)
    lines = [
        "# GDN vs ReLU, hyperprior vs factorised prior (spatial code maps)",
        "",
        f"- command: `python -m bench.gdn {' '.join(argv if argv is not None else sys.argv[1:])}`; run time "
        f"{time.perf_counter() - t0:.0f} s",
        f"- each model: 64 channels, 32 code channels, lambda {args.rd_lambda:g}, {args.epochs} epochs on the first "
        f"{args.limit} Fashion-MNIST training items, seed 0; measured on {args.test_limit} test images through the "
        "codec (real payload bytes). A short budget: the ranking, not the absolute numbers, is the finding.",
        "",
        "| model | bytes/image | PSNR (dB) | train s |",
        "|---|---:|---:|---:|",
        *[f"| {n} | {b:.1f} | {p:.2f} | {s:.0f} |" for n, b, p, s in rows],
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

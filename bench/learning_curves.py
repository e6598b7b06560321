"""Learning curves of training runs side by side: a table of where each got to and a plot against time.

    python -m bench.learning_curves runs/photo-compare/*.pt --png docs/photo_training.png --md table.md

Reads each run's record (a finished checkpoint, or the training state of a run still going or stopped:
runs/x.state.pt) and its learning curve (training.train --val-every): validation PSNR, bits per pixel from the
model's own rate estimate (rounded codes), the rate-distortion loss D + lambda R per item, against the
process's CPU seconds (what a shared, loaded machine does not inflate) and wall seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def read_run(path: Path) -> dict:
    """-> {"name", "config", "curve", "record"} from a checkpoint (.pt) or a training state (.state.pt)."""
    import torch

    raw = torch.load(path, weights_only=True, map_location="cpu")
    if "record_json" in raw:
        record = json.loads(raw["record_json"])
        return {
            "name": path.stem,
            "config": raw["config"],
            "curve": record.get("curve", []),
            "record": record,
        }
    run = raw["run"]
    record = {
        "train_seconds": run["elapsed"],
        "train_cpu_seconds": run.get("cpu"),
        "history": run["history"],
        "stability": {"rollbacks": raw["guard"]["events"]},
        "steps": {"done": raw["now"]["position"]["step"]},
    }
    return {
        "name": path.name.removesuffix(".state.pt"),
        "config": raw["config"],
        "curve": run["curve"],
        "record": record,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench-learning-curves", description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="checkpoints (.pt) or training states (.state.pt)")
    p.add_argument("--png", type=Path, default=None)
    p.add_argument("--md", type=Path, default=None)
    p.add_argument("--title", default="validation on crops of held-out photographs")
    p.add_argument(
        "--x", choices=["cpu", "step"], default="cpu", help="x axis: CPU minutes or optimizer steps"
    )
    return p.parse_args(argv)


def table(runs: list[dict]) -> str:
    lines = [
        "| run | steps | wall min | CPU min | CPU s/step | val PSNR (dB) | val bpp | val D + λR | rollbacks |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        c = r["curve"][-1] if r["curve"] else {}
        rec = r["record"]
        steps = rec.get("steps", {}).get("done") or c.get("step", 0)
        cpu = rec.get("train_cpu_seconds") or c.get("cpu_seconds") or 0.0
        lines.append(
            f"| {r['name']} | {steps} | {rec.get('train_seconds', 0) / 60:.1f} | {cpu / 60:.1f} | "
            f"{cpu / max(steps, 1):.3f} | {c.get('val_psnr', float('nan')):.2f} | {c.get('val_bpp', float('nan')):.3f} | "
            f"{c.get('val_rd_loss', float('nan')):.1f} | {len(rec.get('stability', {}).get('rollbacks', []))} |"
        )
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], path: Path, title: str, x: str = "cpu") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for r in runs:
        cv = [c for c in r["curve"] if "val_psnr" in c]
        if not cv:
            continue
        t = [c["step"] if x == "step" else c.get("cpu_seconds", c["seconds"]) / 60 for c in cv]
        axes[0].plot(t, [c.get("val_rd_loss", float("nan")) for c in cv], marker=".", label=r["name"])
        axes[1].plot(t, [c["val_psnr"] for c in cv], marker=".", label=r["name"])
        axes[2].plot(t, [c.get("val_bpp", float("nan")) for c in cv], marker=".", label=r["name"])
    for ax, what in zip(
        axes, ("rate-distortion loss D + λR per crop (lower is better)", "PSNR (dB)", "bits per pixel")
    ):
        ax.set_xlabel("optimizer steps" if x == "step" else "training CPU minutes (one thread)")
        ax.set_title(what, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[1].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = [read_run(p) for p in args.runs]
    text = table(runs)
    print(text)
    if args.md:
        args.md.write_text(text)
    if args.png:
        plot(runs, args.png, args.title, args.x)
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

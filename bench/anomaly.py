"""Anomaly scores from reconstruction error (seed 000): an autoencoder trained on some classes reconstructs them
well and the held-out classes badly, so the error of an item flags what the bundle was not trained for.

    python -m bench.anomaly          # writes docs/anomaly.md and docs/anomaly.json

The bundle trains on the training items of the --normal classes only (an .npz of those items; the loader
never sees a label), as a bundle trained on one fleet's data would. The score of an item is what the cloud
computes for an audited item (cloud/audit.py): the MSE on the [0, 1] scale between the original and the
decoded payload, through the bundle's Codec. ROC AUC (scikit-learn) of that score separating the normal
classes' test items from each held-out class's test items, beside PCA's reconstruction error (same
training items, as many components as the code has values) and the distance to the normal items' mean image.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.map2d import FASHION
from bench.small_bundles import Budget, Recipe

DETECTOR = Recipe(
    "anomaly", "dense", {"code_dim": 32, "hidden": [256]}, note="784-256-32 on the normal classes"
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.anomaly", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--normal", default="0,1,2,3,4", help="classes the bundle trains on (comma-separated)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=Path("docs"))
    p.add_argument("--work-dir", type=Path, default=Path("runs/uses"))
    return p.parse_args(argv)


def auc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    scores = np.concatenate([normal, anomalous])
    return float(roc_auc_score(np.r_[np.zeros(len(normal)), np.ones(len(anomalous))], scores))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bench.pca import PCA
    from bench.small_bundles import reconstruct, set_threads, train_bundle, train_seconds
    from latent_codec import datasets
    from latent_codec.codec import Codec

    t_start = time.perf_counter()
    set_threads(args.threads)
    train = datasets.load(args.data, "train")
    test = datasets.load(args.data, "test")
    if train.y is None or test.y is None:
        print(f"error: {args.data} has no labels to pick the normal classes by", file=sys.stderr)
        return 2
    normal = sorted({int(c) for c in args.normal.split(",")})
    classes = sorted({int(c) for c in np.unique(test.y)})
    held_out = [c for c in classes if c not in normal]
    if not normal or not held_out or any(c not in classes for c in normal):
        print(f"error: --normal {args.normal}: name some, not all, of the classes {classes}", file=sys.stderr)
        return 2
    is_normal_tr = np.isin(train.y, normal)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    npz = args.work_dir / f"normal-{'-'.join(map(str, normal))}.npz"
    if not npz.is_file():  # items only: training never sees a label
        np.savez(npz, x_train=train.x[is_normal_tr], x_test=test.x[np.isin(test.y, normal)])
    n_train = int(is_normal_tr.sum())
    budget = Budget(data=str(npz), limit=n_train, epochs=args.epochs, seed=args.seed, threads=args.threads)
    bundle = train_bundle(DETECTOR, budget, args.work_dir)
    codec = Codec.open(bundle, threads=args.threads)
    score_ae = codec.squared_error(test.x, reconstruct(codec, test.x))  # the audit's per-item MSE
    u_tr = codec.scale(train.x[is_normal_tr]).reshape(n_train, -1)
    u_te = codec.scale(test.x).reshape(len(test.x), -1)
    k = int(np.prod(codec.code_shape))
    pca = PCA.fit(u_tr, k)
    score_pca = ((pca.decode(pca.encode(u_te, k)) - u_te) ** 2).mean(1)
    score_mean = ((u_te - u_tr.mean(0)) ** 2).mean(1)
    names = FASHION if args.data == "fashion-mnist" else [str(c) for c in classes]
    is_normal = np.isin(test.y, normal)
    methods = {
        "autoencoder (audit MSE)": score_ae,
        f"PCA-{k} error": score_pca,
        "distance to mean image": score_mean,
    }
    rows = []
    for c in held_out + ["all"]:
        sel = ~is_normal if c == "all" else test.y == c
        rows.append(
            {
                "class": "all held-out" if c == "all" else f"{c} {names[c]}",
                "items": int(sel.sum()),
                "auc": {m: auc(s[is_normal], s[sel]) for m, s in methods.items()},
                "median_mse": float(np.median(score_ae[sel])),
            }
        )
    seconds = time.perf_counter() - t_start
    lines = [
        "# Anomaly scores: reconstruction error on classes the bundle never saw",
        "",
        f"Generated by `python -m bench.anomaly` (do not edit by hand); run {seconds / 60:.1f} min on the shared 2-core "
        f"machine, {args.threads} torch thread(s), seed {args.seed}.",
        "",
        f"The bundle `{codec.bundle_id}` ({DETECTOR.note}; `{DETECTOR.flags()}`, {args.epochs} epochs, "
        f"{train_seconds(bundle):.0f} s with export) trained on the {n_train:,} training items of the normal classes "
        f"{', '.join(f'{c} {names[c]}' for c in normal)}, from an .npz of items alone (no labels). Score: the per-item "
        "MSE between the original and the decoded payload, the quantity the server computes for an audited item "
        "(`aecodec_audit_item_mse`, `StoredItem.audit_mse`). ROC AUC of the score separating the "
        f"{int(is_normal.sum()):,} normal test items from each held-out class's test items (1 = perfect, 0.5 = chance).",
        "",
        f"Median MSE of the normal test items: {float(np.median(score_ae[is_normal])):.4f}.",
        "",
        "| held-out class | items | median MSE | " + " | ".join(f"AUC, {m}" for m in methods) + " |",
        "|---|---:|---:|" + "---:|" * len(methods),
    ]
    for r in rows:
        best = max(r["auc"], key=r["auc"].get)
        cells = [f"**{v:.3f}**" if m == best else f"{v:.3f}" for m, v in r["auc"].items()]
        lines.append(f"| {r['class']} | {r['items']:,} | {r['median_mse']:.4f} | " + " | ".join(cells) + " |")
    lines.append("")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "anomaly.md").write_text("\n".join(lines))
    (args.out_dir / "anomaly.json").write_text(
        json.dumps({"bundle_id": codec.bundle_id, "normal": normal, "rows": rows}, indent=1) + "\n"
    )
    print("\n".join(lines[8:]))
    print(f"wrote {args.out_dir / 'anomaly.md'} ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

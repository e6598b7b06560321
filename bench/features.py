"""Codes as features for a linear classifier (seed 001: top-level activations as features for SVMs): logistic
regression or a linear SVM (scikit-learn) on each bundle's codes, against raw pixels and PCA features of the
same size.

    python -m bench.features                      # writes docs/features.md and docs/features.json
    python -m bench.features --classifier svm     # a linear SVM instead of logistic regression

The bundles: the family's plain, denoising, sparse, contractive and stacked autoencoders and the 2-D map
bundle (bench/small_bundles.py, trained on the training items without labels), and a spatial code-map
bundle of the committed zoo. Features are the codes as the cloud stores them (encoded at the edge,
dequantised from the payload), standardised on the classifier's training items. Labels are used only by
the classifier: fitted on the first --clf-items training items, scored on every test item.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.small_bundles import (
    CONTRACTIVE,
    DENOISING,
    MAP2D,
    PLAIN,
    SPARSE,
    STACKED,
    Budget,
    Recipe,
    labelled_splits,
)

RECIPES: list[Recipe] = [PLAIN, DENOISING, SPARSE, CONTRACTIVE, STACKED, MAP2D]
ZOO_MAP = "zoo/spatial-lambda-0.0064"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.features", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--limit", type=int, default=20000, help="training items of the autoencoders")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--map-epochs", type=int, default=15, help="epochs of the 2-D map bundle (as bench.map2d)")
    p.add_argument("--clf-items", type=int, default=10000, help="training items the classifier is fitted on")
    p.add_argument("--test-limit", type=int, default=0, help="test items scored (0 = all)")
    p.add_argument("--classifier", choices=["logreg", "svm"], default="logreg")
    p.add_argument("--map-bundle", default=ZOO_MAP, help="a spatial (code-map) bundle; '' to leave it out")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=Path("docs"))
    p.add_argument("--work-dir", type=Path, default=Path("runs/uses"))
    return p.parse_args(argv)


def accuracy(
    kind: str, f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray, y_test: np.ndarray
) -> float:
    """Test accuracy of a linear classifier fitted on standardised features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    clf = LogisticRegression(max_iter=2000) if kind == "logreg" else LinearSVC(C=0.1, max_iter=5000)
    model = make_pipeline(StandardScaler(), clf).fit(f_train, y_train)
    return float((model.predict(f_test) == y_test).mean())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bench.pca import PCA
    from bench.small_bundles import set_threads, stored_codes, train_bundle
    from latent_codec.codec import Codec

    t_start = time.perf_counter()
    set_threads(args.threads)
    splits = labelled_splits(args.data, "score a classifier with")
    if splits is None:
        return 2
    train, test = splits
    n_test = args.test_limit or len(test.x)
    x_tr, y_tr = train.x[: args.clf_items], train.y[: args.clf_items]
    x_te, y_te = test.x[:n_test], test.y[:n_test]
    bundles: list[tuple[str, str, Path]] = []
    for r in RECIPES:
        epochs = args.map_epochs if r is MAP2D else args.epochs
        budget = Budget(data=args.data, limit=args.limit, epochs=epochs, seed=args.seed, threads=args.threads)
        bundles.append((r.name, r.note, train_bundle(r, budget, args.work_dir)))
    if args.map_bundle:
        bundles.append(
            (
                "code map (zoo)",
                "spatial bundle: a 32-channel map at a quarter of the size",
                Path(args.map_bundle),
            )
        )
    first = Codec.open(bundles[0][2], threads=args.threads)
    u_tr = first.scale(x_tr).reshape(len(x_tr), -1)
    u_te = first.scale(x_te).reshape(len(x_te), -1)
    pixels = accuracy(args.classifier, u_tr, y_tr, u_te, y_te)
    pca = PCA.fit(u_tr, u_tr.shape[1])
    pca_acc: dict[int, float] = {}
    rows = []
    for name, note, path in bundles:
        codec = Codec.open(path, threads=args.threads)
        f_tr, f_te = stored_codes(codec, x_tr), stored_codes(codec, x_te)
        k = f_tr.shape[1]
        kp = min(k, u_tr.shape[1])
        if kp not in pca_acc:
            pca_acc[kp] = accuracy(args.classifier, pca.encode(u_tr, kp), y_tr, pca.encode(u_te, kp), y_te)
        test_metrics = (codec.manifest.metrics if codec.manifest else {}).get("test", {})
        rows.append(
            {
                "bundle": name,
                "what": note,
                "bundle_id": codec.bundle_id,
                "format": codec.format,
                "code_values": k,
                "psnr": test_metrics.get("psnr"),
                "accuracy": accuracy(args.classifier, f_tr, y_tr, f_te, y_te),
                "pca_k": kp,
                "pca_accuracy": pca_acc[kp],
            }
        )
        print(f"{name}: {rows[-1]['accuracy']:.1%} (PCA-{kp} {pca_acc[kp]:.1%})", file=sys.stderr)
    seconds = time.perf_counter() - t_start
    clf = (
        "logistic regression (lbfgs)" if args.classifier == "logreg" else "a linear SVM (LinearSVC, C = 0.1)"
    )
    lines = [
        "# Codes as features for a linear classifier",
        "",
        f"Generated by `python -m bench.features{' --classifier svm' if args.classifier == 'svm' else ''}` (do not edit "
        f"by hand); run {seconds / 60:.1f} min on the shared 2-core machine, {args.threads} torch thread(s), seed {args.seed}.",
        "",
        f"The classifier: {clf} on standardised features, fitted on the first {len(x_tr):,} training items, scored "
        f"on {len(x_te):,} test items. The autoencoders (bench/small_bundles.py) trained on the first {args.limit:,} "
        f"training items for {args.epochs} epochs ({args.map_epochs} for the 2-D map) without labels; the code map is "
        f"the committed `{args.map_bundle}`. Features are codes as the cloud stores them: each bundle's payloads, "
        "unpacked and dequantised. PCA fits the classifier's training items; 'PCA, same size' has as many components "
        "as the code has values (at most the 784 pixels).",
        "",
        f"Raw pixels (784 values): **{pixels:.1%}**.",
        "",
        "| bundle | what | code values | payload | clean PSNR (dB) | accuracy on codes | PCA, same size | codes - PCA |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        r["what_md"] = r["what"].replace("|", "\\|")  # a pipe would end the table cell
        psnr = f"{r['psnr']:.2f}" if r["psnr"] is not None else ""
        lines.append(
            f"| {r['bundle']} (`{r['bundle_id']}`) | {r['what_md']} | {r['code_values']} | {r['format']} | {psnr} | "
            f"{r['accuracy']:.1%} | {r['pca_accuracy']:.1%} (k = {r['pca_k']}) | "
            f"{100 * (r['accuracy'] - r['pca_accuracy']):+.1f} points |"
        )
    lines += [
        "",
        "Training flags of each bundle (add `--data fashion-mnist --limit N --epochs E --out X.pt`):",
        "",
    ]
    lines += [f"- {r.name}: `{r.flags()}`" for r in RECIPES]
    lines.append("")
    out = args.out_dir / ("features.md" if args.classifier == "logreg" else "features_svm.md")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    out.with_suffix(".json").write_text(json.dumps({"pixels": pixels, "rows": rows}, indent=1) + "\n")
    print("\n".join(lines[8 : -len(RECIPES) - 3]))
    print(f"wrote {out} ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

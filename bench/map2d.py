"""A 2-D map of the test set: an autoencoder with a code of two values beside PCA's first two components (seed
001: "visualize MNIST using a CAE, each digit with 2 values"), and how well each map keeps neighbourhoods.

    python -m bench.map2d            # writes docs/map2d.md, docs/map2d.png, docs/map2d_neighbours.png

The map bundle (bench/small_bundles.py MAP2D, 784-512-128-2) trains on the training items alone, no labels;
its 2-value codes are read as the cloud stores them (encoded at the edge, dequantised from the payload).
PCA fits the same training items. Labels only colour the plot and score the maps:
- trustworthiness (scikit-learn, Venna & Kaski): 1 when every item's k nearest neighbours in the map were
  also near it in pixel space, lower as the map invents neighbours; on a random subset of test items;
- kNN accuracy in 2-D: a k-nearest-neighbour classifier fitted on the training items' 2-D codes and
  scored on the test items' codes, beside the same classifier in 784-D pixel space.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.small_bundles import MAP2D, Budget, labelled_splits, train_bundle, train_seconds

FASHION = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
KS = (1, 5, 10, 20, 50)  # neighbourhood sizes of the preservation figure


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.map2d", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--limit", type=int, default=20000, help="training items (autoencoder, PCA and kNN)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--trust-items", type=int, default=3000, help="test items for trustworthiness (O(N^2))")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=Path("docs"))
    p.add_argument("--work-dir", type=Path, default=Path("runs/uses"))
    return p.parse_args(argv)


def knn_accuracy(
    train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray, k: int
) -> float:
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(n_neighbors=k).fit(train, y_train)
    return float((clf.predict(test) == y_test).mean())


def neighbourhoods(
    maps: dict[str, tuple[np.ndarray, np.ndarray]],
    pixels: tuple[np.ndarray, np.ndarray],
    labels: tuple[np.ndarray, np.ndarray],
    trust_idx: np.ndarray,
) -> dict:
    """Trustworthiness and kNN accuracy per map and k; kNN in pixel space as the reference."""
    from sklearn.manifold import trustworthiness

    out: dict = {"k": list(KS), "trust": {}, "knn": {}}
    for name, (tr, te) in maps.items():
        out["trust"][name] = [
            float(trustworthiness(pixels[1][trust_idx], te[trust_idx], n_neighbors=k)) for k in KS
        ]
        out["knn"][name] = [knn_accuracy(tr, labels[0], te, labels[1], k) for k in KS]
    out["knn"]["pixels (784-D)"] = [knn_accuracy(pixels[0], labels[0], pixels[1], labels[1], 10)]
    return out


def plot_maps(maps: dict[str, np.ndarray], y: np.ndarray, names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(maps), figsize=(6.2 * len(maps), 6))
    cmap = plt.get_cmap("tab10")
    for ax, (title, z) in zip(np.atleast_1d(axes), maps.items()):
        for c in range(len(names)):
            sel = y == c
            ax.scatter(z[sel, 0], z[sel, 1], s=2, color=cmap(c), label=names[c], alpha=0.6, rasterized=True)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=cmap(c), label=names[c]) for c in range(len(names))
    ]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(names), 10), fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.94, bottom=0.08, wspace=0.04)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_neighbourhoods(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name, vals in res["trust"].items():
        a.plot(res["k"], vals, marker="o", label=name)
    a.set_xlabel("k (neighbours)")
    a.set_ylabel("trustworthiness")
    a.set_xscale("log")
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    for name, vals in res["knn"].items():
        if len(vals) == len(res["k"]):
            b.plot(res["k"], vals, marker="o", label=name)
    for name, vals in res["knn"].items():
        if len(vals) == 1:
            b.axhline(vals[0], ls="--", color="grey", label=f"{name}, k = 10")
    b.set_xlabel("k (neighbours)")
    b.set_ylabel("kNN test accuracy")
    b.set_xscale("log")
    b.legend(fontsize=8)
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bench.pca import PCA
    from bench.small_bundles import set_threads, stored_codes
    from latent_codec.codec import Codec

    t_start = time.perf_counter()
    set_threads(args.threads)
    budget = Budget(
        data=args.data, limit=args.limit, epochs=args.epochs, seed=args.seed, threads=args.threads
    )
    splits = labelled_splits(args.data, "colour or score the maps")  # before training, not after
    if splits is None:
        return 2
    train, test = splits
    bundle = train_bundle(MAP2D, budget, args.work_dir)
    x_tr, y_tr = train.x[: args.limit], train.y[: args.limit]
    codec = Codec.open(bundle, threads=args.threads)
    ae = (stored_codes(codec, x_tr), stored_codes(codec, test.x))
    u_tr, u_te = codec.scale(x_tr).reshape(len(x_tr), -1), codec.scale(test.x).reshape(len(test.x), -1)
    pca = PCA.fit(u_tr, 2)
    pc = (pca.encode(u_tr, 2), pca.encode(u_te, 2))
    names = FASHION if args.data == "fashion-mnist" else [str(c) for c in range(int(test.y.max()) + 1)]
    ae_name, pca_name = "autoencoder, 2-value code", "PCA, 2 components"
    trust_idx = np.random.default_rng(args.seed).choice(
        len(test.x), min(args.trust_items, len(test.x)), replace=False
    )
    res = neighbourhoods({ae_name: ae, pca_name: pc}, (u_tr, u_te), (y_tr, test.y), trust_idx)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    plot_maps(
        {f"{ae_name} ({codec.bundle_id})": ae[1], pca_name: pc[1]}, test.y, names, args.out_dir / "map2d.png"
    )
    plot_neighbourhoods(res, args.out_dir / "map2d_neighbours.png")
    seconds = time.perf_counter() - t_start
    lines = [
        "# A 2-D map of Fashion-MNIST: an autoencoder with a 2-value code beside PCA",
        "",
        f"Generated by `python -m bench.map2d` (do not edit by hand); run {seconds / 60:.1f} min on the shared "
        f"2-core machine, {args.threads} torch thread(s), seed {args.seed}.",
        "",
        f"The map bundle `{codec.bundle_id}` ({MAP2D.note}; `{MAP2D.flags()}`) trained for {args.epochs} epochs on "
        f"the first {args.limit:,} training items ({train_seconds(bundle):.0f} s with export), without labels; its "
        f"codes are read as the cloud stores them ({codec.format} payloads, dequantised). PCA fits the same items. "
        f"Test PSNR of the map bundle through its codec: {codec.manifest.metrics['test']['psnr']:.2f} dB "
        f"({codec.manifest.metrics['test']['items']} items). The {len(test.x):,} test items, coloured by class:",
        "",
        "![2-D maps of the test set](map2d.png)",
        "",
        f"Neighbourhood preservation. Trustworthiness (scikit-learn) on {len(trust_idx):,} random test items: "
        "1 when an item's k nearest neighbours in the map are also among its nearest in pixel space. kNN accuracy: "
        f"a k-nearest-neighbour classifier fitted on the {args.limit:,} training items' 2-D codes, scored on the "
        "test items (labels are used here only, never in training the autoencoder).",
        "",
        "| map | "
        + " | ".join(f"trust. k={k}" for k in KS)
        + " | "
        + " | ".join(f"kNN k={k}" for k in KS)
        + " |",
        "|---|" + "---:|" * (2 * len(KS)),
    ]
    for name in (ae_name, pca_name):
        t = " | ".join(f"{v:.3f}" for v in res["trust"][name])
        a = " | ".join(f"{v:.1%}" for v in res["knn"][name])
        lines.append(f"| {name} | {t} | {a} |")
    ref = res["knn"]["pixels (784-D)"][0]
    lines += [
        "",
        f"For reference, the same kNN classifier (k = 10) in the 784-D pixel space scores {ref:.1%}.",
        "",
        "![trustworthiness and kNN accuracy against k](map2d_neighbours.png)",
        "",
    ]
    (args.out_dir / "map2d.md").write_text("\n".join(lines))
    (args.out_dir / "map2d.json").write_text(
        json.dumps({"bundle_id": codec.bundle_id, **res}, indent=1) + "\n"
    )
    print("\n".join(lines[-12:]))
    print(f"wrote {args.out_dir / 'map2d.md'}, map2d.png, map2d_neighbours.png ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

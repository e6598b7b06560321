"""Semantic hashing (Salakhutdinov & Hinton): precision@10 of Hamming-distance retrieval with a bundle's binary
codes, against random codes, random hyperplanes and PCA-sign codes of the same length.

    python -m bench.hashing          # writes docs/hashing.md and docs/hashing.json

The hashing bundle (HASHING: a sigmoid code with Gaussian noise N(0, sigma^2) added before the sigmoid while
training, so the code carries information only near 0 and 1) and its twin without the noise train on the
training items without labels and export with --binary-code (threshold 0.5). The database is the training
items' binary codes, computed as the cloud computes them on ingest (latent_codec/binary_code.py: payload,
dequantised, thresholded); queries are test items, encoded as the edge encodes them. A retrieved item is
relevant when it has the query's class; precision@10 is the share of relevant items among the 10 nearest
by Hamming distance (ties broken by database order, as the server's Search breaks them). Baselines of the same
number of bits: random codes (chance), random hyperplanes through the centred pixels (LSH) and the signs of
the first principal components (PCA-sign); and, for scale, Euclidean 10-NN on the 784 pixels.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bench.small_bundles import Budget, Recipe, labelled_splits

BITS = 32
EPOCHS = 30  # of fine-tuning, after 2 epochs of layer-wise pre-training per layer
HASHING = Recipe(
    "hashing",
    "dense",
    {"code_dim": BITS, "hidden": [512, 256], "code_activation": "sigmoid", "code_noise": 2.0},
    {"pretrain_epochs": 2},
    note="784-512-256-32, stacked, sigmoid code, N(0, 4) noise before the sigmoid in training",
    binary_code=True,
)
HASHING_TWIN = Recipe(
    "hashing-twin",
    "dense",
    {"code_dim": BITS, "hidden": [512, 256], "code_activation": "sigmoid"},
    {"pretrain_epochs": 2},
    note="the same without the code noise",
    binary_code=True,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.hashing", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--limit", type=int, default=20000, help="training items of the autoencoders")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--database", type=int, default=0, help="training items in the database (0 = all)")
    p.add_argument("--queries", type=int, default=2000, help="test items used as queries")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=Path("docs"))
    p.add_argument("--work-dir", type=Path, default=Path("runs/uses"))
    return p.parse_args(argv)


def precision_at(
    queries: np.ndarray, db: np.ndarray, y_q: np.ndarray, y_db: np.ndarray, k: int = 10
) -> float:
    """Mean share of the query's class among the k nearest packed codes by Hamming distance (stable ties)."""
    from latent_codec.binary_code import nearest

    hits = 0
    for q, y in zip(queries, y_q):
        idx, _ = nearest(q, db, k)
        hits += int((y_db[idx] == y).sum())
    return hits / (len(queries) * k)


def euclid_precision(
    queries: np.ndarray, db: np.ndarray, y_q: np.ndarray, y_db: np.ndarray, k: int = 10
) -> float:
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=k).fit(db).kneighbors(queries, return_distance=False)
    return float((y_db[idx] == y_q[:, None]).mean())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bench.pca import PCA
    from bench.small_bundles import set_threads, stored_codes, train_bundle, train_seconds
    from latent_codec.binary_code import binary_codes
    from latent_codec.codec import Codec

    t_start = time.perf_counter()
    set_threads(args.threads)
    splits = labelled_splits(args.data, "judge retrieval by")
    if splits is None:
        return 2
    train, test = splits
    n_db = args.database or len(train.x)
    x_db, y_db = train.x[:n_db], train.y[:n_db]
    x_q, y_q = test.x[: args.queries], test.y[: args.queries]
    budget = Budget(
        data=args.data, limit=args.limit, epochs=args.epochs, seed=args.seed, threads=args.threads
    )
    rng = np.random.default_rng(args.seed)
    rows = []
    for recipe in (HASHING, HASHING_TWIN):
        path = train_bundle(recipe, budget, args.work_dir)
        codec = Codec.open(path, threads=args.threads)

        def bits(x: np.ndarray, codec: Codec = codec) -> np.ndarray:
            return np.concatenate(
                [binary_codes(codec, codec.encode(x[i : i + 2000])) for i in range(0, len(x), 2000)]
            )

        db_bits, q_bits = bits(x_db), bits(x_q)
        sig = stored_codes(codec, x_q)
        saturated = float(((sig < 0.1) | (sig > 0.9)).mean())
        rows.append(
            {
                "method": f"{recipe.name} (`{codec.bundle_id}`)",
                "what": recipe.note,
                "precision": precision_at(q_bits, db_bits, y_q, y_db),
                "saturated": saturated,
                "bit_balance": float(np.unpackbits(db_bits, axis=1).mean()),
                "train_seconds": train_seconds(path),
                "psnr": codec.manifest.metrics["test"]["psnr"] if codec.manifest else None,
            }
        )
        print(f"{recipe.name}: precision@10 {rows[-1]['precision']:.3f}", file=sys.stderr)
    u_db = x_db.reshape(len(x_db), -1).astype(np.float64) / 255
    u_q = x_q.reshape(len(x_q), -1).astype(np.float64) / 255
    pca = PCA.fit(u_db, BITS)
    planes = rng.standard_normal((u_db.shape[1], BITS))  # LSH: the same hyperplanes for queries and database
    baselines = {
        "random codes": (
            np.packbits(rng.random((len(x_q), BITS)) > 0.5, axis=1),
            np.packbits(rng.random((len(x_db), BITS)) > 0.5, axis=1),
            "independent fair bits: chance",
        ),
        "random hyperplanes (LSH)": (
            np.packbits((u_q - pca.mean) @ planes > 0, axis=1),
            np.packbits((u_db - pca.mean) @ planes > 0, axis=1),
            "signs of 32 random projections of the centred pixels",
        ),
        "PCA-sign": (
            np.packbits(pca.encode(u_q, BITS) > 0, axis=1),
            np.packbits(pca.encode(u_db, BITS) > 0, axis=1),
            "signs of the first 32 principal components",
        ),
    }
    for name, (q, db, what) in baselines.items():
        rows.append(
            {
                "method": name,
                "what": what,
                "precision": precision_at(q, db, y_q, y_db),
                "bit_balance": float(np.unpackbits(db, axis=1).mean()),
            }
        )
    pixels = euclid_precision(u_q, u_db, y_q, y_db)
    seconds = time.perf_counter() - t_start
    lines = [
        "# Semantic hashing: retrieval by Hamming distance on binary codes",
        "",
        f"Generated by `python -m bench.hashing` (do not edit by hand); run {seconds / 60:.1f} min on the shared 2-core "
        f"machine, {args.threads} torch thread(s), seed {args.seed}.",
        "",
        f"Database: the binary codes of {len(x_db):,} training items; queries: {len(x_q):,} test items; {BITS} bits each. "
        f"The autoencoders trained for {args.epochs} epochs on the first {args.limit:,} training items (no labels) and "
        "were exported with `--binary-code` (threshold 0.5 on the sigmoid code, applied to the payload's dequantised code, "
        "as the server does on ingest). 'saturated' is the share of the queries' code values below 0.1 or above 0.9; "
        "'bits set' the share of 1 bits in the database (0.5 = balanced).",
        "",
        "| method | what | precision@10 | saturated | bits set | clean PSNR (dB) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        sat = f"{r['saturated']:.0%}" if "saturated" in r else ""
        ps = f"{r['psnr']:.2f}" if r.get("psnr") is not None else ""
        lines.append(
            f"| {r['method']} | {r['what']} | {r['precision']:.3f} | {sat} | {r['bit_balance']:.2f} | {ps} |"
        )
    lines += [
        "",
        f"For scale: Euclidean 10-NN on the 784 raw pixels (floats, 3,136 bytes per item) reaches {pixels:.3f}.",
        "",
        f"Training flags: `{HASHING.flags()}` and `{HASHING_TWIN.flags()}`, then `training.export --binary-code`.",
        "",
    ]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "hashing.md").write_text("\n".join(lines))
    (args.out_dir / "hashing.json").write_text(
        json.dumps({"rows": rows, "pixels_euclidean": pixels}, indent=1) + "\n"
    )
    print("\n".join(lines[8:]))
    print(f"wrote {args.out_dir / 'hashing.md'} ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

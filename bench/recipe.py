"""What the project gives on your data, in one command: train the map ladder on it, measure it, write the report.

    make bench-rd DATA=digits:28 RETRAIN=1 OUT=runs/digits        # what this module runs
    python -m bench.recipe --data DATA --out OUT [--retrain] [ladder flags, e.g. --first-steps 2000 --steps 500]

DATA is anything latent_codec.datasets.load reads with a test split of its own: an IDX folder (train + t10k
files), a .npz with x_train and x_test, a folder of images with train/ and test/ subfolders, or digits:N
(scikit-learn's digits upscaled to N x N, offline). --retrain trains the recipe preset of bench.train_ladder
(spatial code maps with the integer hyperprior: the ladder that transfers to data it was not designed for) into
OUT/bundles (checkpoints in OUT/runs, its summary in OUT/rd_ladder.json); then bench.rd measures those bundles on
DATA's test split against PNG, zstd, JPEG, WebP, AVIF and PCA fitted on DATA's training split and writes
OUT/rd.md, rd.json and rd.png. Without --retrain the bundles already in OUT/bundles are measured. Every flag it
does not know goes to bench.train_ladder. The time each part took is printed and stated in rd.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from latent_codec import datasets
from latent_codec.errors import CodecError


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="bench-recipe", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, help="IDX folder, .npz (x_train/x_test), image folder, digits:N")
    p.add_argument("--out", type=Path, required=True, help="the report folder (bundles/, runs/, rd.*)")
    p.add_argument("--retrain", action="store_true", help="train the ladder first (else measure OUT/bundles)")
    p.add_argument("--preset", default="recipe", help="bench.train_ladder preset (default: the map ladder)")
    p.add_argument("--no-avif", action="store_true", help="skip AVIF in the measurement (its slowest codec)")
    return p.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    from bench import rd, train_ladder

    argv = list(sys.argv[1:] if argv is None else argv)
    args, ladder_flags = parse_args(argv)
    t0 = time.perf_counter()
    try:
        if not datasets.has_own_split(args.data):
            raise CodecError(
                f"{args.data}: no test split of its own (its test items would be the training items); give a .npz "
                "with x_train and x_test, a folder with train/ and test/ subfolders of images, or an IDX folder"
            )
        train, test = datasets.load(args.data, "train"), datasets.load(args.data, "test")
    except CodecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"{args.data}: {len(train)} training and {len(test)} test items of {'x'.join(map(str, test.item_shape))}",
        file=sys.stderr,
    )
    bundles = args.out / "bundles"
    train_seconds = 0.0
    if args.retrain:
        flags = ["--preset", args.preset, "--data", args.data, "--out", str(bundles)]
        flags += [
            "--runs",
            str(args.out / "runs"),
            "--summary",
            str(args.out / "rd_ladder.json"),
            *ladder_flags,
        ]
        code = train_ladder.main(flags)
        if code:
            return code
        train_seconds = time.perf_counter() - t0
        print(f"ladder trained in {train_seconds / 60:.1f} min", file=sys.stderr)
    elif ladder_flags:
        print(f"error: {' '.join(ladder_flags)}: ladder flags need --retrain", file=sys.stderr)
        return 2
    if not bundles.is_dir():
        print(
            f"error: no bundles in {bundles}: run with --retrain (make bench-rd ... RETRAIN=1)",
            file=sys.stderr,
        )
        return 2
    t1 = time.perf_counter()
    code = rd.main(
        ["--data", args.data, "--bundles", str(bundles), "--out-dir", str(args.out)]
        + (["--no-avif"] if args.no_avif else [])
    )
    if code:
        return code
    report = args.out / "rd.json"
    saved = json.loads(report.read_text())
    saved["meta"]["recipe"] = {
        "command": "python -m bench.recipe " + shlex.join(argv),
        "train_seconds": round(train_seconds, 1),
        "measure_seconds": round(time.perf_counter() - t1, 1),
        "train_items": len(train),
        "test_items": len(test),
    }
    report.write_text(json.dumps(saved, indent=1) + "\n")
    rd.main(["--report-only", "--out-dir", str(args.out)])  # rd.md states the recipe and its time
    total = time.perf_counter() - t0
    print(
        f"recipe done in {total / 60:.1f} min (training {train_seconds / 60:.1f} min); report in {args.out}/rd.md",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

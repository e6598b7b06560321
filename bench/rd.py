"""Rate-distortion benchmark: bytes per image vs PSNR/SSIM for the project's ladder and the codecs users pick instead.

    python -m bench.rd                       # Fashion-MNIST test split, the zoo (zoo/), writes docs/rd.*
    python -m bench.rd --data DIR            # any IDX folder (train + test files), .npz, digits:N, ...
    python -m bench.recipe --data DIR --out OUT --retrain   # train the map ladder on DIR first (make bench-rd DATA=)
    python -m bench.rd --limit 500 --out-dir /tmp/rd   # a quick look
    python -m bench.rd --photos data/photos/heldout     # whole colour photographs: docs/photo_rd.* (bench/photo_rd.py)

One run, the same test images for every codec: the project's bundles through
the real edge packing path and wire messages (bench/project.py), PCA with
the project's quantiser and entropy coder (bench/pca.py), PNG, zstd-19 plain
and with a dictionary trained on the training split, JPEG, WebP and AVIF over
quality sweeps (bench/classic.py). Writes rd.md (table, targets, BD-rates),
rd.png (curves) and rd.json (every number) into --out-dir.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from bench import classic, pca, quality
from bench.bdrate import bd_rate, bd_rate_window, common_range, pareto
from bench.families import family_name
from latent_codec import datasets
from latent_codec.bundle import InputSpec, find_bundles
from latent_codec.errors import CodecError

DEFAULT_BUNDLES = Path("zoo")
TARGET_BYTES = 32.0
PROJECT = "aecodec (all bundles)"  # the Pareto front over every project bundle: what a user picks from
TARGET_DB = 3.0
WINDOW_DB = (24.0, 34.0)  # issue 10: BD-rate vs WebP over WebP's settings in this range, no extrapolation
WIDE_WINDOW_DB, WIDE_WINDOW_TARGET = (24.0, 36.0), -50.0  # issue 26: half WebP's bytes up to 36 dB
SMALL_BYTES, SMALL_TARGET_DB = 8.0, 20.0  # issue 26: a front point of at most 8 bytes reaching 20 dB
WINDOW_TARGET = -30.0  # percent
TOP_DB = 34.0  # the project's front must reach this

_ITEMS: np.ndarray | None = None  # set before forking the classic-codec workers
_ZDICT: bytes | None = None


def _row(
    codec: str, setting: str, sizes: np.ndarray | float, items: np.ndarray, recon: np.ndarray, **extra
) -> dict:
    return {
        "codec": codec,
        "setting": setting,
        "bytes": float(np.mean(sizes)),
        "psnr": quality.psnr(items, recon),
        "ssim": float(quality.ssim(items, recon).mean()),
        **extra,
    }


def _classic_job(setting: classic.Setting) -> dict:
    t0 = time.perf_counter()
    sizes, recon = classic.codec_roundtrip(setting, _ITEMS, _ZDICT)
    return _row(
        setting.codec,
        setting.label,
        sizes,
        _ITEMS,
        recon,
        lossless=setting.quality is None,
        seconds=time.perf_counter() - t0,
    )


def run_classic(items: np.ndarray, train: np.ndarray, jobs: int, avif: bool) -> list[dict]:
    global _ITEMS, _ZDICT
    _ITEMS = items
    _ZDICT = classic.train_zstd_dictionary(train)
    todo = classic.settings(avif)
    if jobs <= 1:
        return [_classic_job(s) for s in todo]
    with mp.get_context("fork").Pool(jobs) as pool:
        return pool.map(_classic_job, todo, chunksize=1)


def run_pca(items: np.ndarray, train: np.ndarray) -> list[dict]:
    train_unit = InputSpec.of_items(train).to_unit(train)
    model = pca.PCA.fit(train_unit, max(max(pca.KS), max(pca.UNIFORM_KS)))
    rows = []
    for label, k, spec in pca.payload_specs(model, train_unit):
        sizes, recon = pca.roundtrip(model, spec, k, items)
        family = "PCA uniform step" if "step" in label else "PCA per-dim bits"
        rows.append(_row(family, label, sizes, items, recon, format=spec.format))
    return rows


def run_project(items: np.ndarray, bundles_root: Path, threads: int) -> list[dict]:
    from bench.project import measure_bundle

    rows = []
    for b in find_bundles(bundles_root):
        sizes, recon, info = measure_bundle(b, items, threads)
        # Each family is its own curve (bench/families.py: entropy model and depth).
        family = family_name(info["model"]["name"], info["format"], info.get("stride"))
        rows.append(
            _row(
                family,
                b.name,
                sizes.payload,
                items,
                recon,
                decode_request_bytes=sizes.decode_request,
                ingest_request_bytes=sizes.ingest_request,
                **info,
            )
        )
    return rows


def curves(rows: list[dict]) -> dict[str, list[dict]]:
    """Codec -> its Pareto-optimal rows (lossy codecs) sorted by bytes; lossless codecs keep their one row."""
    out: dict[str, list[dict]] = {}
    for codec in dict.fromkeys(r["codec"] for r in rows):
        mine = [r for r in rows if r["codec"] == codec]
        front = set(pareto([(r["bytes"], r["psnr"]) for r in mine]))
        out[codec] = sorted((r for r in mine if (r["bytes"], r["psnr"]) in front), key=lambda r: r["bytes"])
    return out


def psnr_at(curve: list[dict], nbytes: float) -> float | None:
    """A curve's PSNR at a byte budget, linear in log(bytes); None outside its range."""
    b = np.log([r["bytes"] for r in curve])
    if not len(b) or not b[0] <= np.log(nbytes) <= b[-1]:
        return None
    return float(np.interp(np.log(nbytes), b, [r["psnr"] for r in curve]))


def best_margin(project_rows: list[dict], pca_front: list[dict]) -> dict | None:
    """The project row <= TARGET_BYTES with the largest PSNR margin over PCA at the same bytes (None if none)."""
    margins = [(r, psnr_at(pca_front, r["bytes"])) for r in project_rows if r["bytes"] <= TARGET_BYTES]
    margins = [(r, q, r["psnr"] - q) for r, q in margins if q is not None]
    if not margins:
        return None
    r, q, m = max(margins, key=lambda t: t[2])
    return {
        "bundle": r["setting"],
        "bytes": r["bytes"],
        "psnr": r["psnr"],
        "pca_psnr": q,
        "margin_db": m,
        "met": m >= TARGET_DB,
        "pca_bytes_at_same_psnr": bytes_at(pca_front, r["psnr"]),
    }


def bytes_at(curve: list[dict], psnr: float) -> float | None:
    """A curve's bytes at a PSNR (log(bytes) linear in PSNR); None outside its range."""
    q = [r["psnr"] for r in curve]
    if len(q) < 2 or not min(q) <= psnr <= max(q):
        return None
    order = np.argsort(q)
    return float(np.exp(np.interp(psnr, np.asarray(q)[order], np.log([curve[i]["bytes"] for i in order]))))


def summarise(rows: list[dict]) -> dict:
    """BD-rates of each project curve vs WebP (and the others), and the <= 32-byte target vs PCA."""
    cs = curves(rows)
    mine = [r for r in rows if r["codec"].startswith("aecodec")]
    families = [c for c in cs if c.startswith("aecodec")]
    if len(families) > 1:  # several model families: the targets are judged on their common front
        cs = {PROJECT: curves([{**r, "codec": PROJECT} for r in mine])[PROJECT], **cs}
    project = [c for c in cs if c.startswith("aecodec")]
    anchors = [c for c in cs if not c.startswith("aecodec") and not cs[c][0].get("lossless")]
    bd: dict[str, dict] = {}
    for p in project:
        bd[p] = {}
        for a in anchors:
            pr, ar = cs[p], cs[a]
            if min(len(pr), len(ar)) < 2:
                continue
            rng = common_range([r["psnr"] for r in ar], [r["psnr"] for r in pr])
            val = bd_rate(
                [r["bytes"] for r in ar],
                [r["psnr"] for r in ar],
                [r["bytes"] for r in pr],
                [r["psnr"] for r in pr],
            )
            bd[p][a] = {"bd_rate_percent": val, "psnr_range": rng, "points": [len(ar), len(pr)]}
            if a == "WebP" and val is not None and "decode_request_bytes" in pr[0]:
                bd[p]["WebP (DecodeRequest bytes)"] = {
                    "bd_rate_percent": bd_rate(
                        [r["bytes"] for r in ar],
                        [r["psnr"] for r in ar],
                        [r["decode_request_bytes"] for r in pr],
                        [r["psnr"] for r in pr],
                    ),
                    "psnr_range": rng,
                    "points": [len(ar), len(pr)],
                }
    pca_rows = [r for r in rows if r["codec"].startswith("PCA")]
    pca_front = curves([{**r, "codec": "PCA"} for r in pca_rows]).get("PCA", [])  # best of both quantisers
    target = best_margin([r for p in families for r in cs[p]], pca_front)
    by_family = {p: best_margin(cs[p], pca_front) for p in families}
    judged = {PROJECT: bd[PROJECT]} if PROJECT in bd else bd
    webp = [
        v["WebP"]["bd_rate_percent"]
        for v in judged.values()
        if "WebP" in v and v["WebP"]["bd_rate_percent"] is not None
    ]
    front = cs.get(PROJECT) or (cs[families[0]] if families else [])

    def webp_window(db: tuple[float, float], target: float) -> dict | None:
        if not front or "WebP" not in cs:
            return None
        w = cs["WebP"]
        val, rng = bd_rate_window(
            [r["bytes"] for r in w],
            [r["psnr"] for r in w],
            [r["bytes"] for r in front],
            [r["psnr"] for r in front],
            *db,
        )
        whole = rng is not None and rng[1] - rng[0] >= db[1] - db[0] - 0.01
        return {
            "bd_rate_percent": val,
            "psnr_range": rng,
            "window": list(db),
            "target_percent": target,
            "met": val is not None and val <= target and whole,
        }

    window = webp_window(WINDOW_DB, WINDOW_TARGET)
    small = [r for r in front if r["bytes"] <= SMALL_BYTES]
    best_small = max(small, key=lambda r: r["psnr"], default=None)
    top = max((r["psnr"] for r in front), default=None)
    return {
        "bd_rate": bd,
        "webp_window": window,
        "webp_window_wide": webp_window(WIDE_WINDOW_DB, WIDE_WINDOW_TARGET),
        "best_at_small_bytes": None
        if best_small is None
        else {
            "bundle": best_small["setting"],
            "bytes": best_small["bytes"],
            "psnr": best_small["psnr"],
            "max_bytes": SMALL_BYTES,
            "target_psnr": SMALL_TARGET_DB,
            "met": best_small["psnr"] >= SMALL_TARGET_DB,
        },
        "front_max_psnr": top,
        "front_reaches_top": top is not None and top >= TOP_DB,
        "bytes_at_30db": {c: bytes_at(v, 30.0) for c, v in cs.items() if not v[0].get("lossless")},
        "target_32_bytes": target,
        "margin_by_family": by_family,
        "target_bd_rate_curve": next(iter(judged), None),
        "target_bd_rate_met": bool(webp) and min(webp) < 0,
        "curves": {c: [r["setting"] for r in v] for c, v in cs.items()},
    }


def git_commit() -> str:
    """The commit the measured code comes from ("+ uncommitted changes" when its code differs from it)."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(  # only the code the benchmark runs: docs and the README do not count
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "latent_codec",
                "bench",
                "training",
            ],
            capture_output=True,
            text=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench-rd", description=__doc__.split("\n")[0])
    p.add_argument(
        "--data",
        "--data-dir",
        dest="data_dir",
        default="fashion-mnist",
        help="the test split measured (PCA and zstd's dictionary fitted on its train split): fashion-mnist, "
        "digits[:N], an IDX folder, a .npz with x_train/x_test, or a folder of images with train/ and test/",
    )
    p.add_argument(
        "--bundles", type=Path, default=DEFAULT_BUNDLES, help="a bundle, or a folder of bundles (the ladder)"
    )
    p.add_argument("--limit", type=int, default=0, help="only the first N test images (0 = all)")
    p.add_argument("--out-dir", type=Path, default=Path("docs"))
    p.add_argument("--jobs", type=int, default=2, help="worker processes for the classic codecs")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for the project's bundles")
    p.add_argument("--no-avif", action="store_true", help="skip AVIF (the slowest encoder)")
    p.add_argument(
        "--zoo-index", type=Path, default=None, help="also write the bundles' table here (zoo/README.md)"
    )
    p.add_argument("--no-classic", action="store_true", help="skip PNG/zstd/JPEG/WebP/AVIF")
    p.add_argument(
        "--photos",
        type=Path,
        default=None,
        help="a folder of whole photographs: bits per pixel vs PSNR/MS-SSIM for the colour bundles under --bundles "
        "against JPEG, WebP and AVIF (bench/photo_rd.py) -> OUT_DIR/photo_rd.*",
    )
    p.add_argument(
        "--quick", action="store_true", help="with --photos: fewer classic settings (tests, a first look)"
    )
    p.add_argument(
        "--max-side",
        type=int,
        default=0,
        help="with --photos: downscale each photograph (Lanczos) so its longest side is at most this many pixels, "
        "as training.crops does, so a camera JPEG's own artefacts do not favour JPEG (0 = as they are)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="re-render rd.md/rd.png from --out-dir/rd.json, no measuring",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.photos is not None:
        from bench import photo_rd

        args.argv = list(argv if argv is not None else sys.argv[1:])
        return photo_rd.main(args)
    from bench.rd_report import write_report

    if args.report_only:
        saved = json.loads((args.out_dir / "rd.json").read_text())
        rows = saved["rows"]
        write_report(args.out_dir, saved["meta"], rows, summarise(rows), curves(rows))
        if (
            args.zoo_index
        ):  # the bundles of that run still in the zoo (e.g. after pruning those off the front)
            from bench.rd_report import zoo_index

            kept = [r for r in rows if "path" not in r or Path(r["path"]).is_dir()]
            args.zoo_index.write_text(
                zoo_index(saved["meta"], kept, curves(rows), dropped=len(rows) - len(kept))
            )
        print((args.out_dir / "rd.md").read_text())
        return 0
    t0 = time.perf_counter()
    try:
        test = datasets.load(args.data_dir, "test")
        train = datasets.load(args.data_dir, "train")
        items = test.x[: args.limit] if args.limit else test.x
        if items.dtype != np.uint8:
            raise CodecError("bench.rd compares image codecs: it needs uint8 items")
        rows = run_project(items, args.bundles, args.threads)
        print(f"project: {len(rows)} bundles ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        rows += run_pca(items, train.x)
        print(f"PCA done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
        if not args.no_classic:
            rows += run_classic(items, train.x, args.jobs, not args.no_avif)
            print(f"classic codecs done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    except CodecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = summarise(rows)
    meta = {
        "command": "python -m bench.rd " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": git_commit(),
        "data": test.source,
        "items": int(len(items)),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "rd.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "rows": rows}, indent=1) + "\n"
    )
    write_report(args.out_dir, meta, rows, summary, curves(rows))
    if args.zoo_index:
        from bench.rd_report import zoo_index

        args.zoo_index.write_text(zoo_index(meta, rows, curves(rows)))
    print((args.out_dir / "rd.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

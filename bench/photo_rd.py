"""Photo rate-distortion: whole held-out photographs, bits per pixel against PSNR (RGB and luma) and MS-SSIM, for
colour bundles against JPEG (4:2:0 and 4:4:4), WebP and AVIF; run as ``python -m bench.rd --photos DIR``.

Every photograph is coded whole, on its own, the way a phone would send it: the project's bundles through the
device path (``Codec.encode`` / ``decode``, timed per megapixel), the classic codecs through Pillow with every
file header counted. A codec's curve is the Pareto front of its settings by mean bits per pixel and mean RGB
PSNR over the photographs; BD-rates are piecewise linear in log(rate) over the range both curves measured
(bench/bdrate.py, no extrapolation). Writes photo_rd.md, .json, .png (curves) and photo_rd_crops.png
(original | JPEG | WebP | ours at about the same bytes) into --out-dir.
"""

from __future__ import annotations

import io
import json
import os
import platform
import shlex
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import msssim
from bench.bdrate import bd_rate_window, pareto
from bench.families import bundle_family
from latent_codec.bundle import Bundle, find_bundles, load_bundle
from latent_codec.errors import CodecError

JPEG_QUALITIES = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
WEBP_QUALITIES = (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
AVIF_QUALITIES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
AVIF_SPEEDS = (4, 6, 8)
QUICK = {"jpeg": (10, 30, 50, 70, 90), "webp": (5, 30, 60, 90), "avif": (20, 50, 80), "speeds": (8,)}
JPEG_BEST = "JPEG (best of 4:2:0, 4:4:4)"
ANCHOR = "JPEG 4:2:0"  # what every curve is compared with when there is no bundle
AT_PSNR = (30.0, 35.0)  # per-photo rows: bits per pixel each codec needs for these RGB PSNRs
CROP = 192  # side of the side-by-side crops


@dataclass(frozen=True)
class Setting:
    codec: str  # "JPEG 4:2:0", "JPEG 4:4:4", "WebP", "AVIF s6"
    quality: int

    @property
    def label(self) -> str:
        return f"{self.codec} q{self.quality}"

    def encode(self, hwc: np.ndarray) -> bytes:
        from PIL import Image

        buf = io.BytesIO()
        im = Image.fromarray(hwc, "RGB")
        if self.codec.startswith("JPEG"):
            sub = 2 if self.codec.endswith("4:2:0") else 0
            im.save(buf, "JPEG", quality=self.quality, optimize=True, subsampling=sub)
        elif self.codec == "WebP":
            im.save(buf, "WEBP", quality=self.quality, method=6)
        else:
            im.save(buf, "AVIF", quality=self.quality, speed=int(self.codec.split("s")[-1]))
        return buf.getvalue()


def decode_classic(blob: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))


def settings(quick: bool = False, avif: bool = True) -> list[Setting]:
    jq, wq, aq = (
        (QUICK["jpeg"], QUICK["webp"], QUICK["avif"])
        if quick
        else (JPEG_QUALITIES, WEBP_QUALITIES, AVIF_QUALITIES)
    )
    speeds = QUICK["speeds"] if quick else AVIF_SPEEDS
    out = [Setting(c, q) for c in ("JPEG 4:2:0", "JPEG 4:4:4") for q in jq]
    out += [Setting("WebP", q) for q in wq]
    if avif:
        out += [Setting(f"AVIF s{s}", q) for s in speeds for q in aq]
    return out


# ---- quality ----------------------------------------------------------------------------------------------
def luma(chw: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma Y' (the JPEG/JFIF weights) of a (3, H, W) picture, on 0..255, not rounded."""
    x = chw.astype(np.float64)
    return 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float(10 * np.log10(255.0**2 / max(mse, 1e-10)))


def quality(original: np.ndarray, recon: np.ndarray) -> dict:
    """PSNR on RGB and on luma, MS-SSIM on RGB (None when a side is under 161 pixels) of (3, H, W) pictures."""
    ok = min(original.shape[1:]) >= msssim.min_side()
    m = msssim.ms_ssim(original, recon) if ok else None
    return {
        "psnr": psnr(original, recon),
        "psnr_y": psnr(luma(original), luma(recon)),
        "ms_ssim": m,
        "ms_ssim_db": None if m is None else msssim.db(m),
    }


# ---- measuring --------------------------------------------------------------------------------------------
def load_photos(folder: Path, limit: int = 0, max_side: int = 0) -> tuple[list[str], list[np.ndarray]]:
    """The folder's photographs, upright, RGB (3, H, W), as the edge reads them (refusing alpha, 16 bits scaled);
    with max_side, downscaled with Lanczos so the longest side is at most that (never upscaled)."""
    from latent_codec import datasets
    from latent_codec.errors import DataError

    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder of photographs (give --photos DIR, or PHOTOS=DIR to make)")
    items = datasets.load_items(folder, mode="RGB").head(limit)
    photos = [items.take([i])[0] for i in range(len(items))]
    return list(items.names), [downscale(x, max_side) for x in photos]


def downscale(x: np.ndarray, max_side: int) -> np.ndarray:
    """(3, H, W) uint8 -> the same picture with its longest side at most max_side (0: unchanged)."""
    from PIL import Image

    h, w = x.shape[1:]
    if max_side <= 0 or max(h, w) <= max_side:
        return x
    f = max_side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    img = Image.fromarray(np.ascontiguousarray(np.moveaxis(x, 0, -1))).resize(size, Image.Resampling.LANCZOS)
    return np.ascontiguousarray(np.moveaxis(np.asarray(img), -1, 0))


def run_classic(names: list[str], photos: list[np.ndarray], todo: list[Setting], log) -> list[dict]:
    rows = []
    for s in todo:
        t0 = time.perf_counter()
        for name, x in zip(names, photos):
            hwc = np.ascontiguousarray(np.moveaxis(x, 0, -1))
            te = time.perf_counter()
            blob = s.encode(hwc)
            te = time.perf_counter() - te
            td = time.perf_counter()
            rec = np.moveaxis(decode_classic(blob), -1, 0)
            td = time.perf_counter() - td
            rows.append(_row(s.codec, s.label, name, x, len(blob), rec, te, td))
        log(f"{s.label}: {time.perf_counter() - t0:.1f} s")
    return rows


def colour_bundles(root: Path) -> list[Bundle]:
    """The bundles under root that take colour items of any size (photographs); [] when root does not exist."""
    if not root.exists():
        return []
    out = []
    for path in find_bundles(root):
        b = load_bundle(path)
        spec = b.manifest.input
        if int(spec.shape[0]) == 3 and spec.any_size:
            out.append(b)
    return out


def run_project(
    names: list[str], photos: list[np.ndarray], bundles: list[Bundle], threads: int, log
) -> list[dict]:
    from latent_codec.codec import Codec

    rows = []
    for b in bundles:
        codec = Codec.from_bundle(b, threads)
        # Each family is its own curve (bench/families.py: entropy model and depth).
        family = bundle_family(b.manifest)
        codec.decode(
            codec.encode(photos[0][None])
        )  # warm up the sessions: the timings are per photo afterwards
        for name, x in zip(names, photos):
            te = time.perf_counter()
            payload = codec.encode(x[None])[0]
            te = time.perf_counter() - te
            td = time.perf_counter()
            rec = codec.decode([payload])[0]
            td = time.perf_counter() - td
            rows.append(
                _row(family, b.path.name, name, x, len(payload), rec, te, td, bundle_id=codec.bundle_id)
            )
        log(f"{b.path.name}: done")
    return rows


def _row(
    codec: str,
    setting: str,
    image: str,
    x: np.ndarray,
    nbytes: int,
    rec: np.ndarray,
    te: float,
    td: float,
    **extra,
) -> dict:
    pixels = int(x.shape[1] * x.shape[2])
    return {
        "codec": codec,
        "setting": setting,
        "image": image,
        "height": int(x.shape[1]),
        "width": int(x.shape[2]),
        "bytes": int(nbytes),
        "bpp": 8.0 * nbytes / pixels,
        **quality(x, rec),
        "encode_s": te,
        "decode_s": td,
        **extra,
    }


# ---- curves and summaries ---------------------------------------------------------------------------------
def mean_rows(rows: list[dict]) -> list[dict]:
    """One row per (codec, setting): mean bpp and mean quality over the photographs, seconds per megapixel."""
    out = []
    for key in dict.fromkeys((r["codec"], r["setting"]) for r in rows):
        mine = [r for r in rows if (r["codec"], r["setting"]) == key]
        mp = sum(r["height"] * r["width"] for r in mine) / 1e6
        ms = [r["ms_ssim"] for r in mine if r["ms_ssim"] is not None]
        out.append(
            {
                "codec": key[0],
                "setting": key[1],
                "images": len(mine),
                "bpp": float(np.mean([r["bpp"] for r in mine])),
                "psnr": float(np.mean([r["psnr"] for r in mine])),
                "psnr_y": float(np.mean([r["psnr_y"] for r in mine])),
                "ms_ssim": float(np.mean(ms)) if len(ms) == len(mine) else None,
                "ms_ssim_db": msssim.db(float(np.mean(ms))) if len(ms) == len(mine) else None,
                "encode_s_per_mp": sum(r["encode_s"] for r in mine) / mp,
                "decode_s_per_mp": sum(r["decode_s"] for r in mine) / mp,
            }
        )
    return out


def fronts(means: list[dict]) -> dict[str, list[dict]]:
    """Codec -> its Pareto front (mean bpp, mean RGB PSNR), ascending; with several bundle families also the
    project's front over all of them."""
    groups: dict[str, list[dict]] = {}
    for r in means:
        groups.setdefault(r["codec"], []).append(r)
    ours = [r for r in means if r["codec"].startswith("aecodec")]
    if len({r["codec"] for r in ours}) > 1:
        groups["aecodec (all bundles)"] = ours
    out = {}
    for codec, mine in groups.items():
        front = set(pareto([(r["bpp"], r["psnr"]) for r in mine]))
        out[codec] = sorted((r for r in mine if (r["bpp"], r["psnr"]) in front), key=lambda r: r["bpp"])
    return out


def _log_rate(curve: list[dict], metric: str, q: np.ndarray) -> np.ndarray:
    """log(bpp) of a curve at qualities q, linear between its points; NaN outside what it measured."""
    pts = sorted((r[metric], np.log(r["bpp"])) for r in curve if r.get(metric) is not None)
    if len(pts) < 2:
        return np.full(len(q), np.nan)
    qs, lr = np.asarray(pts).T
    out = np.interp(q, qs, lr)
    out[(q < qs[0]) | (q > qs[-1])] = np.nan
    return out


def bd(anchors: list[list[dict]], test: list[dict], metric: str) -> dict:
    """BD-rate (percent) of test against the lower envelope of the anchor curves (one curve, or JPEG's two
    subsamplings: at each quality the cheaper), piecewise linear in log(bpp), over the qualities both measured
    (no extrapolation); None without overlap. With one anchor this equals bench/bdrate.py's bd_rate_window."""
    if len(anchors) == 1:
        a, t = ([r for r in c if r.get(metric) is not None] for c in (anchors[0], test))
        if min(len(a), len(t)) < 2:
            return {"bd_rate_percent": None, "range": None}
        val, rng = bd_rate_window(
            [r["bpp"] for r in a],
            [r[metric] for r in a],
            [r["bpp"] for r in t],
            [r[metric] for r in t],
            -np.inf,
            np.inf,
        )
        return {"bd_rate_percent": val, "range": None if rng is None else [float(rng[0]), float(rng[1])]}
    spans = [[r[metric] for r in c if r.get(metric) is not None] for c in (*anchors, test)]
    if any(len(v) < 2 for v in spans[-1:]) or all(len(v) < 2 for v in spans[:-1]):
        return {"bd_rate_percent": None, "range": None}
    anchor_spans = [v for v in spans[:-1] if len(v) >= 2]
    lo = max(min(min(v) for v in anchor_spans), min(spans[-1]))
    hi = min(max(max(v) for v in anchor_spans), max(spans[-1]))
    if hi <= lo:
        return {"bd_rate_percent": None, "range": None}
    q = np.linspace(lo, hi, 4001)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: a gap between the anchor curves
        env = np.nanmin(np.stack([_log_rate(c, metric, q) for c in anchors]), axis=0)
    diff = _log_rate(test, metric, q) - env
    ok = np.isfinite(diff)
    if ok.sum() < 2:
        return {"bd_rate_percent": None, "range": None}
    lo, hi = float(q[ok][0]), float(q[ok][-1])
    return {
        "bd_rate_percent": float((np.exp(np.trapezoid(diff[ok], q[ok]) / (hi - lo)) - 1) * 100),
        "range": [lo, hi],
    }


def summarise(means: list[dict]) -> dict:
    """BD-rates of each project curve against every classic curve and JPEG's best subsampling (without a bundle:
    of every classic curve against JPEG 4:2:0), on RGB PSNR, luma PSNR and MS-SSIM dB."""
    cs = fronts(means)
    ours = [c for c in cs if c.startswith("aecodec")]
    classic = {c: [cs[c]] for c in cs if not c.startswith("aecodec")}
    if "JPEG 4:2:0" in cs and "JPEG 4:4:4" in cs:
        classic = {JPEG_BEST: [cs["JPEG 4:2:0"], cs["JPEG 4:4:4"]], **classic}
    if ours:
        pairs = [(t, a) for t in ours for a in classic]
    else:
        pairs = [(t, ANCHOR) for t in classic if t != ANCHOR and ANCHOR in classic]
    table: dict[str, dict] = {}
    for t, a in pairs:
        if t == JPEG_BEST:
            continue  # the envelope is an anchor, not a curve of its own
        table.setdefault(t, {})[a] = {m: bd(classic[a], cs[t], m) for m in ("psnr", "psnr_y", "ms_ssim_db")}
    return {"bd_rate": table, "fronts": {c: [r["setting"] for r in v] for c, v in cs.items()}}


def bpp_at(rows: list[dict], target: float) -> float | None:
    """Bits per pixel at an RGB PSNR on one photo's front of one codec (log-linear between points), or None."""
    front = sorted(
        (r for r in rows if (r["bpp"], r["psnr"]) in set(pareto([(q["bpp"], q["psnr"]) for q in rows]))),
        key=lambda r: r["psnr"],
    )
    q = [r["psnr"] for r in front]
    if len(q) < 2 or not q[0] <= target <= q[-1]:
        return None
    return float(np.exp(np.interp(target, q, np.log([r["bpp"] for r in front]))))


def per_image(rows: list[dict]) -> list[dict]:
    """Per photo: its size and, for every codec, the bits per pixel it needs for each AT_PSNR (None if outside)."""
    out = []
    codecs = list(dict.fromkeys(r["codec"] for r in rows))
    for image in dict.fromkeys(r["image"] for r in rows):
        mine = [r for r in rows if r["image"] == image]
        entry = {"image": image, "width": mine[0]["width"], "height": mine[0]["height"], "bpp_at": {}}
        for c in codecs:
            entry["bpp_at"][c] = {str(t): bpp_at([r for r in mine if r["codec"] == c], t) for t in AT_PSNR}
        out.append(entry)
    return out


# ---- the machine ------------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def render(out: Path, doc: dict) -> None:
    """photo_rd.md and photo_rd.png from a run's JSON (the crops picture is written while measuring)."""
    from bench.photo_rd_report import plot, write_markdown

    plot(out / "photo_rd.png", fronts(doc["means"]), doc["meta"])
    write_markdown(out / "photo_rd.md", doc, doc["crops"])


def main(args) -> int:
    """Run the photo benchmark for bench.rd's parsed arguments (--photos DIR and the shared flags); with
    --report-only, re-render the report from OUT_DIR/photo_rd.json."""
    if args.report_only:
        doc = json.loads((args.out_dir / "photo_rd.json").read_text())
        render(args.out_dir, doc)
        print((args.out_dir / "photo_rd.md").read_text())
        return 0
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    t0 = time.perf_counter()
    load_before = os.getloadavg()
    try:
        names, photos = load_photos(args.photos, args.limit, getattr(args, "max_side", 0))
        bundles = colour_bundles(args.bundles)
        if bundles:
            log(
                f"bundles: {len(bundles)} colour bundles under {args.bundles}: {', '.join(b.path.name for b in bundles)}"
            )
        else:
            log(
                f"no colour bundle under {args.bundles} (none exists or none takes colour photographs of any "
                f"size): comparing the classic codecs only"
            )
        mp = sum(x.shape[1] * x.shape[2] for x in photos) / 1e6
        log(f"photos: {len(photos)} from {args.photos} ({mp:.2f} megapixels)")
        rows = run_project(names, photos, bundles, args.threads, log)
        if not args.no_classic:
            rows += run_classic(names, photos, settings(args.quick, not args.no_avif), log)
    except CodecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print("error: nothing was measured (no colour bundle and --no-classic)", file=sys.stderr)
        return 2
    means = mean_rows(rows)
    summary = summarise(means)
    from bench.rd import git_commit

    meta = {
        "command": "python -m bench.rd " + shlex.join(args.argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": git_commit(),
        "photos": str(args.photos),
        "max_side": getattr(args, "max_side", 0),
        "images": len(photos),
        "megapixels": round(mp, 3),
        "bundles": [{"name": b.path.name, "bundle_id": b.bundle_id} for b in bundles],
        "bundles_root": str(args.bundles),
        "classic": not args.no_classic,
        "quick": bool(args.quick),
        "machine": machine(),
        "load_before": [round(v, 2) for v in load_before],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "threads": args.threads,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    from bench.photo_rd_report import crops_picture

    crops = crops_picture(out / "photo_rd_crops.png", names, photos, bundles, args.threads)
    doc = {
        "meta": meta,
        "summary": summary,
        "means": means,
        "per_image": per_image(rows),
        "crops": crops,
        "rows": rows,
    }
    (out / "photo_rd.json").write_text(json.dumps(doc, indent=1) + "\n")
    render(out, doc)
    print((out / "photo_rd.md").read_text())
    return 0

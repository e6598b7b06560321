"""What bench/photo_rd.py writes besides its JSON: the Markdown report, the curves and the side-by-side crops."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from bench.photo_rd import ANCHOR, AT_PSNR, CROP, JPEG_BEST, Setting, decode_classic, fronts, psnr

ZOOM = 2  # crops are shown enlarged (nearest neighbour) so that artefacts are visible


def plot(path: Path, cs: dict[str, list[dict]], meta: dict) -> None:
    """RGB PSNR and MS-SSIM (dB) against bits per pixel, each codec's front."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for codec, front in cs.items():
        if codec == JPEG_BEST:
            continue
        style = "-o" if codec.startswith("aecodec") else "--."
        bpp = [r["bpp"] for r in front]
        axes[0].plot(bpp, [r["psnr"] for r in front], style, label=codec, ms=4)
        ms = [(r["bpp"], r["ms_ssim_db"]) for r in front if r["ms_ssim_db"] is not None]
        if ms:
            axes[1].plot(*zip(*ms), style, label=codec, ms=4)
    axes[0].set_ylabel("PSNR, RGB (dB)")
    axes[1].set_ylabel("MS-SSIM (dB, -10 log10(1 - MS-SSIM))")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    for ax in axes:
        ax.set_xlabel("bits per pixel")
        ax.set_xscale("log")
        lo, hi = ax.get_xlim()
        ax.set_xticks([t for t in (0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 4, 8, 16) if lo <= t <= hi])
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{meta['images']} photographs ({meta['megapixels']} MP) from {meta['photos']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _closest(setting_of, x_hwc: np.ndarray, target: int) -> tuple[bytes, int]:
    """The quality (1..100) whose file is closest to target bytes (sizes grow with quality: bisection)."""
    lo, hi = 1, 100
    best: tuple[int, bytes, int] | None = None
    while lo <= hi:
        q = (lo + hi) // 2
        blob = setting_of(q).encode(x_hwc)
        if best is None or abs(len(blob) - target) < best[0]:
            best = (abs(len(blob) - target), blob, q)
        if len(blob) < target:
            lo = q + 1
        else:
            hi = q - 1
    assert best is not None
    return best[1], best[2]


def crops_picture(
    path: Path, names: list[str], photos: list[np.ndarray], bundles: list, threads: int
) -> dict:
    """original | JPEG | WebP | ours, a CROP x CROP centre crop of the largest photograph, each codec at about
    the bytes ours took on the whole photograph (without a bundle: WebP q50's bytes, and AVIF instead of ours)."""
    from PIL import Image, ImageDraw

    from latent_codec.codec import Codec

    k = int(np.argmax([x.shape[1] * x.shape[2] for x in photos]))
    x = photos[k]
    hwc = np.ascontiguousarray(np.moveaxis(x, 0, -1))
    panels: list[tuple[str, np.ndarray, int]] = [("original", x, 0)]
    if bundles:
        b = bundles[len(bundles) // 2]
        codec = Codec.from_bundle(b, threads)
        payload = codec.encode(x[None])[0]
        ours = ("ours: " + b.path.name, codec.decode([payload])[0], len(payload))
        target = len(payload)
    else:
        target = len(Setting("WebP", 50).encode(hwc))
        ours = None
    for label, make in (
        ("JPEG 4:2:0", lambda q: Setting("JPEG 4:2:0", q)),
        ("WebP", lambda q: Setting("WebP", q)),
        *([] if bundles else [("AVIF s6", lambda q: Setting("AVIF s6", q))]),
    ):
        blob, q = _closest(make, hwc, target)
        panels.append((f"{label} q{q}", np.moveaxis(decode_classic(blob), -1, 0), len(blob)))
    if ours is not None:
        panels.append(ours)
    h, w = x.shape[1:]
    s = min(CROP, h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    label_h = 28
    tile = s * ZOOM
    canvas = Image.new("RGB", (len(panels) * (tile + 6), tile + label_h), "white")
    draw = ImageDraw.Draw(canvas)
    info = []
    for i, (label, img, nbytes) in enumerate(panels):
        crop = np.moveaxis(img[:, y0 : y0 + s, x0 : x0 + s], 0, -1)
        big = Image.fromarray(np.ascontiguousarray(crop)).resize((tile, tile), Image.Resampling.NEAREST)
        canvas.paste(big, (i * (tile + 6), label_h))
        text = (
            label
            if not nbytes
            else f"{label}\n{nbytes:,} B, {8 * nbytes / (h * w):.3f} bpp, {psnr(x, img):.2f} dB"
        )
        draw.multiline_text((i * (tile + 6) + 2, 1), text, fill="black", spacing=1)
        info.append({"label": label, "bytes": nbytes, "psnr": None if not nbytes else psnr(x, img)})
    buf = io.BytesIO()
    canvas.save(buf, "PNG", optimize=True)
    path.write_bytes(buf.getvalue())
    return {
        "image": names[k],
        "size": [int(w), int(h)],
        "crop": [int(x0), int(y0), int(s)],
        "panels": info,
        "target_bytes": target,
    }


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:+.1f} %"


def _rng(r: list[float] | None) -> str:
    return "no overlap" if r is None else f"{r[0]:.1f}-{r[1]:.1f}"


def write_markdown(path: Path, doc: dict, crops: dict) -> None:
    meta, summary, means = doc["meta"], doc["summary"], doc["means"]
    cs = fronts(means)
    m = meta["machine"]
    ran_on = (
        f"{len(meta['bundles'])} colour bundles from `{meta['bundles_root']}`: "
        + ", ".join(f"`{b['name']}` ({b['bundle_id']})" for b in meta["bundles"])
        if meta["bundles"]
        else f"**no colour bundle** (none under `{meta['bundles_root']}`): the classic codecs only"
    )
    lines = [
        "# Photographs: bits per pixel against quality, whole held-out photos",
        "",
        f"Generated by `{meta['command']}` at {meta['commit']}, {meta['date']}, in {meta['seconds']} s.",
        "",
        f"- Photographs: {meta['images']} from `{meta['photos']}`, {meta['megapixels']} megapixels in all, each "
        "coded whole and on its own (upright, RGB, as `edge.cli` reads them).",
        f"- Ran on: {ran_on}." + (" Quick settings (`--quick`)." if meta["quick"] else ""),
        f"- Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}; load average (1, 5, 15 min) "
        f"{meta['load_before']} before, {meta['load_after']} after; ONNX Runtime threads {meta['threads']}.",
        "- Quality: PSNR on RGB (all three channels' MSE), PSNR on BT.601 luma Y' = 0.299 R + 0.587 G + 0.114 B, "
        "MS-SSIM on RGB (Wang et al. 2003, 5 scales, mean over channels; bench/msssim.py) and in dB as "
        "-10 log10(1 - MS-SSIM). A setting's point is the mean over the photographs of bits per pixel and of "
        "each quality figure; a codec's curve is its Pareto front by bpp and RGB PSNR.",
        "- Classic codecs through Pillow, every header counted: JPEG optimised at 4:2:0 and at 4:4:4, WebP method "
        "6, AVIF at several speeds. The aecodec rows are real payload bytes from the device path (`Codec.encode`).",
        "- BD-rate: percent bytes of the row's curve against the column's at equal quality, piecewise linear in "
        "log(rate), over the range both measured (no extrapolation); negative = fewer bytes.",
        "",
        "## BD-rate (RGB PSNR / luma PSNR / MS-SSIM dB)",
        "",
    ]
    for test, anchors in summary["bd_rate"].items():
        if not anchors:
            continue
        lines += [
            f"**{test}** against:",
            "",
            "| anchor | RGB PSNR (range dB) | luma PSNR | MS-SSIM dB |",
            "|---|---|---|---|",
        ]
        for a, v in anchors.items():
            p, y, s = v["psnr"], v["psnr_y"], v["ms_ssim_db"]
            lines.append(
                f"| {a} | {_pct(p['bd_rate_percent'])} ({_rng(p['range'])}) | {_pct(y['bd_rate_percent'])} "
                f"| {_pct(s['bd_rate_percent'])} |"
            )
        lines.append("")
    if not meta["bundles"]:
        lines += [f"(Without a bundle every codec is compared with {ANCHOR}.)", ""]
    lines += [
        "## Each codec's front",
        "",
        "| codec | setting | bpp | PSNR RGB | PSNR Y | MS-SSIM | encode s/MP | decode s/MP |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for codec, front in cs.items():
        if codec == JPEG_BEST:
            continue
        for r in front:
            ms = "n/a" if r["ms_ssim"] is None else f"{r['ms_ssim']:.4f}"
            lines.append(
                f"| {codec} | {r['setting']} | {r['bpp']:.4f} | {r['psnr']:.2f} | {r['psnr_y']:.2f} | {ms} "
                f"| {r['encode_s_per_mp']:.3f} | {r['decode_s_per_mp']:.3f} |"
            )
    lines += [
        "",
        "Encode and decode seconds per megapixel: wall time of one photo at a time on this machine under the load "
        "above; for aecodec the device path (`Codec.encode` / `Codec.decode`: ONNX Runtime and the entropy coder), "
        "for the others Pillow's encoder and decoder.",
        "",
        "## Per photograph: bits per pixel needed for "
        + " and ".join(f"{t:g} dB" for t in AT_PSNR)
        + " (RGB PSNR)",
        "",
    ]
    codecs = list(next(iter(doc["per_image"]))["bpp_at"]) if doc["per_image"] else []
    head = "| photo | size | " + " | ".join(codecs) + " |"
    lines += [head, "|---|---|" + "---:|" * len(codecs)]
    for e in doc["per_image"]:
        cells = []
        for c in codecs:
            vals = [e["bpp_at"][c][str(t)] for t in AT_PSNR]
            cells.append(" / ".join("—" if v is None else f"{v:.3f}" for v in vals))
        lines.append(f"| {e['image']} | {e['width']}x{e['height']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "(— : that codec's settings do not reach, or start above, that PSNR on this photo.) Every (photo, setting) "
        "row with bytes, PSNR, luma PSNR, MS-SSIM and times is in photo_rd.json.",
        "",
        "![curves](photo_rd.png)",
        "",
        f"## The same bytes, side by side: {crops['image']} ({crops['size'][0]}x{crops['size'][1]}), "
        f"a {crops['crop'][2]}-pixel centre crop, enlarged {ZOOM}x",
        "",
        "Each codec's quality chosen so that its file of the whole photo is closest to "
        f"{crops['target_bytes']:,} bytes ({'what ours took' if meta['bundles'] else 'WebP q50, no bundle'}); "
        "the labels give each file's bytes and the whole photo's RGB PSNR.",
        "",
        "![crops](photo_rd_crops.png)",
        "",
    ]
    path.write_text("\n".join(lines))

"""Write the rate-distortion benchmark's Markdown table and its bytes-vs-PSNR plot."""

from __future__ import annotations

from pathlib import Path


def _fmt(v, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def _recipe_lines(recipe: dict) -> list[str]:
    """What the one-command recipe (bench/recipe.py) did before this measurement, and how long it took."""
    return [
        "",
        f"This report is the one-command recipe: `{recipe['command']}` (`make bench-rd DATA=... RETRAIN=1 OUT=...`). "
        f"It trained the map ladder on {recipe['train_items']} training items in {recipe['train_seconds'] / 60:.1f} min "
        f"(0 when the bundles were already there) and measured {recipe['test_items']} test items in "
        f"{recipe['measure_seconds'] / 60:.1f} min.",
    ]


def markdown(meta: dict, rows: list[dict], summary: dict, curves: dict[str, list[dict]]) -> str:
    on_curve = {(r["codec"], r["setting"]) for c in curves.values() for r in c}
    t = summary.get("target_32_bytes")
    lines = [
        "# Rate–distortion benchmark",
        "",
        f"- command: `{meta['command']}`" + (f" at commit {meta['commit']}" if meta.get("commit") else ""),
        f"- date: {meta['date']}; data: {meta['data']}, {meta['items']} test images, the same images for every codec; "
        f"run time {meta['seconds']:.0f} s",
        "- bytes/image: the project's entropy-coded item payload (what storage holds; the DecodeRequest column adds "
        "the gRPC batch framing of `edge.cli evaluate`, 500 items per request), or the whole encoded file for "
        "PNG/JPEG/WebP/AVIF/zstd (headers included: one image = one file).",
        "- PSNR: of the mean per-image MSE on uint8 reconstructions (peak 255); SSIM: mean per image, "
        "skimage defaults (7x7 window). Lossless codecs show PSNR ∞.",
        "- curves (plot, BD-rate) use each codec's Pareto-optimal settings (marked * below).",
        "",
        "Reproduce: `make bench-rd` (measures the committed zoo/; `make bench-rd RETRAIN=1` first retrains every "
        "rung with `python -m bench.train_ladder --out zoo`); `python -m bench.rd --data-dir DIR` runs it on any IDX "
        "folder.",
        *(_recipe_lines(meta["recipe"]) if meta.get("recipe") else []),
        "",
        "## Targets (issue 4)",
        "",
    ]
    if t:
        lines.append(
            f"- At ≤ 32 bytes/image: best project bundle `{t['bundle']}` reaches {t['psnr']:.2f} dB at "
            f"{t['bytes']:.2f} bytes; PCA (same quantiser + entropy coder, best of both quantiser sweeps) at the same bytes: "
            f"{t['pca_psnr']:.2f} dB; margin **{t['margin_db']:+.2f} dB** (target ≥ +3 dB: "
            f"{'met' if t['met'] else 'NOT met'})."
        )
        if t.get("pca_bytes_at_same_psnr"):
            lines.append(
                f"  - PCA reaches the same {t['psnr']:.2f} dB at {t['pca_bytes_at_same_psnr']:.2f} bytes/image "
                f"({t['pca_bytes_at_same_psnr'] / t['bytes']:.1f}x the bytes)."
            )
    else:
        lines.append(
            "- At ≤ 32 bytes/image: no project bundle in range of the PCA curve (target not evaluated)."
        )
    fam = {p: v for p, v in (summary.get("margin_by_family") or {}).items() if v}
    if len(fam) > 1:
        lines.append(
            "  - best margin of each family at ≤ 32 bytes/image: "
            + "; ".join(
                f"`{p.removeprefix('aecodec ')}` {v['margin_db']:+.2f} dB (`{v['bundle']}`, {v['bytes']:.2f} bytes, "
                f"{v['psnr']:.2f} vs {v['pca_psnr']:.2f} dB)"
                for p, v in fam.items()
            )
            + "."
        )
    judged = summary.get("target_bd_rate_curve")
    for p, v in summary["bd_rate"].items():
        if judged and p != judged:
            continue  # per-family BD-rates are in the table below; the target is judged on the common front
        w = v.get("WebP")
        if w and w["bd_rate_percent"] is not None:
            lo, hi = w["psnr_range"]
            lines.append(
                f"- BD-rate of `{p}` vs WebP over {lo:.2f}–{hi:.2f} dB: **{w['bd_rate_percent']:+.1f} %** "
                f"(target < 0: {'met' if w['bd_rate_percent'] < 0 else 'NOT met'})."
            )
        elif w is not None:
            lines.append(f"- `{p}` and WebP share no PSNR range: BD-rate undefined (target NOT met).")
    lines += ["", "## Targets (issue 10: the whole quality range)", ""]
    top = summary.get("front_max_psnr")
    lines.append(
        f"- The project's Pareto front reaches {_fmt(top, '.2f')} dB (target ≥ 34 dB: "
        f"{'met' if summary.get('front_reaches_top') else 'NOT met'})."
    )
    lines.append(_window_line(summary.get("webp_window"), (24.0, 34.0)))
    if summary.get("webp_window_wide"):  # issue 26's window
        lines.append(_window_line(summary["webp_window_wide"], (24.0, 36.0)))
    small = summary.get("best_at_small_bytes")
    if small:
        lines.append(
            f"- The best front point of at most {small['max_bytes']:.0f} bytes: `{small['bundle']}`, "
            f"{small['psnr']:.2f} dB at {small['bytes']:.2f} bytes (target ≥ {small['target_psnr']:.0f} dB: "
            f"{'met' if small['met'] else 'NOT met'})."
        )
    at30 = {c: v for c, v in (summary.get("bytes_at_30db") or {}).items() if v is not None}
    if at30:
        lines.append(
            "- bytes per image at 30 dB (interpolated on each Pareto front): "
            + "; ".join(f"{c} {v:.1f}" for c, v in sorted(at30.items(), key=lambda kv: kv[1]))
            + (
                ". Codecs whose front does not span 30 dB are not listed."
                if len(at30) < len(summary["bytes_at_30db"])
                else "."
            )
        )
    dev = [r for r in rows if r.get("device")]
    if dev:
        lines += [
            "",
            "## What a device pays (per rung; ONNX Runtime, 1 thread, this machine)",
            "",
            "| bundle | bytes/image | PSNR (dB) | SSIM | encoder.onnx (KB) | decoder.onnx (KB) | encode ms/item, batch 1 | "
            "encode ms/item, batch 256 | decode ms/item, batch 256 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in sorted(dev, key=lambda r: r["bytes"]):
            d = r["device"]
            lines.append(
                f"| {r['setting']} | {r['bytes']:.2f} | {r['psnr']:.2f} | {r['ssim']:.4f} | {d['encoder_kb']:.0f} | "
                f"{d['decoder_kb']:.0f} | {d['encode_ms_batch1']:.3f} | {d['encode_ms_batch256']:.3f} | "
                f"{d['decode_ms_batch256']:.3f} |"
            )
        lines.append("")
        lines.append(
            "Encode time is the whole edge path (scale, encoder graph, quantise, table selection, entropy coding, "
            "packing); decode time the whole cloud path (unpack, entropy decoding, decoder graph, crop). Both vary "
            "with machine load; compare rows of one run, not runs."
        )
    lines += [
        "",
        "## Bjøntegaard delta rate (project curve vs each codec, over their common PSNR range)",
        "",
        "| project curve | anchor | common PSNR range (dB) | BD-rate |",
        "|---|---|---|---|",
    ]
    for p, v in summary["bd_rate"].items():
        for a, d in v.items():
            rng = d["psnr_range"]
            lines.append(
                f"| {p} | {a} | {'–' if rng is None else f'{rng[0]:.2f}–{rng[1]:.2f}'} | "
                f"{'no overlap' if d['bd_rate_percent'] is None else format(d['bd_rate_percent'], '+.1f') + ' %'} |"
            )
    lines += [
        "",
        "## All measurements",
        "",
        "| codec | setting | bytes/image | DecodeRequest bytes/item | IngestRequest bytes/item | PSNR (dB) | SSIM |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        star = "*" if (r["codec"], r["setting"]) in on_curve else ""
        psnr = "∞" if r.get("lossless") else f"{r['psnr']:.2f}"
        lines.append(
            f"| {r['codec']} | {r['setting']}{star} | {r['bytes']:.2f} | {_fmt(r.get('decode_request_bytes'), '.2f')} | "
            f"{_fmt(r.get('ingest_request_bytes'), '.2f')} | {psnr} | {r['ssim']:.4f} |"
        )
    lines += [
        "",
        "IngestRequest bytes are the requests `edge.cli ingest` builds (edge/ingest.py build_request), "
        "500 items per request: the bundle id, the item-id prefix (8 hex digits of the source and '#') and "
        "the earliest capture time once per request; per item its number (item_seq) and its capture-time "
        "offset (here items 1 ms apart); DecodeRequest bytes are the batch path of `edge.cli evaluate`.",
        "",
    ]
    lines += _notes(rows, recipe=bool(meta.get("recipe")))
    return "\n".join(lines)


RECIPE_NOTE = (
    "- The ladder: the recipe preset of bench/train_ladder.py (spatial code maps with GDN and the integer scale "
    "hyperprior, as the zoo's `spatial` rungs, trained on this data: the first rung from scratch, each other rung "
    "fine-tuned from the one before, by steps; loss = squared error + lambda * bits). Its training is in "
    "rd_ladder.json beside this report."
)


def _window_line(w: dict | None, window: tuple[float, float]) -> str:
    """One BD-rate-vs-WebP target over a PSNR window, as bench.rd summarised it."""
    a, b = (w or {}).get("window") or window
    if not w or w["bd_rate_percent"] is None:
        return f"- BD-rate vs WebP over {a:g}–{b:g} dB: the curves share no part of that window (target NOT met)."
    lo, hi = w["psnr_range"]
    return (
        f"- BD-rate vs WebP over {lo:.2f}–{hi:.2f} dB (the part of {a:g}–{b:g} dB both curves measured; piecewise "
        f"linear in log bytes, no extrapolation): **{w['bd_rate_percent']:+.1f} %** (target ≤ "
        f"{w['target_percent']:.0f} % over the whole window: {'met' if w['met'] else 'NOT met'})."
    )


def _notes(rows: list[dict], recipe: bool = False) -> list[str]:
    """Where the project's bytes go: coder termination and per-item framing, measured on this run."""
    mine = [r for r in rows if "decode_request_bytes" in r]
    if not mine:
        return []
    dec = sum(r["decode_request_bytes"] - r["bytes"] for r in mine) / len(mine)
    ing = sum(r["ingest_request_bytes"] - r["bytes"] for r in mine) / len(mine)
    gaps = [r["bytes"] - r["ideal_bytes"] for r in mine if r.get("ideal_bytes") is not None]
    over = f"{sum(gaps) / len(gaps):.2f}" if gaps else "a few"
    return [
        "## Notes",
        "",
        f"- Per-item framing: a DecodeRequest adds {dec:.2f} bytes/item on average over the payload (a size varint "
        f"per item plus the batch header shared by 500 items); an IngestRequest adds {ing:.1f} bytes/item "
        "(each IngestItem's own tag and length, its payload's length, its item_seq and its capture-time offset).",
        f"- The payload includes the entropy coder's termination (and a map's size header): {over} bytes/item on "
        "average above the prior's ideal code length. Bundles name their coder: the range coder with the shortest "
        "termination (`constriction-range32`, under a byte; a map of its trained size has a 1-byte header) or, for "
        "bundles exported before it, the ANS stack (`constriction-ans32`, about 3 bytes; docs/coder_overhead.md). "
        "PCA's rows use the same coder as new bundles.",
        *(
            [RECIPE_NOTE]
            if recipe
            else [
                "- The ladder (bench/train_ladder.py, one preset per family; each family's training is in "
                "docs/rd_ladder_MODEL.json). Every rate-distortion rung is trained with loss = squared error + lambda "
                "* bits under a learned prior, straight-through rounding for the decoder, additive uniform noise for "
                "the rate:",
                *[
                    f"  - `{name}`: {text}"
                    for name, text in FAMILIES.items()
                    if f"aecodec {name}" in {r["codec"] for r in rows}
                ],
            ]
        ),
        "",
    ]


FAMILIES = {
    "vq": "one-hot code: the index of the nearest of 4096 codewords (training/models/vq.py), trained by Lloyd "
    "iterations; one 12-bit symbol, about 2 bytes once range-coded (3 with the ANS stack). The codewords "
    "live in the training data's top-64 PCA subspace, so the bundle holds 4096 x 64 numbers (float16), not "
    "4096 x 784 twice.",
    "conv": "5x5 stride-2 convolutions (32 channels), an MLP (256) to a 64-dim global code and back, transposed "
    "convolutions; chained from the highest rate down (10 epochs from scratch, then 4 per rung); conv-lambda-0.13 "
    "and conv-lambda-0.06 are rungs trained 30 epochs from scratch on their own (presets conv-long and "
    "conv-long-0.06, docs/training_length.md).",
    "spatial": "spatial code maps (training/models/spatial.py): 5x5 stride-2 convolutions with GDN to a 7x7x32 "
    "code map, a scale hyperprior whose hyper-decoder runs in integers (table selection cannot differ between "
    "machines), IGDN and transposed convolutions back; one bundle takes items of any size. Chained from the "
    "highest rate down: lambda 0.0001 trained 16 epochs from scratch, then 4 epochs per rung from the rung "
    "before it; the rungs from 0.0004 to 0.0256 then trained 4 more epochs each from their own checkpoint "
    "(preset spatial-long, a warm restart at half the peak rate).",
    "spatial-factorized": "the same spatial maps with a per-channel factorised prior instead of the hyperprior "
    "(no side information), at two rates; each rung starts from the hyperprior rung of its lambda and trains 4 "
    "epochs.",
    "linres": "a linear path initialised to PCA at each rung's rate-distortion-optimal step, plus 784-512-128 MLP "
    "corrections, 2 epochs per rung.",
}


def plot(path: Path, curves: dict[str, list[dict]], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    for codec, pts in curves.items():
        if pts and pts[0].get("lossless"):
            ax.axvline(pts[0]["bytes"], ls=":", lw=1, color="grey")
            ax.text(
                pts[0]["bytes"],
                0.02,
                f" {codec} (lossless)",
                rotation=90,
                va="bottom",
                fontsize=8,
                color="grey",
                transform=ax.get_xaxis_transform(),
            )
            continue
        style = dict(lw=2.5, marker="o") if codec.startswith("aecodec") else dict(lw=1.2, marker=".")
        ax.plot([r["bytes"] for r in pts], [r["psnr"] for r in pts], label=codec, **style)
    ax.set_xscale("log")
    ax.set_xlabel("bytes per image (log scale)")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(
    out_dir: Path, meta: dict, rows: list[dict], summary: dict, curves: dict[str, list[dict]]
) -> None:
    (out_dir / "rd.md").write_text(markdown(meta, rows, summary, curves))
    plot(out_dir / "rd.png", curves, f"{meta['data']}: {meta['items']} test images")


def zoo_index(meta: dict, rows: list[dict], curves: dict[str, list[dict]], dropped: int = 0) -> str:
    """zoo/README.md: every bundle in the zoo with its quality name, bytes, PSNR and SSIM, from this run."""
    from bench.bdrate import pareto

    mine = sorted((r for r in rows if "decode_request_bytes" in r), key=lambda r: (r["psnr"], r["bytes"]))
    points = set(
        pareto([(r["bytes"], r["psnr"]) for r in mine])
    )  # the front of every project bundle together
    front = {r["setting"] for r in mine if (r["bytes"], r["psnr"]) in points}
    lines = [
        "# Model zoo",
        "",
        f"Trained bundles, ready to use after cloning; measured by `{meta['command']}` on {meta['date']} "
        f"({meta['items']} Fashion-MNIST test images). Quality names run from q1 (the lowest PSNR) upwards. Any bundle "
        "works offline (`python -m edge.cli encode --bundle zoo/NAME ...`) and in a server (`--bundles zoo`, "
        "addressed by its directory name). Spatial bundles (`map+...` formats) take grey items of any size.",
        *(
            [
                "",
                f"{dropped} more bundles of that run lie off the project's Pareto front and are not kept here; "
                "`make bench-rd RETRAIN=1` trains them again (docs/rd.md lists every one).",
            ]
            if dropped
            else []
        ),
        "",
        "| quality | bundle | format | bytes/image | PSNR (dB) | SSIM | on the front |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for i, r in enumerate(mine, 1):
        lines.append(
            f"| q{i} | `{r['setting']}` | {r.get('format', '')} | {r['bytes']:.2f} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
            f"{'yes' if r['setting'] in front else 'no'} |"
        )
    return "\n".join(lines) + "\n"

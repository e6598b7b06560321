"""Denoising and inpainting as a service: a bundle trained as a denoising autoencoder takes noisy or holed items
through the ordinary encode / Decode path and gives back clean reconstructions; against classic filters.

    python -m bench.denoise          # writes docs/denoise.md, docs/denoise.png, docs/denoise.json

The service bundle (DENOISER below) trains on clean training items, each corrupted by one of masking noise,
clipped Gaussian noise or a square hole (training/noise.py, --noise-mix --noise-clip), and learns to give
back the clean item. A device encodes the corrupted item as it would any other; the cloud decodes it as it
would any other. Its plain twin (same network, trained on clean items) shows what the training buys.
Corruptions are applied to the uint8 test items and rounded back to uint8: what a device would send.

Classic baselines (scikit-image): a 3x3 median filter, non-local means (h = 0.8 sigma, the noise level
estimated from each item by Immerkaer's method), and for holes biharmonic inpainting, which is told where the hole is (the
autoencoder is not). PSNR is of the mean squared error over all test items, on the [0, 1] scale; for holes
also inside the hole alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.small_bundles import Budget, Recipe

DENOISER = Recipe(
    "denoiser",
    "dense",
    {"code_dim": 128, "hidden": [512]},
    {"mask_noise": 0.25, "gauss_noise": 0.2, "block_noise": 10, "noise_mix": True, "noise_clip": True},
    "784-512-128, each training item masked (q = 0.25), noised (sigma = 0.2, clipped) or holed (10x10)",
)
PLAIN_TWIN = Recipe(
    "denoiser-twin", "dense", {"code_dim": 128, "hidden": [512]}, note="the same, clean items"
)


@dataclass(frozen=True)
class Noise:
    name: str
    kind: str  # mask | gauss | block
    level: float


NOISES = [
    Noise("masking q = 0.25", "mask", 0.25),
    Noise("masking q = 0.5", "mask", 0.5),
    Noise("Gaussian sigma = 0.1", "gauss", 0.1),
    Noise("Gaussian sigma = 0.2", "gauss", 0.2),
    Noise("Gaussian sigma = 0.3", "gauss", 0.3),
    Noise("hole 8x8", "block", 8),
    Noise("hole 12x12", "block", 12),
]


def corrupt(x_raw: np.ndarray, noise: Noise, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 items -> (corrupted uint8 items, the hole mask (N, 1, H, W) for block noise, else None)."""
    import torch

    from training.noise import block_holes, gaussian_noise, mask_noise

    g = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(x_raw.astype(np.float32) / 255.0)
    hole = None
    if noise.kind == "mask":
        y = mask_noise(x, noise.level, g)
    elif noise.kind == "gauss":
        y = gaussian_noise(x, noise.level, g)
    else:
        hole = block_holes(tuple(x.shape), int(noise.level), g)
        y = x.masked_fill(hole, 0.0)
    out = np.rint(y.clamp(0, 1).numpy() * 255).astype(np.uint8)
    return out, None if hole is None else hole.numpy()


def psnr(clean: np.ndarray, out: np.ndarray, where: np.ndarray | None = None) -> float:
    from latent_codec.metrics import psnr_from_mse

    d = (clean.astype(np.float64) - out.astype(np.float64)) / 255.0
    se = d**2 if where is None else (d**2)[np.broadcast_to(where, d.shape)]
    return float(psnr_from_mse(float(se.mean())))


def median(x_raw: np.ndarray) -> np.ndarray:
    from scipy.ndimage import median_filter

    return median_filter(x_raw, size=(1, 1, 3, 3), mode="reflect")


def noise_sigma(item: np.ndarray) -> float:
    """Immerkaer's (1996) noise estimate: the mean |Laplacian difference| of a 2-D item (no wavelets needed)."""
    from scipy.signal import convolve2d

    m = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float64)
    h, w = item.shape
    return float(
        np.sqrt(np.pi / 2) * np.abs(convolve2d(item, m, mode="valid")).sum() / (6 * (h - 2) * (w - 2))
    )


def nl_means(x_raw: np.ndarray) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    out = np.empty_like(x_raw)
    for i, item in enumerate(x_raw[:, 0].astype(np.float64) / 255.0):
        sigma = noise_sigma(item)
        den = denoise_nl_means(
            item, h=0.8 * sigma, sigma=sigma, patch_size=3, patch_distance=5, fast_mode=True
        )
        out[i, 0] = np.rint(np.clip(den, 0, 1) * 255)
    return out


def biharmonic(x_raw: np.ndarray, hole: np.ndarray) -> np.ndarray:
    from skimage.restoration import inpaint_biharmonic

    out = np.empty_like(x_raw)
    for i, item in enumerate(x_raw[:, 0].astype(np.float64) / 255.0):
        out[i, 0] = np.rint(np.clip(inpaint_biharmonic(item, hole[i, 0]), 0, 1) * 255)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.denoise", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--limit", type=int, default=20000, help="training items")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument(
        "--test-limit", type=int, default=2000, help="test items per noise (the filters are per item)"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-dir", type=Path, default=Path("docs"))
    p.add_argument("--work-dir", type=Path, default=Path("runs/uses"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bench.figures import image_grid
    from bench.small_bundles import reconstruct, set_threads, train_bundle, train_seconds
    from latent_codec import datasets
    from latent_codec.codec import Codec

    t_start = time.perf_counter()
    set_threads(args.threads)
    budget = Budget(
        data=args.data, limit=args.limit, epochs=args.epochs, seed=args.seed, threads=args.threads
    )
    paths = {r.name: train_bundle(r, budget, args.work_dir) for r in (DENOISER, PLAIN_TWIN)}
    dae = Codec.open(paths[DENOISER.name], threads=args.threads)
    twin = Codec.open(paths[PLAIN_TWIN.name], threads=args.threads)
    clean = datasets.load(args.data, "test").x[: args.test_limit]
    rows = []
    shown = [("clean", clean[:10].astype(np.float32) / 255)]
    for k, noise in enumerate(NOISES):
        noisy, hole = corrupt(clean, noise, args.seed + k)
        outs = {
            "denoising AE (service bundle)": reconstruct(dae, noisy),
            "plain AE twin": reconstruct(twin, noisy),
            "median 3x3": median(noisy),
            "non-local means": nl_means(noisy),
        }
        if hole is not None:
            outs["biharmonic inpainting (knows the hole)"] = biharmonic(noisy, hole)
        row = {
            "noise": noise.name,
            "noisy": psnr(clean, noisy),
            "out": {m: psnr(clean, o) for m, o in outs.items()},
        }
        if hole is not None:
            row["noisy_hole"] = psnr(clean, noisy, hole)
            row["out_hole"] = {m: psnr(clean, o, hole) for m, o in outs.items()}
        rows.append(row)
        print(
            f"{noise.name}: noisy {row['noisy']:.2f} dB -> AE {row['out']['denoising AE (service bundle)']:.2f} dB",
            file=sys.stderr,
        )
        if noise.name in ("masking q = 0.25", "Gaussian sigma = 0.2", "hole 12x12"):
            shown.append((f"{noise.name}: input", noisy[:10].astype(np.float32) / 255))
            shown.append(
                ("denoising AE", outs["denoising AE (service bundle)"][:10].astype(np.float32) / 255)
            )
            best = "biharmonic inpainting (knows the hole)" if hole is not None else "non-local means"
            shown.append((best.split(" (")[0], outs[best][:10].astype(np.float32) / 255))
    clean_psnr = {
        "denoising AE (service bundle)": psnr(clean, reconstruct(dae, clean)),
        "plain AE twin": psnr(clean, reconstruct(twin, clean)),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    image_grid(shown, args.out_dir / "denoise.png", dpi=90)
    seconds = time.perf_counter() - t_start
    methods = list(rows[0]["out"]) + ["biharmonic inpainting (knows the hole)"]
    lines = [
        "# Denoising and inpainting as a service",
        "",
        f"Generated by `python -m bench.denoise` (do not edit by hand); run {seconds / 60:.1f} min on the shared 2-core "
        f"machine, {args.threads} torch thread(s), seed {args.seed}.",
        "",
        f"The service bundle `{dae.bundle_id}` ({DENOISER.note}; `{DENOISER.flags()}`) and its plain twin `{twin.bundle_id}` "
        f"(`{PLAIN_TWIN.flags()}`) trained for {args.epochs} epochs on the first {args.limit:,} training items "
        f"({train_seconds(paths[DENOISER.name]):.0f} s and {train_seconds(paths[PLAIN_TWIN.name]):.0f} s with export). Each "
        f"of {len(clean):,} test items is corrupted in uint8 (what a device sends), encoded by the bundle's codec "
        f"({dae.format} payloads) and decoded: the path `edge.cli` and the server's Decode run (tests/test_uses.py "
        "sends them through a real server). PSNR in dB against the clean item, of the mean squared error over all items.",
        "",
        f"On clean items the service bundle gives {clean_psnr['denoising AE (service bundle)']:.2f} dB and its twin "
        f"{clean_psnr['plain AE twin']:.2f} dB. The twin's figure is what its bottleneck loses; the service bundle never "
        "saw a clean item in training (each item got one corruption), so it treats a clean item as a corrupted one "
        "(it brightens what it takes for masked pixels): send it corrupted items, and clean ones to a plain bundle.",
        "",
        "| noise | PSNR(noisy, clean) | " + " | ".join(methods) + " |",
        "|---|---:|" + "---:|" * len(methods),
    ]
    for r in rows:
        cells = [f"{r['out'][m]:.2f}" if m in r["out"] else "" for m in methods]
        best = max(r["out"], key=r["out"].get)
        cells = [f"**{c}**" if m == best else c for m, c in zip(methods, cells)]
        lines.append(f"| {r['noise']} | {r['noisy']:.2f} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Inside the hole alone (the pixels that were lost):",
        "",
        "| noise | holed input | " + " | ".join(methods) + " |",
        "|---|---:|" + "---:|" * len(methods),
    ]
    for r in rows:
        if "out_hole" in r:
            cells = [f"{r['out_hole'][m]:.2f}" for m in methods]
            lines.append(f"| {r['noise']} | {r['noisy_hole']:.2f} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Rows of the picture: clean items, then for three corruptions the input, the service bundle's output and the best classic method.",
        "",
        "![denoising and inpainting](denoise.png)",
        "",
    ]
    (args.out_dir / "denoise.md").write_text("\n".join(lines))
    (args.out_dir / "denoise.json").write_text(
        json.dumps({"bundle_id": dae.bundle_id, "clean": clean_psnr, "rows": rows}, indent=1) + "\n"
    )
    print("\n".join(lines[9:]))
    print(f"wrote {args.out_dir / 'denoise.md'}, denoise.png ({seconds / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

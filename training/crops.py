"""Build a crop set from any folder of photographs: the .npz that ``training.train --data`` reads.

    python -m training.crops --photos data/photos/train --out runs/photo-crops.npz --size 64 --count 20000

Every photograph (JPEG, PNG, WebP, TIFF, BMP; searched recursively, in name order) is read with its EXIF
orientation applied and turned into 8-bit RGB: 16-bit grey is scaled (v / 257), not clipped; a 16-bit RGB
PNG keeps its high byte (Pillow's reading); transparency is refused unless ``--alpha flatten`` composites it
over white. Each photograph is then downscaled with a Lanczos filter so its longest side is --max-side (never
upscaled): at a factor of 3 to 6 for the usual 2-5k pixel photographs, the camera's and the JPEG encoder's
own artefacts (8x8 blocks, ringing, chroma blur) fall below a pixel and the crops show the scene, not the
previous codec. Several --max-side values use every photograph at every scale.

Whole photographs are held out for the test split (``x_test``): --test-photos names them, otherwise
--test-fraction of the photographs are drawn by --seed. No test crop comes from a photograph a training crop
came from. --exclude (a folder of photographs, or a text file of names, one a line) removes photographs
altogether, matched by file name or identical bytes: e.g. the held-out photographs of the RD benchmark.

Crops are drawn uniformly over all crop positions of all (photograph, scale) images, so larger images give
more crops. The .npz holds x_train and x_test, uint8 (N, 3, size, size) (or (N, 1, size, size) with --grey), as latent_codec.datasets reads them
(x_<split>); photos_train/photos_test (the photographs' relative paths) and where_train/where_test (photo
index, scale index, top, left of each crop) say where every crop came from; meta is the command's settings as
JSON. The same photographs, arguments and seed give the same file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latent_codec.datasets import MAX_IMAGE_PIXELS
from latent_codec.errors import DataError

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp"}
ALPHA_POLICIES = ("refuse", "flatten")


@dataclass
class Photo:
    """One photograph at one or more scales: (H, W, 3) uint8 arrays, largest first."""

    name: str  # path relative to the folder it came from
    original: tuple[int, int]  # (width, height) after orientation, before downscaling
    scales: list[np.ndarray]


def find_photos(folder: Path) -> list[Path]:
    """Photograph files under folder (recursively), sorted by their relative path."""
    if not folder.is_dir():
        raise DataError(f"photo folder not found: {folder}")
    files = sorted(
        (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not files:
        raise DataError(f"{folder}: no photographs ({', '.join(sorted(PHOTO_SUFFIXES))})")
    return files


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def exclusion(specs: list[Path]) -> tuple[set[str], set[str]]:
    """--exclude values -> (file names, lower case; SHA-256 of the files' bytes)."""
    names: set[str] = set()
    hashes: set[str] = set()
    for spec in specs:
        if spec.is_dir():
            for p in find_photos(spec):
                names.add(p.name.lower())
                hashes.add(_sha256(p))
        elif spec.is_file():
            for line in spec.read_text().splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    names.add(Path(line).name.lower())
        else:
            raise DataError(f"--exclude {spec}: neither a folder of photographs nor a list file")
    return names, hashes


def read_photo(path: Path, alpha: str = "refuse", at_least: int = 0) -> np.ndarray:
    """One photograph as (H, W, 3) uint8 RGB, EXIF orientation applied; a clear DataError for what is not.

    at_least > 0 lets a JPEG decode at 1/2, 1/4 or 1/8 scale (in the DCT domain, much faster) as long as its
    longest side stays at least that many pixels.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise DataError(
                        f"{path}: {w}x{h} pixels is more than the {MAX_IMAGE_PIXELS:,}-pixel limit"
                    )
                if at_least and im.format == "JPEG" and max(w, h) > at_least:
                    f = at_least / max(w, h)
                    im.draft("RGB", (math.ceil(w * f), math.ceil(h * f)))
                im.load()
                im = ImageOps.exif_transpose(im)  # portraits stored sideways come out upright
                return _to_rgb8(im, path, alpha)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: refused as a decompression bomb ({exc})") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def _to_rgb8(im, path: Path, alpha: str) -> np.ndarray:
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):  # 16-bit grey (PNG, TIFF): scale, never clip
        v = np.asarray(im).astype(np.int64)
        if v.min() < 0 or v.max() > 65535:
            raise DataError(
                f"{path}: integer pixels outside 0..65535 (mode {im.mode}); convert it to 8 or 16 bits"
            )
        grey = np.rint(v / 257.0).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode == "F":
        raise DataError(
            f"{path}: floating-point pixels (mode F) are not a photograph's; convert it to 8 or 16 bits"
        )
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode == "P" and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        if np.asarray(rgba)[:, :, 3].min() < 255:
            if alpha != "flatten":
                raise DataError(
                    f"{path}: has transparent pixels; pass --alpha flatten to composite it over white, or remove it"
                )
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))
        return np.asarray(rgba.convert("RGB"))
    return np.asarray(im.convert("RGB"))  # L, P, CMYK, YCbCr, 1 -> RGB


def downscale(rgb: np.ndarray, max_side: int) -> np.ndarray:
    """Longest side to max_side with a Lanczos filter (antialiased); smaller photographs are kept as they are."""
    from PIL import Image

    h, w = rgb.shape[:2]
    if max(h, w) <= max_side:
        return rgb
    f = max_side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0))


def load_photos(
    files: list[Path], root: Path, max_sides: list[int], alpha: str, progress: bool
) -> list[Photo]:
    out = []
    for i, p in enumerate(files):
        rgb = read_photo(p, alpha, at_least=2 * max(max_sides))  # decoded at >= 2x the largest scale
        scales = [downscale(rgb, s) for s in sorted(set(max_sides), reverse=True)]
        name = p.relative_to(root).as_posix()
        out.append(Photo(name, (rgb.shape[1], rgb.shape[0]), scales))
        if progress:
            sizes = ", ".join(f"{s.shape[1]}x{s.shape[0]}" for s in scales)
            print(f"[{i + 1}/{len(files)}] {name}: {rgb.shape[1]}x{rgb.shape[0]} -> {sizes}", file=sys.stderr)
    return out


def draw_crops(
    photos: list[Photo], size: int, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """count crops, uniformly over every crop position of every (photo, scale) -> (N, 3, size, size) uint8, where."""
    images = [(i, k, s) for i, ph in enumerate(photos) for k, s in enumerate(ph.scales)]
    positions = np.array(
        [max(0, s.shape[0] - size + 1) * max(0, s.shape[1] - size + 1) for _, _, s in images]
    )
    if count and positions.sum() == 0:
        raise DataError(f"no photograph is at least {size}x{size} pixels after downscaling: lower --size")
    x = np.empty((count, 3, size, size), np.uint8)
    where = np.empty((count, 4), np.int32)
    if not count:
        return x, where
    pick = rng.choice(len(images), size=count, p=positions / positions.sum())
    for n, j in enumerate(pick):
        i, k, s = images[j]
        top = int(rng.integers(0, s.shape[0] - size + 1))
        left = int(rng.integers(0, s.shape[1] - size + 1))
        x[n] = np.moveaxis(s[top : top + size, left : left + size], -1, 0)
        where[n] = (i, k, top, left)
    return x, where


def luma(x: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) RGB -> (N, 1, H, W) grey: ITU-R 601 luma (299 R + 587 G + 114 B) / 1000, rounded."""
    w = np.array([299, 587, 114], np.int64)[None, :, None, None]
    return (((x.astype(np.int64) * w).sum(1, keepdims=True) + 500) // 1000).astype(np.uint8)


def split_photos(
    files: list[Path], test_files: list[Path] | None, test_fraction: float, rng: np.random.Generator
) -> tuple[list[Path], list[Path]]:
    """(training photographs, test photographs): whole photographs, never both."""
    if test_files is not None:
        return files, test_files
    if len(files) < 2:
        raise DataError(
            f"{len(files)} photograph: at least 2 are needed to hold whole ones out for x_test "
            "(or name them with --test-photos)"
        )
    n_test = min(len(files) - 1, max(1, round(len(files) * test_fraction)))
    chosen = set(rng.choice(len(files), size=n_test, replace=False).tolist())
    return [p for i, p in enumerate(files) if i not in chosen], [
        p for i, p in enumerate(files) if i in chosen
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="aecodec-crops", description=__doc__.split("\n")[0])
    p.add_argument("--photos", required=True, type=Path, help="folder of photographs (searched recursively)")
    p.add_argument("--out", required=True, type=Path, help="the .npz to write (x_train, x_test, ...)")
    p.add_argument("--size", type=int, default=64, help="crop height and width in pixels")
    p.add_argument("--count", type=int, required=True, help="training crops")
    p.add_argument("--test-count", type=int, default=None, help="test crops (default: count / 10)")
    p.add_argument(
        "--max-side",
        default="512",
        help="longest side after downscaling, in pixels; comma-separated values use every photograph at each",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--exclude",
        type=Path,
        action="append",
        default=[],
        help="photographs never to use: a folder of them (matched by name or identical bytes) or a list of names",
    )
    p.add_argument("--test-photos", type=Path, default=None, help="folder of photographs for x_test")
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.1,
        help="without --test-photos: this fraction of the photographs (at least one) is held out for x_test",
    )
    p.add_argument("--alpha", choices=ALPHA_POLICIES, default="refuse", help="transparent photographs")
    p.add_argument("--grey", action="store_true", help="grey crops (N, 1, size, size): ITU-R 601 luma")
    p.add_argument("--quiet", action="store_true", help="no per-photograph progress lines")
    return p.parse_args(argv)


def build(args: argparse.Namespace) -> dict:
    """Read, split, downscale and crop; write args.out. -> a summary dict."""
    if args.size < 1 or args.count < 1:
        raise DataError("--size and --count must be at least 1")
    if not 0.0 < args.test_fraction < 1.0:
        raise DataError("--test-fraction must lie strictly between 0 and 1")
    try:
        max_sides = [int(v) for v in str(args.max_side).split(",") if v.strip()]
    except ValueError:
        raise DataError(f"--max-side {args.max_side!r}: expected integers, e.g. 512 or 512,1024") from None
    if not max_sides or min(max_sides) < args.size:
        raise DataError(f"--max-side must be at least --size ({args.size})")
    progress = not args.quiet
    t0 = time.perf_counter()
    names, hashes = exclusion(args.exclude)

    def keep(files: list[Path]) -> list[Path]:
        kept = [p for p in files if p.name.lower() not in names and (not hashes or _sha256(p) not in hashes)]
        if progress and len(kept) < len(files):
            print(
                f"excluded {len(files) - len(kept)} of {len(files)} photographs (--exclude)", file=sys.stderr
            )
        return kept

    rng = np.random.default_rng(args.seed)
    files = keep(find_photos(args.photos))
    test_files = keep(find_photos(args.test_photos)) if args.test_photos else None
    train_files, test_files = split_photos(files, test_files, args.test_fraction, rng)
    if not train_files or not test_files:
        raise DataError("no photographs left for the training or the test split after --exclude")
    if test_files is not None and args.test_photos is not None:
        both = {_sha256(p) for p in train_files} & {_sha256(p) for p in test_files}
        if both:
            raise DataError(f"{len(both)} photograph(s) are in both --photos and --test-photos")
    test_root = args.test_photos or args.photos
    train = load_photos(train_files, args.photos, max_sides, args.alpha, progress)
    test = load_photos(test_files, test_root, max_sides, args.alpha, progress)
    test_count = args.test_count if args.test_count is not None else max(1, args.count // 10)
    x_train, where_train = draw_crops(train, args.size, args.count, rng)
    x_test, where_test = draw_crops(test, args.size, test_count, rng)
    if args.grey:
        x_train, x_test = luma(x_train), luma(x_test)
    meta = {
        "photos": str(args.photos),
        "test_photos": str(args.test_photos) if args.test_photos else None,
        "size": args.size,
        "grey": bool(args.grey),
        "max_side": max_sides,
        "seed": args.seed,
        "exclude": [str(p) for p in args.exclude],
        "train_photos": len(train),
        "test_photos_count": len(test),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp.npz")
    np.savez(
        tmp,
        x_train=x_train,
        x_test=x_test,
        photos_train=np.array([p.name for p in train]),
        photos_test=np.array([p.name for p in test]),
        where_train=where_train,
        where_test=where_test,
        meta=np.array(json.dumps(meta)),
    )
    tmp.replace(args.out)
    pixels = sum(s.shape[0] * s.shape[1] for ph in train for s in ph.scales)
    return {
        "out": str(args.out),
        "train_crops": len(x_train),
        "test_crops": len(x_test),
        "train_photos": len(train),
        "test_photos": [p.name for p in test],
        "train_megapixels": pixels / 1e6,
        "seconds": time.perf_counter() - t0,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        s = build(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cover = s["train_crops"] * args.size**2 / max(s["train_megapixels"] * 1e6, 1)
    print(
        f"wrote {s['out']}: {s['train_crops']} training crops from {s['train_photos']} photographs "
        f"({s['train_megapixels']:.1f} Mpixel after downscaling, each pixel in {cover:.1f} crops on average), "
        f"{s['test_crops']} test crops from {len(s['test_photos'])} held-out photographs "
        f"({', '.join(s['test_photos'][:5])}{', ...' if len(s['test_photos']) > 5 else ''}) in {s['seconds']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

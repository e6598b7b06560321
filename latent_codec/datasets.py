"""Loaders for real data, with no download: IDX folders, .npy/.npz, image folders, digits.

Every loader returns uint8 (or float32 in [0, 1]) arrays shaped (N, C, H, W):
the raw items a device would hold, so raw bytes are counted honestly in
compression ratios. Scaling to [0, 1] is the codec's first step (the
manifest's ``input.scale``, ``latent_codec.bundle.InputSpec``), not the loaders'.

Files are checked before they are read: a header that declares more data than
the file holds, or an image of more than MAX_IMAGE_PIXELS pixels (a
decompression bomb), is a one-line DataError, never an allocation of what the
header claims.
"""

from __future__ import annotations

import gzip
import math
import struct
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
MAX_IMAGE_PIXELS = 64 * 1024 * 1024  # per image; larger is refused (Pillow's bomb guard, tightened)
MAX_ARRAY_BYTES = 1 << 34  # 16 GiB: a declared array larger than this is refused before reading

# IDX type codes (http://yann.lecun.com/exdb/mnist/ format description).
_IDX_DTYPES: dict[int, str | type] = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


@dataclass
class ArrayDataset:
    """Items (N, C, H, W) as stored on a device, optional labels, and where they came from."""

    x: np.ndarray
    y: np.ndarray | None
    source: str

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.x.shape[1:])


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally .gz) into an array of its declared type and shape."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"IDX file not found: {path}")
    try:
        with _open(path) as f:
            header = f.read(4)
            if len(header) < 4 or header[0] != 0 or header[1] != 0:
                raise DataError(f"{path}: not an IDX file (bad magic number {header.hex() or 'empty'})")
            code, ndim = header[2], header[3]
            if code not in _IDX_DTYPES:
                raise DataError(f"{path}: unknown IDX element type 0x{code:02x}")
            dims_raw = f.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise DataError(f"{path}: truncated IDX header")
            dims = struct.unpack(f">{ndim}I", dims_raw)
            dtype = np.dtype(_IDX_DTYPES[code])
            count = math.prod(dims)  # Python ints: no overflow, whatever the header says
            if count * dtype.itemsize > MAX_ARRAY_BYTES:
                raise DataError(
                    f"{path}: IDX header declares shape {tuple(dims)} ({count * dtype.itemsize:,} bytes), "
                    f"more than the {MAX_ARRAY_BYTES:,}-byte limit"
                )
            body = _read_at_most(f, count * dtype.itemsize + 1)  # +1: tells a longer file from an exact one
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc})") from None
    if len(body) != count * dtype.itemsize:
        raise DataError(
            f"{path}: IDX header declares shape {tuple(dims)} ({count * dtype.itemsize} bytes) "
            f"but the file holds {len(body)} bytes"
        )
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def _read_at_most(f, n: int, chunk: int = 1 << 22) -> bytes:
    """Up to n bytes, read in chunks: memory follows what the file holds, not what a header claims."""
    parts, got = [], 0
    while got < n:
        block = f.read(min(chunk, n - got))
        if not block:
            break
        parts.append(block)
        got += len(block)
    return b"".join(parts)


def _find(folder: Path, stems: list[str]) -> Path | None:
    for stem in stems:
        for cand in (folder / stem, folder / f"{stem}.gz"):
            if cand.is_file():
                return cand
    return None


def load_idx_dir(folder: str | Path, split: str = "test") -> ArrayDataset:
    """An MNIST-style folder: {train,t10k}-images-idx3-ubyte[.gz] and the matching labels."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data folder not found: {folder}")
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise DataError(f"unknown split {split!r}: use 'train' or 'test'")
    images = _find(folder, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"])
    if images is None:
        raise DataError(f"{folder}: no {prefix}-images-idx3-ubyte[.gz] file for split {split!r}")
    x = read_idx(images)
    if x.ndim == 3:
        x = x[:, None, :, :]
    elif x.ndim != 4:
        raise DataError(f"{images}: expected images of 3 or 4 dimensions, got shape {x.shape}")
    labels = _find(folder, [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"])
    y = read_idx(labels) if labels is not None else None
    if y is not None and len(y) != len(x):
        raise DataError(f"{labels}: {len(y)} labels for {len(x)} images")
    return ArrayDataset(np.ascontiguousarray(x), y, f"idx:{folder}:{split}")


def _as_items(arr: np.ndarray, where: str) -> np.ndarray:
    """Normalise an array to (N, C, H, W): (N,H,W) gets C=1, (N,H,W,3|4) becomes channels-first."""
    if arr.ndim == 2:  # (N, D) flat vectors: one row image
        arr = arr[:, None, None, :]
    elif arr.ndim == 3:
        arr = arr[:, None]
    elif arr.ndim == 4 and arr.shape[-1] in (1, 3, 4) and arr.shape[1] not in (1, 3, 4):
        arr = np.moveaxis(arr, -1, 1)
    elif arr.ndim != 4:
        raise DataError(f"{where}: expected an array of items with 2-4 dimensions, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
        if not np.all(np.isfinite(arr)):
            raise DataError(f"{where}: contains NaN or infinite values")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(f"{where}: float pixels must lie in [0, 1], found [{lo:g}, {hi:g}]")
        return np.ascontiguousarray(arr)
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise DataError(f"{where}: integer pixels must lie in [0, 255], found [{lo}, {hi}]")
        return np.ascontiguousarray(arr.astype(np.uint8))
    raise DataError(f"{where}: unsupported dtype {arr.dtype}")


def load_array_file(path: str | Path, split: str = "test") -> ArrayDataset:
    """A .npy array, or a .npz holding x_<split> / x / images / the only array."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"array file not found: {path}")
    try:
        _check_array_headers(path)
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable .npy/.npz file ({exc})") from None
    y = None
    if isinstance(data, np.ndarray):
        x = data
    else:
        with data:
            keys = list(data.keys())
            for key in (f"x_{split}", f"{split}_images", "x", "images", "arr_0"):
                if key in keys:
                    x = data[key]
                    break
            else:
                if len(keys) == 1:
                    x = data[keys[0]]
                else:
                    raise DataError(
                        f"{path}: which array holds the items? found {keys}; name one 'x' or 'x_{split}'"
                    )
            for key in (f"y_{split}", "y", "labels"):
                if key in keys:
                    y = data[key]
                    break
    return ArrayDataset(_as_items(x, str(path)), y, f"array:{path}")


def _check_npy_header(f, size: int, where: str) -> None:
    """Refuse a .npy stream whose header declares more bytes than the stream holds (or than we accept)."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f)
    declared = math.prod(shape) * dtype.itemsize
    held = size - f.tell()
    if dtype.hasobject:
        raise DataError(f"{where}: holds Python objects; only numeric arrays are read")
    if declared > MAX_ARRAY_BYTES or declared > held:
        raise DataError(
            f"{where}: header declares shape {tuple(shape)} of {dtype} ({declared:,} bytes) "
            f"but the file holds {max(held, 0):,} bytes of data"
        )


def _check_array_headers(path: Path) -> None:
    if path.suffix == ".npz":
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.filename.endswith(".npy"):
                    with z.open(info) as f:
                        _check_npy_header(f, info.file_size, f"{path}:{info.filename}")
        return
    with open(path, "rb") as f:
        _check_npy_header(f, path.stat().st_size, str(path))


def load_image_folder(folder: str | Path, mode: str | None = None) -> ArrayDataset:
    """Every image file in a folder (sorted by name), all of one size, as uint8 items.

    mode: "L" (grey) or "RGB"; None keeps the first image's mode (grey or RGB).
    """
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return load_images(files, f"images:{folder}", mode)


def load_images(files: list[Path], source: str, mode: str | None = None) -> ArrayDataset:
    """Image files of one size as uint8 items (N, C, H, W); one file is one item (a photograph, say)."""
    from PIL import Image, UnidentifiedImageError

    items = []
    size = None
    for p in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(p) as im:
                    w, h = im.size
                    if w * h > MAX_IMAGE_PIXELS:
                        raise DataError(
                            f"{p}: image is {w}x{h} ({w * h:,} pixels), more than the "
                            f"{MAX_IMAGE_PIXELS:,}-pixel limit (a decompression bomb?)"
                        )
                    im.load()
                    if mode is None:
                        mode = "L" if im.mode in ("1", "L", "LA", "I", "I;16", "P") else "RGB"
                    converted = im.convert(mode)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DataError(f"{p}: refused as a decompression bomb ({exc})") from None
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"{p}: not a readable image ({exc})") from None
        if size is None:
            size = converted.size
        elif converted.size != size:
            raise DataError(
                f"{p}: image is {converted.size[0]}x{converted.size[1]} but earlier images are {size[0]}x{size[1]}"
            )
        arr = np.asarray(converted, dtype=np.uint8)
        items.append(arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0))
    return ArrayDataset(np.stack(items), None, source)


def load_digits_dataset(split: str = "test") -> ArrayDataset:
    """scikit-learn's bundled 8x8 digits (0..16 grey levels) as uint8; every 5th item is test."""
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}: use 'train' or 'test'")
    try:
        from sklearn.datasets import load_digits  # optional; ships its data, no download
    except ImportError:
        raise DataError(
            "digits come with scikit-learn, which is not installed here (a device or the edge image does not "
            "install it): pass a folder of images, an IDX folder or a .npy/.npz file instead"
        ) from None

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = d.target.astype(np.uint8)
    test_mask = (np.arange(len(x)) % 5) == 0
    mask = test_mask if split == "test" else ~test_mask
    return ArrayDataset(np.ascontiguousarray(x[mask]), y[mask], f"digits:{split}")


def load(spec: str | Path | None, split: str = "test", mode: str | None = None) -> ArrayDataset:
    """Resolve a data spec to items.

    spec: "fashion-mnist" (the Debian package's folder), "digits", a folder of
    IDX files, a folder of images, one image file, or a .npy/.npz file. None means
    Fashion-MNIST.
    """
    if spec is None or str(spec) == "fashion-mnist":
        if not FASHION_MNIST_DIR.is_dir():
            raise DataError(
                f"Fashion-MNIST not found at {FASHION_MNIST_DIR}: install the Debian package "
                "dataset-fashion-mnist, or pass --data digits or --data-dir PATH"
            )
        return load_idx_dir(FASHION_MNIST_DIR, split)
    if str(spec) == "digits":
        return load_digits_dataset(split)
    path = Path(spec)
    if path.is_file():
        if path.suffix in (".npy", ".npz"):
            return load_array_file(path, split)
        if path.suffix.lower() in IMAGE_SUFFIXES:  # one photograph: one item of its own size
            return load_images([path], f"image:{path}", mode)
        if "idx" in path.name:
            arr = read_idx(path)
            return ArrayDataset(_as_items(arr, str(path)), None, f"idx:{path}")
        raise DataError(f"{path}: unknown data file type (expected .npy, .npz or an IDX file)")
    if path.is_dir():
        names = [p.name for p in path.iterdir()]
        if any("idx" in n and "ubyte" in n for n in names):
            return load_idx_dir(path, split)
        return load_image_folder(path, mode)
    raise DataError(f"data not found: {path}")

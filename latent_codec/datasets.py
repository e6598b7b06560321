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


def load_image_folder(folder: str | Path, mode: str | None = None, **options) -> ArrayDataset:
    """Every image file in a folder (sorted by name), all of one size, as uint8 items.

    mode: "L" (grey) or "RGB"; None: grey when every image is grey, else RGB. ``options``: see ``PhotoOptions``.
    """
    return image_items(Path(folder), mode, **options).stacked()


def load_images(files: list[Path], source: str, mode: str | None = None, **options) -> ArrayDataset:
    """Image files of one size as uint8 items (N, C, H, W); one file is one item (a photograph, say)."""
    return ImageItems(files, source, PhotoOptions(mode, **options)).stacked()


# ---- photographs as a device holds them: items of any size, each with its file name -----------------------
ALPHA_BACKGROUNDS = {"white": 255, "black": 0}
_GREY_MODES = {"1", "L", "I;16", "I;16L", "I;16B", "I;16N"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}
_SIXTEEN_BIT = {"I;16", "I;16L", "I;16B", "I;16N"}
_ORIENTATION = 0x0112  # EXIF tag; values 5-8 turn the picture by 90 degrees (width and height swap)


@dataclass(frozen=True)
class PhotoOptions:
    """How image files become items, refusing what would lose information silently.

    mode: "L" or "RGB" (what the bundle takes), None = grey when every image is grey, else RGB.
    grey: a colour image may be converted to grey for a grey ``mode`` (otherwise that is an error naming the
    flag, since the colour would be lost without a word). Grey images always become RGB for an RGB ``mode``
    (nothing is lost). alpha: None refuses images with an alpha channel; "white" or "black" flattens them onto
    that background. EXIF orientation is always applied; 16-bit images are scaled to 8 bits (x 255 / 65535,
    rounded); 32-bit integer and float images are refused.
    """

    mode: str | None = None
    grey: bool = False
    alpha: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in (None, "L", "RGB"):
            raise DataError(f"image mode {self.mode!r}: use 'L' (grey) or 'RGB'")
        if self.alpha is not None and self.alpha not in ALPHA_BACKGROUNDS:
            raise DataError(f"alpha background {self.alpha!r}: use one of {', '.join(ALPHA_BACKGROUNDS)}")


class Items:
    """N items, each (C, H, W), that may differ in size, each with a name (its file name for photographs).

    Array sources hold their items in memory; photographs are read when asked for (``take``), so a folder of
    large photos costs one batch of memory, not the folder.
    """

    source: str
    names: list[str]
    shapes: list[tuple[int, int, int]]
    named = False  # True when the names are the sources' own (file names), not just indices

    def __len__(self) -> int:
        return len(self.names)

    def take(self, idx: list[int]) -> np.ndarray:
        """Items idx stacked (K, C, H, W); they must share a size."""
        raise NotImplementedError

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    @property
    def uniform(self) -> bool:
        return len(set(self.shapes)) <= 1

    def head(self, n: int) -> Items:
        """The first n items (all when n is 0)."""
        raise NotImplementedError

    def pixels(self, i: int) -> int:
        _, h, w = self.shapes[i]
        return h * w

    def by_size(self, idx: list[int], max_items: int) -> list[list[int]]:
        """idx split into groups of one size (in order of first appearance), each at most max_items long."""
        groups: dict[tuple[int, int, int], list[int]] = {}
        for i in idx:
            groups.setdefault(self.shapes[i], []).append(i)
        step = max(1, max_items)
        return [g[k : k + step] for g in groups.values() for k in range(0, len(g), step)]

    def stacked(self) -> ArrayDataset:
        """All items as one (N, C, H, W) array (for training): they must share a size."""
        if not self.uniform:
            first = self.shapes[0]
            k = next(i for i, s in enumerate(self.shapes) if s != first)
            raise DataError(
                f"{self.names[k]}: image is {self.shapes[k][2]}x{self.shapes[k][1]} but earlier images are "
                f"{first[2]}x{first[1]} (one array needs one size; the edge commands take mixed sizes)"
            )
        return ArrayDataset(self.take(list(range(len(self)))), None, self.source)


class ArrayItems(Items):
    """Items of an array (N, C, H, W), named by their index (zero-padded: 00, 01, ...)."""

    def __init__(self, x: np.ndarray, source: str):
        if np.ndim(x) != 4:
            raise DataError(f"{source}: items must be an array (N, C, H, W), got shape {np.shape(x)}")
        self.x = x
        self.source = source
        width = len(str(max(len(x) - 1, 0)))  # zero-padded, so that file names sort in item order
        self.names = [f"{i:0{width}d}" for i in range(len(x))]
        c, h, w = (int(s) for s in x.shape[1:])
        self.shapes = [(c, h, w)] * len(x)

    @property
    def dtype(self) -> np.dtype:
        return self.x.dtype

    def take(self, idx: list[int]) -> np.ndarray:
        if idx and idx == list(range(idx[0], idx[-1] + 1)):
            return self.x[idx[0] : idx[-1] + 1]  # a view: no copy for consecutive items
        return self.x[idx]

    def head(self, n: int) -> Items:
        return ArrayItems(self.x[:n], self.source) if n else self

    def stacked(self) -> ArrayDataset:
        return ArrayDataset(self.x, None, self.source)


class ImageItems(Items):
    """Image files as items: each file's header is read up front (size, mode: refusals come before any work),
    its pixels when the item is taken."""

    named = True

    def __init__(self, files: list[Path], source: str, options: PhotoOptions):
        self.files = list(files)
        self.source = source
        self.options = options
        self.names = [p.name for p in self.files]
        heads = [_image_header(p) for p in self.files]
        colour = [c for _, c, _, _ in heads]
        mode = options.mode or ("RGB" if any(colour) else "L")
        for p, (_, is_colour, has_alpha, _) in zip(self.files, heads):
            if mode == "L" and is_colour and not options.grey:
                raise DataError(
                    f"{p}: a colour image, but the items are to be grey (a 1-channel bundle): its colour "
                    f"would be lost; pass --grey to convert colour to grey (Python: grey=True)"
                )
            if has_alpha and options.alpha is None:
                raise DataError(
                    f"{p}: has an alpha channel (transparency), which a bundle does not code; pass "
                    f"--flatten-alpha white or --flatten-alpha black to flatten it onto that background "
                    f"(Python: alpha='white')"
                )
        self.mode = mode
        channels = 1 if mode == "L" else 3
        self.shapes = [(channels, h, w) for (w, h), _, _, _ in heads]
        self._sixteen = [s for _, _, _, s in heads]

    def take(self, idx: list[int]) -> np.ndarray:
        if len({self.shapes[i] for i in idx}) > 1:
            raise DataError("items taken together must share a size")
        out = np.empty((len(idx), *self.shapes[idx[0]]) if idx else (0, 1, 0, 0), np.uint8)
        for k, i in enumerate(idx):
            item = _read_image(self.files[i], self.mode, self.options.alpha)
            if item.shape != self.shapes[i]:
                raise DataError(
                    f"{self.files[i]}: changed while being read (its header said {self.shapes[i]})"
                )
            out[k] = item
        return out

    def head(self, n: int) -> Items:
        if not n or n >= len(self):
            return self
        return ImageItems(self.files[:n], self.source, self.options)


def image_items(folder: Path, mode: str | None = None, **options) -> ImageItems:
    """Every image file of a folder (sorted by name) as items of any size."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return ImageItems(files, f"images:{folder}", PhotoOptions(mode, **options))


def _open_image(p: Path):
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        im = Image.open(p)
    w, h = im.size
    if w * h > MAX_IMAGE_PIXELS:
        im.close()
        raise DataError(
            f"{p}: image is {w}x{h} ({w * h:,} pixels), more than the "
            f"{MAX_IMAGE_PIXELS:,}-pixel limit (a decompression bomb?)"
        )
    return im


def _image_errors():
    from PIL import Image, UnidentifiedImageError

    return (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    )


def _image_header(p: Path) -> tuple[tuple[int, int], bool, bool, bool]:
    """((width, height) as shown, i.e. after EXIF orientation; colour?; alpha?; 16-bit?) without decoding."""
    try:
        with _open_image(p) as im:
            w, h = im.size
            if im.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8):
                w, h = h, w
            mode = im.mode
            if mode in ("I", "F"):
                raise DataError(
                    f"{p}: {'32-bit integer' if mode == 'I' else 'floating-point'} pixels are not supported "
                    f"(save it with 8 or 16 bits per channel)"
                )
            alpha = mode in _ALPHA_MODES or "transparency" in im.info
            if mode == "P":
                palette = np.asarray(im.getpalette() or [], np.int64).reshape(-1, 3)
                colour = bool(len(palette)) and bool(np.any(palette != palette[:, :1]))
            else:
                colour = mode not in _GREY_MODES and mode not in ("LA", "La")
            return (w, h), colour, alpha, mode in _SIXTEEN_BIT
    except DataError:
        raise
    except _image_errors() as exc:
        raise DataError(f"{p}: not a readable image ({exc})") from None


def _read_image(p: Path, mode: str, alpha: str | None) -> np.ndarray:
    """One image as (C, H, W) uint8 in mode "L" or "RGB": upright (EXIF), 8-bit, alpha flattened or absent."""
    from PIL import ImageOps

    try:
        with _open_image(p) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in _SIXTEEN_BIT:
                a16 = np.asarray(im, dtype=np.uint16).astype(np.float64)
                arr = np.rint(a16 * (255.0 / 65535.0)).astype(np.uint8)[..., None]
                return _to_mode(arr, mode)
            has_alpha = im.mode in _ALPHA_MODES or "transparency" in im.info
            if has_alpha:
                if (
                    alpha is None
                ):  # the header check refuses these first; a file changed since is refused here
                    raise DataError(f"{p}: has an alpha channel; pass --flatten-alpha white|black")
                rgba = np.asarray(im.convert("RGBA"), dtype=np.float64)
                a = rgba[..., 3:] / 255.0
                flat = rgba[..., :3] * a + ALPHA_BACKGROUNDS[alpha] * (1.0 - a)
                arr = np.rint(flat).astype(np.uint8)
                if im.mode in ("LA", "La"):
                    arr = arr[..., :1]
                return _to_mode(arr, mode)
            if im.mode == "1" or (mode == "L" and im.mode != "L"):  # colour only when the caller allowed it
                im = im.convert("L")
            elif mode == "RGB" and im.mode not in ("L", "RGB"):  # CMYK, YCbCr, palettes...
                im = im.convert("RGB")
            arr = np.asarray(im, dtype=np.uint8)
            return _to_mode(arr[..., None] if arr.ndim == 2 else arr, mode)
    except DataError:
        raise
    except _image_errors() as exc:
        raise DataError(f"{p}: not a readable image ({exc})") from None


def _to_mode(hwc: np.ndarray, mode: str) -> np.ndarray:
    """(H, W, 1|3) uint8 -> (C, H, W) in mode: grey repeated to RGB; RGB to grey with ITU-R 601 weights, as
    Pillow's convert("L") computes them."""
    if mode == "RGB" and hwc.shape[-1] == 1:
        hwc = np.repeat(hwc, 3, axis=-1)
    elif mode == "L" and hwc.shape[-1] == 3:
        w = np.asarray([19595, 38470, 7471], np.int64)  # Pillow's fixed-point 0.299, 0.587, 0.114
        hwc = ((hwc.astype(np.int64) @ w + 0x8000) >> 16).astype(np.uint8)[..., None]
    return np.ascontiguousarray(np.moveaxis(hwc, -1, 0))


DIGITS_MAX_SIDE = 512  # digits:N upscales 8x8 items; larger N would only make big blurry arrays


def load_digits_dataset(split: str = "test", size: int = 8) -> ArrayDataset:
    """scikit-learn's bundled 8x8 digits (0..16 grey levels) as uint8; every 5th item is test.

    size > 8 upscales each item to size x size (Pillow's bicubic filter on the 8x8 uint8 image, clipped to
    0..255 as Pillow does): a second small-image dataset of Fashion-MNIST's shape (digits:28) that needs no
    download, so the one-command recipe can be run offline. The split is the same items at every size.
    """
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
    x, y = x[mask], y[mask]
    if size == 8:
        return ArrayDataset(np.ascontiguousarray(x), y, f"digits:{split}")
    from PIL import Image

    up = np.stack(
        [np.asarray(Image.fromarray(item[0]).resize((size, size), Image.Resampling.BICUBIC)) for item in x]
    )
    return ArrayDataset(np.ascontiguousarray(up[:, None]), y, f"digits:{size}:{split}")


def digits_size(spec: str) -> int | None:
    """N of a "digits:N" spec (8 for plain "digits"), None for any other spec; a bad N is a DataError."""
    if spec == "digits":
        return 8
    if not spec.startswith("digits:"):
        return None
    text = spec.split(":", 1)[1]
    if not text.isdigit() or not 8 <= int(text) <= DIGITS_MAX_SIDE:
        raise DataError(f"{spec!r}: digits:N upscales the 8x8 digits to N x N, N from 8 to {DIGITS_MAX_SIDE}")
    return int(text)


def load(spec: str | Path | None, split: str = "test", mode: str | None = None, **options) -> ArrayDataset:
    """Resolve a data spec to items of one size, stacked (N, C, H, W).

    spec: "fashion-mnist" (the Debian package's folder), "digits" (or "digits:N", upscaled to N x N), a folder
    of IDX files, a folder of images (with train/ and test/ subfolders: those are the splits), one image file,
    or a .npy/.npz file. None means Fashion-MNIST. mode and ``options`` (grey, alpha) apply to image files: see
    ``PhotoOptions``.
    """
    if spec is not None and (n := digits_size(str(spec))) is not None:
        return load_digits_dataset(split, n)
    split_dir = _split_folder(spec, split)
    if split_dir is not None:
        return image_items(split_dir, mode, **options).stacked()
    items = _image_source(spec, mode, options)
    if items is not None:
        return items.stacked()
    if spec is None or str(spec) == "fashion-mnist":
        if not FASHION_MNIST_DIR.is_dir():
            raise DataError(
                f"Fashion-MNIST not found at {FASHION_MNIST_DIR}: install the Debian package "
                "dataset-fashion-mnist, or pass --data digits or --data-dir PATH"
            )
        return load_idx_dir(FASHION_MNIST_DIR, split)
    path = Path(spec)
    if path.is_file():
        if path.suffix in (".npy", ".npz"):
            return load_array_file(path, split)
        if "idx" in path.name:
            arr = read_idx(path)
            return ArrayDataset(_as_items(arr, str(path)), None, f"idx:{path}")
        raise DataError(f"{path}: unknown data file type (expected .npy, .npz or an IDX file)")
    if path.is_dir():
        return load_idx_dir(path, split)
    raise DataError(f"data not found: {path}")


def _split_folder(spec: str | Path | None, split: str) -> Path | None:
    """spec/split when spec is a folder with train/ and test/ subfolders (a folder of images per split)."""
    if spec is None or str(spec) == "fashion-mnist" or digits_size(str(spec)) is not None:
        return None
    path = Path(spec)
    if not (path.is_dir() and (path / "train").is_dir() and (path / "test").is_dir()):
        return None
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}: use 'train' or 'test'")
    return path / split


def has_own_split(spec: str | Path | None) -> bool:
    """Whether spec's train and test splits are different items (IDX train/t10k files, x_train/x_test in a .npz,
    train/ and test/ image subfolders, digits): a benchmark must not measure on the items it trained on."""
    if spec is None or str(spec) == "fashion-mnist" or digits_size(str(spec)) is not None:
        return True
    path = Path(spec)
    if path.is_dir():
        return _split_folder(path, "test") is not None or any("t10k" in p.name for p in path.iterdir())
    if path.suffix == ".npz" and path.is_file():
        with np.load(path, allow_pickle=False) as data:
            keys = set(data.keys())
        return {"x_train", "x_test"} <= keys or {"train_images", "test_images"} <= keys
    return False


def _image_source(spec: str | Path | None, mode: str | None, options: dict) -> ImageItems | None:
    """Image files named by spec (one image file, or a folder without IDX files) as items, else None."""
    if spec is None or str(spec) == "fashion-mnist" or digits_size(str(spec)) is not None:
        return None
    path = Path(spec)
    if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:  # one photograph: one item of its own size
        return ImageItems([path], f"image:{path}", PhotoOptions(mode, **options))
    if path.is_dir() and not any("idx" in p.name and "ubyte" in p.name for p in path.iterdir()):
        return image_items(path, mode, **options)
    return None


def load_items(
    spec: str | Path | None,
    split: str = "test",
    mode: str | None = None,
    grey: bool = False,
    alpha: str | None = None,
) -> Items:
    """Items of any size with their names: photographs are read lazily, arrays are wrapped.

    mode "L" or "RGB" is what the caller's bundle takes: a colour item for a grey mode is an error unless
    grey=True converts it (the colour would be lost without a word); grey items become RGB for an RGB mode.
    alpha: see ``PhotoOptions``.
    """
    split_dir = _split_folder(spec, split)
    images = _image_source(split_dir or spec, mode, {"grey": grey, "alpha": alpha})
    if images is not None:
        return images
    ds = load(spec, split)
    x = ds.x
    if mode is not None and x.ndim == 4 and x.dtype == np.uint8:
        c = x.shape[1]
        if mode == "RGB" and c == 1:
            x = np.repeat(x, 3, axis=1)
        elif mode == "L" and c == 3:
            if not grey:
                raise DataError(
                    f"{ds.source}: colour items, but the items are to be grey (a 1-channel bundle): their "
                    f"colour would be lost; pass --grey to convert colour to grey (Python: grey=True)"
                )
            x = np.stack([_to_mode(np.moveaxis(item, 0, -1), "L") for item in x])
    return ArrayItems(x, ds.source)

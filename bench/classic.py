"""The codecs a user would pick instead: PNG, zstd-19 (plain and with a trained dictionary), JPEG, WebP, AVIF.

Every image is encoded on its own (one item = one file/message, as the
project's payloads are) and decoded again; bytes are the encoded size
including each format's headers, because that is what a user stores or sends.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

# Quality sweeps: dense at the low end, where the project's ladder lives.
JPEG_QUALITIES = (1, 5, 10, 20, 40, 75)
WEBP_QUALITIES = (0, 2, 5, 10, 20, 40, 70, 95)
AVIF_QUALITIES = (0, 25, 50)
AVIF_SPEED = 8  # 0-10; AVIF stays far above the other curves here, so the faster speed costs nothing visible
ZSTD_DICT_BYTES = 16 * 1024
ZSTD_DICT_SAMPLES = 20000


@dataclass(frozen=True)
class Setting:
    codec: str  # PNG | zstd-19 | zstd-19+dict | JPEG | WebP | AVIF
    quality: int | None = None  # None for lossless codecs

    @property
    def label(self) -> str:
        return self.codec if self.quality is None else f"{self.codec} q{self.quality}"


def settings(avif: bool = True) -> list[Setting]:
    out = [Setting("PNG"), Setting("zstd-19"), Setting("zstd-19+dict")]
    out += [Setting("JPEG", q) for q in JPEG_QUALITIES]
    out += [Setting("WebP", q) for q in WEBP_QUALITIES]
    if avif:
        out += [Setting("AVIF", q) for q in AVIF_QUALITIES]
    return out


def train_zstd_dictionary(train_items: np.ndarray) -> bytes:
    """A zstd dictionary trained on raw training items (the device and the cloud would both ship it)."""
    import zstandard as zstd

    samples = [bytes(x.tobytes()) for x in train_items[:ZSTD_DICT_SAMPLES]]
    # Fixed COVER parameters: zstd's parameter search takes minutes and wins < 1 % on these items.
    return zstd.train_dictionary(ZSTD_DICT_BYTES, samples, k=256, d=8).as_bytes()


def _pil_mode(item: np.ndarray) -> tuple[np.ndarray, str]:
    """(C, H, W) uint8 -> (array Pillow takes, mode)."""
    if item.shape[0] == 1:
        return item[0], "L"
    return np.moveaxis(item, 0, -1), "RGB"


def _from_pil(img, shape: tuple[int, ...]) -> np.ndarray:
    mode = "L" if shape[0] == 1 else "RGB"
    a = np.asarray(img.convert(mode), dtype=np.uint8)
    return a[None] if shape[0] == 1 else np.moveaxis(a, -1, 0)


def codec_roundtrip(
    setting: Setting, items: np.ndarray, zstd_dict: bytes | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Encode and decode each item (N, C, H, W) uint8 -> (bytes per item (N,), reconstructions)."""
    from PIL import Image

    sizes = np.empty(len(items), dtype=np.int64)
    recon = np.empty_like(items)
    if setting.codec.startswith("zstd"):
        import zstandard as zstd

        d = zstd.ZstdCompressionDict(zstd_dict) if setting.codec.endswith("dict") else None
        cctx = (
            zstd.ZstdCompressor(level=19, dict_data=d, write_dict_id=False)
            if d
            else zstd.ZstdCompressor(level=19)
        )
        dctx = zstd.ZstdDecompressor(dict_data=d) if d else zstd.ZstdDecompressor()
        for i, x in enumerate(items):
            blob = cctx.compress(x.tobytes())
            sizes[i] = len(blob)
            recon[i] = np.frombuffer(dctx.decompress(blob), dtype=np.uint8).reshape(x.shape)
        return sizes, recon
    fmt, kw = {
        "PNG": ("PNG", {"optimize": True}),
        "JPEG": ("JPEG", {"quality": setting.quality, "optimize": True}),
        "WebP": ("WEBP", {"quality": setting.quality, "method": 6}),
        "AVIF": ("AVIF", {"quality": setting.quality, "speed": AVIF_SPEED}),
    }[setting.codec]
    for i, x in enumerate(items):
        arr, mode = _pil_mode(x)
        buf = io.BytesIO()
        Image.fromarray(arr, mode).save(buf, fmt, **kw)
        blob = buf.getvalue()
        sizes[i] = len(blob)
        recon[i] = _from_pil(Image.open(io.BytesIO(blob)), x.shape)
    return sizes, recon

"""The codec of spatial bundles: items of any height and width, code maps, a factorised or hyper prior.

    encode:  scale ─► pad to the stride (edge) ─► analyse (encoder.onnx: ŷ map, ẑ map) ─► quantise
             ─► table indices (integer hyper-decoder) ─► entropy-code + pack (size header, ANS)
    decode:  unpack (size header, ẑ, indices, ŷ) ─► dequantise ─► synthesise (decoder.onnx) ─► crop ─► unscale

Same public steps as ``Codec`` (the cloud and the benchmarks call them unchanged); what differs is
that an item's shape comes from its payload, and that one batch of payloads must share a size to be
decoded as one array (``decode_each`` takes a mix). The payload format is latent_codec/codemap.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .bundle import Bundle, InputSpec, Manifest
from .codec import Codec, OnnxTransforms, Side, Transforms
from .codemap import MAX_PIXELS, MAX_SIDE, MapPayload
from .decode_cost import int64_mac_seconds
from .errors import DataError, PayloadError


class MapCodec(Codec):
    payload: MapPayload  # type: ignore[assignment]

    def __init__(
        self,
        input: InputSpec,
        code_shape: Sequence[int],
        payload: MapPayload,
        transforms: Transforms,
        bundle_id: str = "",
        manifest: Manifest | None = None,
    ):
        super().__init__(input, code_shape, payload, transforms, bundle_id, manifest)  # type: ignore[arg-type]

    @classmethod
    def from_map_bundle(cls, bundle: Bundle, threads: int = 0) -> MapCodec:
        m = bundle.manifest
        assert isinstance(m.payload, MapPayload)
        enc = bundle.session("encoder", threads) if bundle.encoder_bytes is not None else None
        dec = bundle.session("decoder", threads) if bundle.decoder_bytes is not None else None
        side = ["hyper"] if m.payload.entropy == "hyperprior" else []
        return cls(m.input, m.code_shape, m.payload, OnnxTransforms(enc, dec, side, m.code_shape, str(bundle.path)),
                   m.bundle_id, m)  # fmt: skip

    # ---- shapes -----------------------------------------------------------------------------------------
    @property
    def channels(self) -> int:
        return int(self.input.shape[0])

    def output_shapes(self, payloads: Sequence[bytes]) -> np.ndarray:
        sizes = self.payload.sizes(list(payloads))
        return np.concatenate([np.full((len(sizes), 1), self.channels, np.int64), sizes], axis=1)

    def item_costs(self, payloads: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        sizes = self.payload.sizes(list(payloads))
        out = sizes.prod(axis=1) * self.channels * 4
        symbols = np.asarray([self.payload.symbols_per_item(int(h), int(w)) for h, w in sizes], np.int64)
        return out, symbols.reshape(-1)

    def unpack_costs(self, payloads: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """The entropy decoder's arrays, plus the integer hyper-decoder's int64 maps and its convolutions."""
        nbytes, seconds = super().unpack_costs(payloads)
        hd = self.payload.hyper_decoder
        if hd is None:
            return nbytes, seconds
        sizes = self.payload.sizes(list(payloads))
        hy = -(-sizes // self.payload.stride)  # ŷ map height and width; the hyper maps are upsampled to it
        cells = (-(-hy // 2) * 2).prod(axis=1)
        nh, m = hd.w1.shape[0], hd.w2.shape[0]
        # int64 maps alive at once: ẑ upsampled and padded, the first conv's output and its ReLU, the second's
        # output and the table indices, plus the einsum's strided view (no copy).
        nbytes = nbytes + cells * 8 * (3 * nh + 2 * m)
        macs = cells * 9 * nh * (nh + m)
        return nbytes, seconds + macs * int64_mac_seconds()

    def check_items(self, x: np.ndarray) -> None:
        name = self.bundle_id or "this codec"
        if np.ndim(x) != 4 or int(np.shape(x)[1]) != self.channels:
            got = "x".join(map(str, np.shape(x)[1:]))
            raise DataError(
                f"items are {got} but bundle {name} takes {self.channels}-channel items (C x H x W, any H, W)"
            )
        h, w = (int(v) for v in np.shape(x)[2:])
        if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE) or h * w > MAX_PIXELS:
            raise DataError(
                f"items are {h}x{w}; bundle {name} takes sides of 1..{MAX_SIDE} pixels, at most {MAX_PIXELS:,} in all"
            )
        if self.input.dtype == "uint8" and x.dtype != np.uint8:
            raise DataError(f"items are {x.dtype} but bundle {name} expects uint8 pixels")

    # ---- encode -------------------------------------------------------------------------------------------
    def pad(self, x_unit: np.ndarray) -> np.ndarray:
        """Replicate the last row and column up to a multiple of the stride (the crop undoes it)."""
        s = self.payload.stride
        h, w = x_unit.shape[-2:]
        ph, pw = (-h) % s, (-w) % s
        if not ph and not pw:
            return x_unit
        return np.pad(x_unit, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="edge")

    def analyse(self, x_unit: np.ndarray) -> tuple[np.ndarray, Side]:
        """-> (ŷ map (N, M, h, w) float32, {"hyper": ẑ map} with a hyperprior) of padded items."""
        code, side = self.transforms.analysis(self.pad(x_unit))
        return np.asarray(code, np.float32), side

    def quantise(self, codes: np.ndarray) -> np.ndarray:
        return self.payload.y_symbols(codes)

    def encode(self, x_raw: np.ndarray) -> list[bytes]:
        """(N, C, H, W) raw items of one size -> N payloads (each carries its H and W)."""
        self.check_items(x_raw)
        n, _, h, w = x_raw.shape
        y, side = self.analyse(self.scale(x_raw))
        z = self.payload.z_symbols(side["hyper"]) if self.payload.entropy == "hyperprior" else None
        sizes = np.tile(np.asarray([h, w], np.int64), (n, 1))
        return self.payload.pack(sizes, self.quantise(y), z)

    # ---- decode -------------------------------------------------------------------------------------------
    def symbols(self, payloads: Sequence[bytes]) -> tuple[np.ndarray, Side]:
        """Payloads of one size -> (ŷ symbols (N, M, h, w), {"size": (N, 2)}). PayloadError on any bad one."""
        sizes, y_sym, _ = self.payload.unpack(list(payloads))
        return y_sym, {"size": sizes}

    def dequantise(self, symbols: np.ndarray) -> np.ndarray:
        return self.payload.dequantize(symbols)

    def synthesise(self, codes: np.ndarray, side: Side, chunk: int = 0) -> np.ndarray:
        """decoder.onnx on ŷ maps, cropped to the items' true size and clipped to [0, 1]."""
        sizes = np.asarray(side["size"]).reshape(-1, 2)
        if len(sizes) and np.any(sizes != sizes[0]):
            raise DataError("items of one decoder run must share a size")
        n = len(codes)
        h, w = (int(v) for v in sizes[0]) if n else (0, 0)
        out = np.empty((n, self.channels, h, w), np.float32)
        step = chunk if chunk > 0 else max(n, 1)
        for i in range(0, n, step):
            rec = self.transforms.synthesis(codes[i : i + step], {})
            out[i : i + step] = np.clip(np.asarray(rec, np.float32)[:, :, :h, :w], 0.0, 1.0)
        return out

    def decode_each(self, payloads: Sequence[bytes], unit: bool = False, chunk: int = 0) -> list[np.ndarray]:
        """Payloads of mixed sizes -> one (C, H, W) item each, decoded in groups of one size."""
        payloads = list(payloads)
        shapes = self.output_shapes(payloads)
        out: list[np.ndarray | None] = [None] * len(payloads)
        for key in {tuple(s) for s in shapes.tolist()}:
            idx = [i for i, s in enumerate(shapes.tolist()) if tuple(s) == key]
            items = self.decode([payloads[i] for i in idx], unit, chunk)
            for i, item in zip(idx, items):
                out[i] = item
        return out  # type: ignore[return-value]

    def first_invalid(self, payloads: Sequence[bytes]) -> int | None:
        """As Codec's, for payloads of mixed sizes: each size group is decoded on its own."""
        payloads = list(payloads)
        try:
            shapes = [tuple(s) for s in self.output_shapes(payloads).tolist()]
        except PayloadError:
            return next(i for i, p in enumerate(payloads) if self.problem(p) is not None)
        for key in dict.fromkeys(shapes):
            idx = [i for i, s in enumerate(shapes) if s == key]
            bad = super().first_invalid([payloads[i] for i in idx])
            if bad is not None:
                return idx[bad]
        return None

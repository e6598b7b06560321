"""One bundle's codec: raw items -> item payloads -> raw items, as explicit steps the manifest names.

    encode:  scale ─► analyse (encoder.onnx) ─► quantise ─► entropy-code ─► pack      -> one payload per item
    decode:  unpack ─► entropy-decode ─► dequantise ─► synthesise (decoder.onnx) ─► unscale

Every step is a public method, so each is testable on its own; ``encode`` and ``decode`` only chain
them. The edge, the cloud, export, the benchmarks and the tests all go through this object: there
is no second implementation of the path. ``to_batch`` / ``from_batch`` are the codec's container
(the wire's CodeBatch, also the file format of ``edge.cli encode``); ``to_tensor`` / ``from_tensor``
are the wire form of items themselves (originals sent for evaluation, reconstructions).

A codec needs no server: ``Codec.open("bundles/conv").decode(Codec.open(...).encode(x))`` runs
offline. Transforms other than ONNX graphs (bench/pca.py's PCA) plug in through ``Transforms``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from .bundle import Bundle, InputSpec, Manifest, load_bundle, ort_session
from .decode_cost import (
    ENTROPY_BYTES_PER_SYMBOL,
    ENTROPY_SECONDS_PER_SYMBOL,
    DecodeCosts,
    GraphCost,
    release_arena,
)
from .errors import BundleError, DataError, PayloadError
from .payload import PayloadSpec
from .wire.aecodec.v2 import codec_pb2 as pb

Side = dict[str, np.ndarray]


class Transforms(Protocol):
    """The learned part of a codec: analysis (encoder) and synthesis (decoder) on [0, 1] items."""

    def analysis(self, x_unit: np.ndarray) -> tuple[np.ndarray, Side]: ...

    def synthesis(self, codes: np.ndarray, side: Side) -> np.ndarray: ...


class OnnxTransforms:
    """encoder.onnx / decoder.onnx in ONNX Runtime (either may be absent: a device holds no decoder session)."""

    def __init__(
        self, encoder, decoder, side_names: Sequence[str], code_shape: Sequence[int], where: str = "bundle"
    ):
        self.encoder, self.decoder = encoder, decoder  # onnxruntime.InferenceSession or None
        self._side_names = list(side_names)
        self._code_shape = list(code_shape)
        self._where = where

    @classmethod
    def from_bundle(cls, bundle: Bundle, threads: int = 0) -> OnnxTransforms:
        m = bundle.manifest
        enc = bundle.session("encoder", threads) if bundle.encoder_bytes is not None else None
        dec = bundle.session("decoder", threads) if bundle.decoder_bytes is not None else None
        side = m.payload.side if isinstance(m.payload, PayloadSpec) else []
        return cls(enc, dec, [f.name for f in side], m.code_shape, str(bundle.path))

    @classmethod
    def from_graphs(
        cls,
        encoder: bytes | None,
        decoder: bytes | None,
        side_names: Sequence[str],
        code_shape: Sequence[int],
        threads: int = 0,
    ) -> OnnxTransforms:
        """From serialised graphs not (yet) in a bundle: what export fits the quantiser with."""
        enc = ort_session(encoder, threads, "encoder.onnx") if encoder is not None else None
        dec = ort_session(decoder, threads, "decoder.onnx") if decoder is not None else None
        return cls(enc, dec, side_names, code_shape)

    def analysis(self, x_unit: np.ndarray) -> tuple[np.ndarray, Side]:
        if self.encoder is None:
            raise BundleError(f"{self._where}: codec was opened without its encoder")
        outputs = self.encoder.run(
            ["code", *self._side_names], {"x": np.ascontiguousarray(x_unit, np.float32)}
        )
        return outputs[0], dict(zip(self._side_names, outputs[1:]))

    def synthesis(self, codes: np.ndarray, side: Side) -> np.ndarray:
        if self.decoder is None:
            raise BundleError(f"{self._where}: codec was opened without its decoder")
        shaped = codes if codes.ndim > 2 else codes.reshape(len(codes), *self._code_shape)  # maps come shaped
        feeds = {"code": np.ascontiguousarray(shaped, np.float32)}
        for name, value in side.items():
            feeds[name] = np.ascontiguousarray(value, dtype=np.int64)
        return self.decoder.run(["x_hat"], feeds)[0]

    def release(self) -> None:
        """Give back the memory ONNX Runtime keeps after a large decoder run."""
        if self.decoder is not None:
            release_arena(self.decoder)


class FunctionTransforms:
    """Transforms from two plain functions (e.g. PCA's projection and reconstruction), no side fields."""

    def __init__(
        self, analysis: Callable[[np.ndarray], np.ndarray], synthesis: Callable[[np.ndarray], np.ndarray]
    ):
        self._analysis, self._synthesis = analysis, synthesis

    def analysis(self, x_unit: np.ndarray) -> tuple[np.ndarray, Side]:
        return self._analysis(x_unit), {}

    def synthesis(self, codes: np.ndarray, side: Side) -> np.ndarray:
        return self._synthesis(codes)


class Codec:
    graph_cost: GraphCost | None = (
        None  # the decoder graph's measured cost (decode_cost.measure_graph), if known
    )

    def __init__(
        self,
        input: InputSpec,
        code_shape: Sequence[int],
        payload: PayloadSpec,
        transforms: Transforms,
        bundle_id: str = "",
        manifest: Manifest | None = None,
    ):
        self.input = input
        self.code_shape = [int(s) for s in code_shape]
        self.payload = payload
        self.transforms = transforms
        self.bundle_id = bundle_id
        self.manifest = manifest  # set when built from a bundle

    @classmethod
    def from_bundle(cls, bundle: Bundle, threads: int = 0) -> Codec:
        """A codec over a loaded bundle's graphs (the sides it was loaded with), ``threads`` per ORT session."""
        m = bundle.manifest
        if m.payload.format.startswith("map+"):  # spatial code maps: items of any size (map_codec.py)
            from .map_codec import MapCodec

            return MapCodec.from_map_bundle(bundle, threads)
        assert isinstance(m.payload, PayloadSpec)
        return cls(
            m.input, m.code_shape, m.payload, OnnxTransforms.from_bundle(bundle, threads), m.bundle_id, m
        )

    @classmethod
    def open(
        cls, path: str | Path, need: tuple[str, ...] = ("encoder", "decoder"), threads: int = 0
    ) -> Codec:
        """Load a bundle directory (hash-verified) and build its codec; ``need`` names the graphs to run."""
        return cls.from_bundle(load_bundle(path, need=need), threads)

    # ---- facts from the manifest ------------------------------------------------------------------------
    @property
    def format(self) -> str:
        return self.payload.format

    @property
    def item_bytes(self) -> int | None:
        """Payload bytes per item for fixed-size formats; None when entropy-coded (variable)."""
        return self.payload.item_bytes

    def output_shapes(self, payloads: Sequence[bytes]) -> np.ndarray:
        """(N, 3) item shape (C, H, W) each payload decodes to, read without decoding (budgets are checked on it)."""
        return np.tile(np.asarray(self.input.shape, np.int64), (len(payloads), 1))

    def item_costs(self, payloads: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Per item: float32 bytes it decodes to and code symbols to entropy-decode, read without decoding."""
        out = self.output_shapes(payloads).prod(axis=1) * 4
        return out, np.full(len(payloads), self.payload.code_dims, np.int64)

    def unpack_costs(self, payloads: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """Per item: bytes and CPU seconds of unpacking and entropy-decoding it (before the decoder graph)."""
        symbols = self.item_costs(payloads)[1]
        return symbols * ENTROPY_BYTES_PER_SYMBOL, symbols * ENTROPY_SECONDS_PER_SYMBOL

    def decode_costs(self, payloads: Sequence[bytes]) -> DecodeCosts:
        """What decoding these payloads holds and takes, per item, read from their headers without decoding
        (latent_codec/decode_cost.py). Without a measured ``graph_cost`` the graph's part is not counted."""
        shapes = self.output_shapes(payloads)
        out_bytes, symbols = self.item_costs(payloads)
        unpack_bytes, seconds = self.unpack_costs(payloads)
        pixels = shapes[:, 1:].prod(axis=1) if len(shapes) else np.zeros(0, np.int64)
        g = self.graph_cost
        graph = g.bytes(pixels) if g is not None else np.zeros(len(pixels), np.int64)
        if g is not None:
            seconds = seconds + g.seconds(pixels)
        return DecodeCosts(out_bytes, graph, unpack_bytes, symbols, seconds, g.run_bytes if g else 0)

    def release_memory(self) -> None:
        """After a large decode: give back what the decoder's runtime keeps (a no-op for other transforms)."""
        release = getattr(self.transforms, "release", None)
        if release is not None:
            release()

    # ---- encode: the steps --------------------------------------------------------------------------------
    def check_items(self, x: np.ndarray) -> None:
        """Refuse items that do not fit the bundle, naming both shapes."""
        want = tuple(self.input.shape)
        got = tuple(int(s) for s in np.shape(x)[1:])
        name = self.bundle_id or "this codec"
        if np.ndim(x) != 4 or got != want:
            raise DataError(
                f"items are {'x'.join(map(str, got))} (C x H x W) but bundle {name} expects {'x'.join(map(str, want))}"
            )
        if self.input.dtype == "uint8" and x.dtype != np.uint8:
            raise DataError(f"items are {x.dtype} but bundle {name} expects uint8 pixels")

    def scale(self, x_raw: np.ndarray) -> np.ndarray:
        """Step 1: raw items -> [0, 1] model input (manifest input.scale)."""
        return self.input.to_unit(x_raw)

    def analyse(self, x_unit: np.ndarray) -> tuple[np.ndarray, Side]:
        """Step 2: the analysis transform; -> (codes (N, D) float32, side fields)."""
        code, side = self.transforms.analysis(x_unit)
        return np.asarray(code, np.float32).reshape(len(x_unit), -1), side

    def quantise(self, codes: np.ndarray) -> np.ndarray:
        """Step 3: codes -> integer (or cast float) symbols (manifest payload.quantization)."""
        return self.payload.quantizer.quantize(codes)

    def entropy_encode(self, symbols: np.ndarray) -> list[bytes] | None:
        """Step 4: symbols -> one ANS stream per item (manifest payload.entropy); None for fixed-width formats."""
        prior = self.payload.prior
        return None if prior is None else prior.encode(symbols)

    def pack(self, symbols: np.ndarray, side: Side, coded: list[bytes] | None) -> list[bytes]:
        """Step 5: lay out each item's payload (manifest payload: fixed part, side fields, entropy part)."""
        return self.payload.pack(symbols, side, coded)

    def encode(self, x_raw: np.ndarray) -> list[bytes]:
        """(N, C, H, W) raw items -> N payloads."""
        self.check_items(x_raw)
        codes, side = self.analyse(self.scale(x_raw))
        symbols = self.quantise(codes)
        return self.pack(symbols, side, self.entropy_encode(symbols))

    # ---- decode: the steps --------------------------------------------------------------------------------
    def unpack(self, payloads: Sequence[bytes]) -> tuple[np.ndarray | None, Side, list[bytes] | None]:
        """Inverse of ``pack``: (fixed-width symbols or None, side fields, entropy-coded bytes or None)."""
        parts = self.payload.unpack(list(payloads))
        return parts.symbols, parts.side, parts.coded

    def entropy_decode(self, coded: list[bytes]) -> np.ndarray:
        """Inverse of ``entropy_encode``; PayloadError names the first corrupt item."""
        prior = self.payload.prior
        if prior is None:
            raise PayloadError(f"format {self.format} is not entropy-coded")
        return prior.decode(coded)

    def symbols(self, payloads: Sequence[bytes]) -> tuple[np.ndarray, Side]:
        """Payloads -> (symbols, side): everything but the transforms. Raises PayloadError on any bad payload."""
        fixed, side, coded = self.unpack(payloads)
        return (self.entropy_decode(coded) if coded is not None else fixed), side  # type: ignore[return-value]

    def dequantise(self, symbols: np.ndarray) -> np.ndarray:
        """Inverse of ``quantise``: symbols -> codes at the bin centres."""
        return self.payload.quantizer.dequantize(symbols)

    def synthesise(self, codes: np.ndarray, side: Side, chunk: int = 0) -> np.ndarray:
        """The synthesis transform, clipped to [0, 1]: (N, *input.shape) float32.

        chunk > 0 runs the decoder graph on at most that many items at a time, so its intermediate
        activations stay bounded however large the batch (a server's memory budget relies on it).
        """
        n = len(codes)
        if chunk <= 0 or n <= chunk:
            out = self.transforms.synthesis(codes, side)
            return np.clip(np.asarray(out, np.float32).reshape(n, *self.input.shape), 0.0, 1.0)
        x_unit = np.empty((n, *self.input.shape), np.float32)
        for i in range(0, n, chunk):
            part = {k: v[i : i + chunk] for k, v in side.items()}
            x_unit[i : i + chunk] = self.synthesise(codes[i : i + chunk], part)
        return x_unit

    def unscale(self, x_unit: np.ndarray) -> np.ndarray:
        """Inverse of ``scale``: [0, 1] -> raw items (uint8 rounded)."""
        return self.input.from_unit(x_unit)

    def decode(self, payloads: Sequence[bytes], unit: bool = False, chunk: int = 0) -> np.ndarray:
        """N payloads -> N items: raw dtype, or [0, 1] float32 with unit=True (chunk: see ``synthesise``)."""
        symbols, side = self.symbols(payloads)
        x_unit = self.synthesise(self.dequantise(symbols), side, chunk)
        return x_unit if unit else self.unscale(x_unit)

    def decode_each(self, payloads: Sequence[bytes], unit: bool = False, chunk: int = 0) -> list[np.ndarray]:
        """Payloads that may decode to items of different sizes -> one (C, H, W) item each.

        Items of a fixed-size codec all share the manifest's shape, so this is ``decode``; codecs of items of
        any size group the payloads by the size their headers say. Callers need not know which they hold.
        """
        return list(self.decode(payloads, unit, chunk))

    def first_invalid(self, payloads: Sequence[bytes]) -> int | None:
        """Index of the first payload that does not decode under this codec's format, or None if all do."""
        try:
            self.symbols(payloads)
            return None
        except Exception:  # PayloadError, or the entropy coder's own error on garbage: find the culprit
            for i, p in enumerate(payloads):
                if self.problem(p) is not None:
                    return i
            return 0

    def problem(self, payload: bytes) -> str | None:
        """Why one payload does not decode (a sentence for the caller), or None when it does."""
        try:
            self.symbols([payload])
        except PayloadError as exc:
            return str(exc).removeprefix("item 0: ")
        except Exception as exc:
            return f"payload does not decode ({type(exc).__name__})"
        return None

    # ---- quality ------------------------------------------------------------------------------------------
    def squared_error(self, originals_raw: np.ndarray, recon: np.ndarray, unit: bool = False) -> np.ndarray:
        """Per-item MSE on the [0, 1] scale between raw originals and reconstructions (raw, or unit=True)."""
        a = self.scale(originals_raw).reshape(len(originals_raw), -1).astype(np.float64)
        b = (recon if unit else self.scale(recon)).reshape(len(recon), -1).astype(np.float64)
        return ((a - b) ** 2).mean(axis=1)

    # ---- the container: a batch of payloads as one CodeBatch (wire and files) ------------------------------
    def to_batch(self, payloads: Sequence[bytes]) -> pb.CodeBatch:
        """The wire form of this codec's payloads (sizes only for variable-size formats)."""
        sizes = [] if self.item_bytes is not None else [len(p) for p in payloads]
        return pb.CodeBatch(
            bundle_id=self.bundle_id,
            count=len(payloads),
            format=self.format,
            data=b"".join(payloads),
            sizes=sizes,
        )

    def from_batch(self, batch: pb.CodeBatch) -> list[bytes]:
        """A CodeBatch's payloads, its fields checked against this codec (errors name the field)."""
        if batch.format != self.format:
            raise PayloadError(
                f"codes.format is {batch.format!r} but bundle {self.bundle_id} uses {self.format!r}"
            )
        return split_payloads(batch.data, list(batch.sizes), batch.count, self.item_bytes)


def split_payloads(data: bytes, sizes: list[int], count: int, item_bytes: int | None) -> list[bytes]:
    """Concatenated payloads -> one per item, validating lengths against the format."""
    if item_bytes is not None:
        if sizes:
            raise PayloadError("codes.sizes must be empty for a fixed-size format")
        if len(data) != count * item_bytes:
            raise PayloadError(
                f"codes.data is {len(data)} bytes; {count} items of {item_bytes} bytes need {count * item_bytes}"
            )
        return [data[i * item_bytes : (i + 1) * item_bytes] for i in range(count)]
    if len(sizes) != count:
        raise PayloadError(f"codes.sizes has {len(sizes)} entries for {count} items")
    if sum(sizes) != len(data):
        raise PayloadError(f"codes.sizes add up to {sum(sizes)} bytes but codes.data is {len(data)} bytes")
    out, pos = [], 0
    for s in sizes:
        out.append(data[pos : pos + s])
        pos += s
    return out


# ---- items on the wire: numpy arrays <-> Tensor (packed little-endian bytes, dtype, shape) --------------
_TO_NP: dict[int, np.dtype] = {
    pb.DTYPE_UINT8: np.dtype("u1"),
    pb.DTYPE_UINT16: np.dtype("<u2"),
    pb.DTYPE_FLOAT16: np.dtype("<f2"),
    pb.DTYPE_FLOAT32: np.dtype("<f4"),
}
_NAMES = {
    "uint8": pb.DTYPE_UINT8,
    "uint16": pb.DTYPE_UINT16,
    "float16": pb.DTYPE_FLOAT16,
    "float32": pb.DTYPE_FLOAT32,
}


MAX_TENSOR_DIMS = 32  # numpy allows 64; no item here needs more than 5


def to_tensor(arr: np.ndarray) -> pb.Tensor:
    arr = np.asarray(arr)
    name = arr.dtype.name
    if name not in _NAMES:
        raise PayloadError(
            f"dtype {arr.dtype} cannot travel on the wire (use uint8, uint16, float16, float32)"
        )
    le = arr.astype(_TO_NP[_NAMES[name]], copy=False)
    return pb.Tensor(dtype=_NAMES[name], shape=list(arr.shape), data=np.ascontiguousarray(le).tobytes())


def from_tensor(t: pb.Tensor, field: str = "tensor") -> np.ndarray:
    """Validate and convert; errors name the field so a gRPC caller knows what to fix."""
    if t.dtype not in _TO_NP:
        raise PayloadError(f"{field}.dtype is unset or unknown ({t.dtype})")
    if any(s < 0 for s in t.shape):
        raise PayloadError(f"{field}.shape has a negative dimension {list(t.shape)}")
    if len(t.shape) > MAX_TENSOR_DIMS:
        raise PayloadError(f"{field}.shape has {len(t.shape)} dimensions; the limit is {MAX_TENSOR_DIMS}")
    dt = _TO_NP[t.dtype]
    n = math.prod(int(s) for s in t.shape)  # Python ints: a hostile shape cannot overflow the check
    if len(t.data) != n * dt.itemsize:
        raise PayloadError(
            f"{field}.data is {len(t.data)} bytes but shape {list(t.shape)} of {dt.name} needs {n * dt.itemsize}"
        )
    return np.frombuffer(t.data, dtype=dt).reshape(tuple(t.shape)).astype(dt.newbyteorder("="), copy=False)

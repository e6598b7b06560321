"""Flat codes: a fixed-length code vector per item (the dense, conv, linear, vq... models), and its codec.

One item's payload:

    [ fixed part: bit-packed, MSB first ]      [ entropy part ]
      code symbols at quantiser bits            ANS bytes of the code symbols
      (only when not entropy-coded)             (only when entropy-coded)
      + side-information fields at their bits

Everything a decoder needs beyond the code itself (max-unpooling switches) is *inside* the payload, so
compression ratios count it. Formats: ``affine<b>``, ``affine<b>+ans``, ``float16``, ``float32``.
The manifest's payload section has no ``kind`` field: flat codes were the first family, and their
sealed hashes predate it (latent_codec/registry.py's default kind).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import numpy as np

from .. import ans
from ..bit_packing import pack_bits, unpack_bits
from ..bundle import Bundle
from ..codec import Codec, Side
from ..errors import PayloadError
from ..factorized_prior import FactorizedPrior
from ..quantisation import Quantiser
from ..registry import register_family
from ..transforms import OnnxTransforms


@dataclass
class SideField:
    """Extra decoder input sent with the code, e.g. max-unpooling switches."""

    name: str
    shape: list[int]  # per item
    bits: int  # per value, values 0..2**bits-1

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "bits": self.bits}

    @classmethod
    def from_dict(cls, d: dict) -> SideField:
        f = cls(str(d["name"]), [int(s) for s in d["shape"]], int(d["bits"]))
        if not 1 <= f.bits <= 16:
            raise ValueError(f"side field {f.name}: bits must be 1..16")
        return f


@dataclass
class FlatPayload:
    """The manifest's payload section for flat codes: quantiser, optional entropy tables, side fields."""

    kind: ClassVar[str] = "flat"
    quantiser: Quantiser
    code_dims: int
    prior: FactorizedPrior | None = None
    side: list[SideField] = field(default_factory=list)

    @property
    def format(self) -> str:
        name = self.quantiser.name
        if self.prior is None:
            return name
        return f"{name}+{'ans' if self.prior.coder == ans.ANS_CODER else 'range'}"

    @property
    def fixed_bits(self) -> int:
        bits = sum(f.numel * f.bits for f in self.side)
        if self.prior is None:
            bits += self.code_dims * self.quantiser.symbol_bits
        return bits

    @property
    def fixed_bytes(self) -> int:
        return (self.fixed_bits + 7) // 8

    @property
    def item_bytes(self) -> int | None:
        """Bytes per item for fixed-size formats; None when entropy-coded (variable)."""
        return None if self.prior is not None else self.fixed_bytes

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "code_dims": self.code_dims,
            "quantization": self.quantiser.to_dict(),
            "entropy": self.prior.to_dict() if self.prior is not None else None,
            "side": [f.to_dict() for f in self.side],
            "item_bytes": self.item_bytes,
        }

    @classmethod
    def from_dict(cls, d: dict) -> FlatPayload:
        q = Quantiser.from_dict(d["quantization"])
        prior = FactorizedPrior.from_dict(d["entropy"]) if d.get("entropy") else None
        spec = cls(q, int(d["code_dims"]), prior, [SideField.from_dict(f) for f in d.get("side", [])])
        if q.kind == "affine" and len(q.lo) != spec.code_dims:
            raise ValueError(f"quantiser has {len(q.lo)} dimensions, code has {spec.code_dims}")
        if prior is not None:
            if q.kind != "affine":
                raise ValueError("entropy coding needs affine quantisation")
            if prior.dims != spec.code_dims or prior.levels != q.levels:
                raise ValueError(
                    f"entropy tables are {prior.dims}x{prior.levels}, need {spec.code_dims}x{q.levels}"
                )
        if d.get("format") not in (None, spec.format):
            raise ValueError(f"payload format says {d.get('format')!r} but its fields make {spec.format!r}")
        return spec

    # ---- layout: the third step ----------------------------------------------------------------------
    def _symbol_ints(self, symbols: np.ndarray) -> np.ndarray:
        if self.quantiser.kind == "float16":
            return symbols.astype(np.float16).view(np.uint16).astype(np.uint32)
        if self.quantiser.kind == "float32":
            return symbols.astype(np.float32).view(np.uint32)
        return symbols.astype(np.uint32)

    def pack(
        self,
        symbols: np.ndarray,
        side: dict[str, np.ndarray] | None = None,
        coded: list[bytes] | None = None,
    ) -> list[bytes]:
        """Lay out N item payloads from the earlier steps' output.

        symbols: (N, code_dims) from ``Quantiser.quantise``; coded: ``FactorizedPrior.encode(symbols)``,
        given exactly when the format is entropy-coded (the symbols then travel only in it).
        """
        s = np.asarray(symbols).reshape(len(symbols), -1)
        n = len(s)
        if s.shape[1] != self.code_dims:
            raise PayloadError(f"code has {s.shape[1]} dimensions, manifest says {self.code_dims}")
        if (coded is None) != (self.prior is None):
            raise PayloadError(
                f"format {self.format}: entropy-coded bytes must be given exactly when entropy-coded"
            )
        groups: list[tuple[np.ndarray, int]] = []
        if self.prior is None:
            groups.append((self._symbol_ints(s), self.quantiser.symbol_bits))
        side = side or {}
        for f in self.side:
            if f.name not in side:
                raise PayloadError(f"missing side field {f.name!r}")
            v = np.asarray(side[f.name]).reshape(n, -1)
            if v.shape[1] != f.numel:
                raise PayloadError(f"side field {f.name}: {v.shape[1]} values per item, expected {f.numel}")
            if v.size and (int(v.min()) < 0 or int(v.max()) >= (1 << f.bits)):
                raise PayloadError(f"side field {f.name}: values outside 0..{(1 << f.bits) - 1}")
            groups.append((v.astype(np.uint32), f.bits))
        fixed = pack_bits(groups, n)
        if coded is None:
            return [bytes(row) for row in fixed]
        if len(coded) != n:
            raise PayloadError(f"{len(coded)} entropy-coded streams for {n} items")
        return [bytes(row) + c for row, c in zip(fixed, coded)]

    def unpack(self, payloads: list[bytes]) -> Unpacked:
        """N item payloads -> their parts: fixed-width symbols (or None), side fields, entropy-coded bytes (or None).

        Checks each payload's size against the format; the entropy-coded part is checked when decoded.
        """
        n = len(payloads)
        fb = self.fixed_bytes
        for i, p in enumerate(payloads):
            if self.prior is None and len(p) != fb:
                raise PayloadError(f"item {i}: payload is {len(p)} bytes, format {self.format} needs {fb}")
            if self.prior is not None and len(p) < fb:
                raise PayloadError(
                    f"item {i}: payload is {len(p)} bytes, shorter than its {fb}-byte fixed part"
                )
        fixed = np.frombuffer(b"".join(bytes(p[:fb]) for p in payloads), dtype=np.uint8).reshape(n, fb)
        widths: list[tuple[int, int]] = []
        if self.prior is None:
            widths.append((self.code_dims, self.quantiser.symbol_bits))
        widths += [(f.numel, f.bits) for f in self.side]
        values = unpack_bits(fixed, widths)
        side_vals = values[1:] if self.prior is None else values
        side = {f.name: v.reshape(n, *f.shape) for f, v in zip(self.side, side_vals)}
        if self.prior is not None:
            return Unpacked(None, side, [bytes(p[fb:]) for p in payloads])
        ints = values[0]
        symbols: np.ndarray
        if self.quantiser.kind == "float16":
            symbols = ints.astype(np.uint16).view(np.float16)
        elif self.quantiser.kind == "float32":
            symbols = ints.astype(np.uint32).view(np.float32)
        else:
            symbols = ints.astype(np.uint16)
            if symbols.size and int(symbols.max()) >= self.quantiser.levels:
                raise PayloadError(f"symbol out of range for {self.quantiser.bits}-bit codes")
        return Unpacked(symbols, side, None)


class Unpacked(NamedTuple):
    """One batch of payloads taken apart (``FlatPayload.unpack``)."""

    symbols: np.ndarray | None  # (N, code_dims), fixed-width formats
    side: dict[str, np.ndarray]  # name -> (N, *shape)
    coded: list[bytes] | None  # per item, entropy-coded formats


@register_family("flat")
class FlatCodec(Codec):
    """scale ─► encoder.onnx ─► quantise ─► (ANS under per-dimension tables) ─► pack, and back."""

    payload_type = FlatPayload
    payload: FlatPayload

    @classmethod
    def build(cls, bundle: Bundle, threads: int = 0) -> FlatCodec:
        m = bundle.manifest
        side = [f.name for f in m.payload.side]
        transforms = OnnxTransforms.from_graphs(
            bundle.encoder_bytes, bundle.decoder_bytes, side, m.code_shape, threads, str(bundle.path)
        )
        return cls(m.input, m.code_shape, m.payload, transforms, m.bundle_id, m)

    # ---- encode -------------------------------------------------------------------------------------------
    def analyse(self, x_unit: np.ndarray) -> tuple[np.ndarray, Side]:
        """The analysis transform; -> (codes (N, D) float32, side fields)."""
        code, side = self.transforms.analysis(x_unit)
        return np.asarray(code, np.float32).reshape(len(x_unit), -1), side

    def quantise(self, codes: np.ndarray) -> np.ndarray:
        """Codes -> integer (or cast float) symbols (manifest payload.quantization)."""
        return self.payload.quantiser.quantise(codes)

    def entropy_encode(self, symbols: np.ndarray) -> list[bytes] | None:
        """Symbols -> one ANS stream per item (manifest payload.entropy); None for fixed-width formats."""
        prior = self.payload.prior
        return None if prior is None else prior.encode(symbols)

    def pack(self, symbols: np.ndarray, side: Side, coded: list[bytes] | None) -> list[bytes]:
        """Lay out each item's payload (manifest payload: fixed part, side fields, entropy part)."""
        return self.payload.pack(symbols, side, coded)

    def encode(self, x_raw: np.ndarray) -> list[bytes]:
        self.check_items(x_raw)
        codes, side = self.analyse(self.scale(x_raw))
        symbols = self.quantise(codes)
        return self.pack(symbols, side, self.entropy_encode(symbols))

    # ---- decode -------------------------------------------------------------------------------------------
    def unpack(self, payloads: list[bytes]) -> Unpacked:
        """Inverse of ``pack``: (fixed-width symbols or None, side fields, entropy-coded bytes or None)."""
        return self.payload.unpack(list(payloads))

    def entropy_decode(self, coded: list[bytes]) -> np.ndarray:
        """Inverse of ``entropy_encode``; PayloadError names the first corrupt item."""
        if self.payload.prior is None:
            raise PayloadError(f"format {self.format} is not entropy-coded")
        return self.payload.prior.decode(coded)

    def symbols(self, payloads) -> tuple[np.ndarray, Side]:
        parts = self.unpack(list(payloads))
        symbols = self.entropy_decode(parts.coded) if parts.coded is not None else parts.symbols
        assert symbols is not None
        return symbols, parts.side

    def dequantise(self, symbols: np.ndarray, side: Side | None = None) -> np.ndarray:
        return self.payload.quantiser.dequantise(symbols)

    def ideal_bits(self, payloads) -> np.ndarray | None:
        prior = self.payload.prior
        return None if prior is None else prior.bits(self.symbols(payloads)[0])

    def synthesise(self, codes: np.ndarray, side: Side, chunk: int = 0) -> np.ndarray:
        n = len(codes)
        if chunk <= 0 or n <= chunk:
            out = self.transforms.synthesis(codes, side)
            return np.clip(np.asarray(out, np.float32).reshape(n, *self.input.shape), 0.0, 1.0)
        x_unit = np.empty((n, *self.input.shape), np.float32)
        for i in range(0, n, chunk):
            part = {k: v[i : i + chunk] for k, v in side.items()}
            x_unit[i : i + chunk] = self.synthesise(codes[i : i + chunk], part)
        return x_unit

"""The manifest's payload section and its three steps: quantise, entropy-code, lay out.

    codes (N, D) float ──quantise──► symbols (N, D) ──entropy-code──► ANS bytes ─┐
                                        │ (fixed-width formats)                ├─lay out──► one payload per item
                                        └──────────────────────────────────────┤
    side fields (e.g. max-unpooling switches) ─────────────────────────────────┘

- ``Quantizer``: ``affine`` per-dimension uniform quantisation to ``bits`` (2..16) between
  ``lo[d]`` and ``hi[d]`` fitted on training codes (symbols 0..2^bits-1), or ``float16`` /
  ``float32``: the code itself, cast.
- ``FactorizedPrior``: one discrete distribution per code dimension, stored as *integer*
  frequency tables summing to 2**precision, coded with constriction's ANS coder. Both sides build
  the coder's model from those integers alone, so a payload encoded on one machine decodes
  bit-exactly on another. constriction emits 32-bit words; the top word of an ANS stream is usually
  small, so up to three trailing zero bytes are dropped and restored (zero padding) on decode.
- ``PayloadSpec``: the layout of one item's payload:

      [ fixed part: bit-packed, MSB first ]      [ entropy part ]
        code symbols at quantiser bits            ANS bytes of the code symbols
        (only when not entropy-coded)             (only when entropy-coded)
        + side-information fields at their bits

  Everything a decoder needs beyond the code itself (switches) is *inside* the payload, so
  compression ratios count it.

``latent_codec.codec.Codec`` runs the steps in order; each is usable and testable on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .errors import PayloadError

CODER_NAME = "constriction-ans32"


# ==== quantisation ====================================================================================
@dataclass
class Quantizer:
    kind: str  # "affine" | "float16" | "float32"
    bits: int = 0
    lo: list[float] = field(default_factory=list)
    hi: list[float] = field(default_factory=list)

    # ---- construction -------------------------------------------------
    @classmethod
    def fit_affine(cls, codes: np.ndarray, bits: int, clip_quantile: float = 0.0) -> Quantizer:
        """Fit per-dimension [lo, hi] on training codes (N, D).

        clip_quantile > 0 ignores that fraction of outliers on each side:
        a few extreme training codes should not waste levels for everyone.
        """
        if not 2 <= bits <= 16:
            raise ValueError(f"affine quantisation needs 2..16 bits, got {bits}")
        z = np.asarray(codes, dtype=np.float64).reshape(len(codes), -1)
        if clip_quantile > 0:
            lo = np.quantile(z, clip_quantile, axis=0)
            hi = np.quantile(z, 1 - clip_quantile, axis=0)
        else:
            lo, hi = z.min(axis=0), z.max(axis=0)
        hi = np.where(hi - lo < 1e-6, lo + 1e-6, hi)  # constant dimension: any 1 level works
        return cls("affine", bits, [float(v) for v in lo], [float(v) for v in hi])

    @classmethod
    def from_dict(cls, d: dict) -> Quantizer:
        kind = d.get("kind")
        if kind == "affine":
            q = cls("affine", int(d["bits"]), [float(v) for v in d["lo"]], [float(v) for v in d["hi"]])
            if not 2 <= q.bits <= 16 or len(q.lo) != len(q.hi) or not q.lo:
                raise ValueError("affine quantiser needs 2..16 bits and equal, non-empty lo/hi")
            return q
        if kind in ("float16", "float32"):
            return cls(kind)
        raise ValueError(f"unknown quantisation kind {kind!r}")

    def to_dict(self) -> dict:
        if self.kind == "affine":
            return {"kind": "affine", "bits": self.bits, "lo": self.lo, "hi": self.hi}
        return {"kind": self.kind}

    # ---- properties -------------------------------------------------------
    @property
    def levels(self) -> int:
        return 1 << self.bits if self.kind == "affine" else 0

    @property
    def symbol_bits(self) -> int:
        """Bits per code dimension in a fixed-width payload."""
        return {"affine": self.bits, "float16": 16, "float32": 32}[self.kind]

    @property
    def name(self) -> str:
        return f"affine{self.bits}" if self.kind == "affine" else self.kind

    # ---- the mapping ------------------------------------------------------
    def quantize(self, codes: np.ndarray) -> np.ndarray:
        """(N, D) float codes -> (N, D) symbols: uint16 for affine, the float dtype otherwise."""
        z = np.asarray(codes, dtype=np.float32).reshape(len(codes), -1)
        if self.kind == "float16":
            return z.astype(np.float16)
        if self.kind == "float32":
            return z
        if z.shape[1] != len(self.lo):
            raise PayloadError(f"code has {z.shape[1]} dimensions, quantiser was fitted for {len(self.lo)}")
        lo = np.asarray(self.lo, np.float32)
        step = (np.asarray(self.hi, np.float32) - lo) / np.float32(self.levels - 1)
        s = np.rint((z - lo) / step)
        return np.clip(s, 0, self.levels - 1).astype(np.uint16)

    def dequantize(self, symbols: np.ndarray) -> np.ndarray:
        """(N, D) symbols -> (N, D) float32 codes (bin centres for affine)."""
        if self.kind in ("float16", "float32"):
            return np.asarray(symbols).astype(np.float32)
        s = np.asarray(symbols)
        if s.size and int(s.max()) >= self.levels:
            raise PayloadError(f"symbol {int(s.max())} out of range for {self.bits}-bit codes")
        lo = np.asarray(self.lo, np.float32)
        step = (np.asarray(self.hi, np.float32) - lo) / np.float32(self.levels - 1)
        return (lo + s.astype(np.float32) * step).astype(np.float32)


# ==== entropy coding ===================================================================================


def _import_constriction():
    import constriction

    return constriction


@dataclass
class FactorizedPrior:
    """Per-dimension integer frequency tables over symbols 0..levels-1."""

    tables: np.ndarray  # (D, levels) int64, each row sums to 2**precision, entries >= 1
    precision: int = 16

    # ---- fitting ----------------------------------------------------------
    @classmethod
    def fit(
        cls, symbols: np.ndarray, levels: int, precision: int = 16, pseudo_count: float = 0.5
    ) -> FactorizedPrior:
        """Count symbols (N, D) on training codes; smooth; scale to integers summing to 2**precision."""
        s = np.asarray(symbols, dtype=np.int64).reshape(len(symbols), -1)
        if levels > (1 << precision) // 2:
            raise ValueError(f"{levels} levels need more than {precision}-bit precision tables")
        counts = np.stack([np.bincount(s[:, d], minlength=levels)[:levels] for d in range(s.shape[1])])
        return cls(cls._to_integer_table(counts + pseudo_count, precision), precision)

    @classmethod
    def from_probabilities(cls, probs: np.ndarray, precision: int = 16) -> FactorizedPrior:
        """From a learned float prior (D, levels), e.g. trained with rate-distortion loss."""
        return cls(cls._to_integer_table(np.asarray(probs, np.float64), precision), precision)

    @staticmethod
    def _to_integer_table(weights: np.ndarray, precision: int) -> np.ndarray:
        """Deterministic: floor of scaled weights, each >= 1, remainder to the largest entries."""
        total = 1 << precision
        w = np.maximum(weights, 0.0)
        w = w / w.sum(axis=1, keepdims=True)
        levels = w.shape[1]
        freq = np.maximum(1, np.floor(w * (total - levels)).astype(np.int64))
        for row, p in zip(freq, w):
            diff = total - int(row.sum())
            order = np.argsort(-p, kind="stable")
            i = 0
            while diff != 0:  # add to (or take from) the most probable symbols first
                j = order[i % levels]
                if diff > 0:
                    row[j] += 1
                    diff -= 1
                elif row[j] > 1:
                    row[j] -= 1
                    diff += 1
                i += 1
        return freq

    # ---- (de)serialisation --------------------------------------------------
    def to_dict(self) -> dict:
        return {"coder": CODER_NAME, "precision": self.precision, "tables": self.tables.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> FactorizedPrior:
        if d.get("coder") != CODER_NAME:
            raise ValueError(f"unknown entropy coder {d.get('coder')!r} (this build has {CODER_NAME!r})")
        precision = int(d["precision"])
        tables = np.asarray(d["tables"], dtype=np.int64)
        if tables.ndim != 2 or np.any(tables < 1) or np.any(tables.sum(axis=1) != (1 << precision)):
            raise ValueError("entropy tables must be positive integers, each row summing to 2**precision")
        return cls(tables, precision)

    # ---- coding ---------------------------------------------------------------
    @property
    def dims(self) -> int:
        return int(self.tables.shape[0])

    @property
    def levels(self) -> int:
        return int(self.tables.shape[1])

    def _model(self):
        c = _import_constriction()
        # Exact dyadic rationals: freq / 2**precision is exactly representable.
        probs = self.tables.astype(np.float64) / float(1 << self.precision)
        return c.stream.model.Categorical(perfect=False), probs

    def bits(self, symbols: np.ndarray) -> np.ndarray:
        """Ideal code length in bits per item under this prior (what a perfect coder would spend)."""
        s = np.asarray(symbols, dtype=np.int64).reshape(len(symbols), -1)
        logp = np.log2(self.tables.astype(np.float64) / float(1 << self.precision))
        return -logp[np.arange(self.dims)[None, :], s].sum(axis=1)

    def encode(self, symbols: np.ndarray) -> list[bytes]:
        """(N, D) symbols -> N payloads."""
        c = _import_constriction()
        s = np.asarray(symbols).reshape(len(symbols), -1)
        if s.shape[1] != self.dims:
            raise PayloadError(f"code has {s.shape[1]} dimensions, entropy tables have {self.dims}")
        if s.size and (int(s.max()) >= self.levels or int(s.min()) < 0):
            raise PayloadError(f"symbols outside 0..{self.levels - 1}")
        family, probs = self._model()
        out = []
        s32 = s.astype(np.int32)
        for row in s32:
            coder = c.stream.stack.AnsCoder()
            coder.encode_reverse(row, family, probs)
            raw = coder.get_compressed().astype("<u4").tobytes()
            trimmed = raw.rstrip(b"\x00")
            out.append(raw[: max(len(trimmed), len(raw) - 3)])
        return out

    def decode(self, payloads: list[bytes]) -> np.ndarray:
        """N payloads -> (N, D) uint16 symbols. Raises PayloadError on corrupt input."""
        c = _import_constriction()
        family, probs = self._model()
        out = np.empty((len(payloads), self.dims), dtype=np.uint16)
        for i, p in enumerate(payloads):
            padded = bytes(p) + b"\x00" * (-len(p) % 4)
            words = np.frombuffer(padded, dtype="<u4").astype(np.uint32)
            try:
                coder = c.stream.stack.AnsCoder(words)
                sym = coder.decode(family, probs)
            except Exception as exc:  # constriction raises plain exceptions on bad data
                raise PayloadError(f"item {i}: entropy-coded payload is corrupt ({exc})") from None
            if not coder.is_empty():
                raise PayloadError(
                    f"item {i}: entropy-coded payload has trailing data (corrupt or wrong bundle)"
                )
            out[i] = sym
        return out


# ==== layout ===========================================================================================
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
class PayloadSpec:
    quantizer: Quantizer
    code_dims: int
    prior: FactorizedPrior | None = None
    side: list[SideField] = field(default_factory=list)

    @property
    def format(self) -> str:
        name = self.quantizer.name
        return f"{name}+ans" if self.prior is not None else name

    @property
    def fixed_bits(self) -> int:
        bits = sum(f.numel * f.bits for f in self.side)
        if self.prior is None:
            bits += self.code_dims * self.quantizer.symbol_bits
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
            "quantization": self.quantizer.to_dict(),
            "entropy": self.prior.to_dict() if self.prior is not None else None,
            "side": [f.to_dict() for f in self.side],
            "item_bytes": self.item_bytes,
        }

    @classmethod
    def from_dict(cls, d: dict) -> PayloadSpec:
        q = Quantizer.from_dict(d["quantization"])
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
        if self.quantizer.kind == "float16":
            return symbols.astype(np.float16).view(np.uint16).astype(np.uint32)
        if self.quantizer.kind == "float32":
            return symbols.astype(np.float32).view(np.uint32)
        return symbols.astype(np.uint32)

    def pack(
        self,
        symbols: np.ndarray,
        side: dict[str, np.ndarray] | None = None,
        coded: list[bytes] | None = None,
    ) -> list[bytes]:
        """Lay out N item payloads from the earlier steps' output.

        symbols: (N, code_dims) from ``Quantizer.quantize``; coded: ``FactorizedPrior.encode(symbols)``,
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
            groups.append((self._symbol_ints(s), self.quantizer.symbol_bits))
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
        fixed = _pack_bits(groups, n)
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
            widths.append((self.code_dims, self.quantizer.symbol_bits))
        widths += [(f.numel, f.bits) for f in self.side]
        values = _unpack_bits(fixed, widths)
        side_vals = values[1:] if self.prior is None else values
        side = {f.name: v.reshape(n, *f.shape) for f, v in zip(self.side, side_vals)}
        if self.prior is not None:
            return Unpacked(None, side, [bytes(p[fb:]) for p in payloads])
        ints = values[0]
        symbols: np.ndarray
        if self.quantizer.kind == "float16":
            symbols = ints.astype(np.uint16).view(np.float16)
        elif self.quantizer.kind == "float32":
            symbols = ints.astype(np.uint32).view(np.float32)
        else:
            symbols = ints.astype(np.uint16)
            if symbols.size and int(symbols.max()) >= self.quantizer.levels:
                raise PayloadError(f"symbol out of range for {self.quantizer.bits}-bit codes")
        return Unpacked(symbols, side, None)


class Unpacked(NamedTuple):
    """One batch of payloads taken apart (``PayloadSpec.unpack``)."""

    symbols: np.ndarray | None  # (N, code_dims), fixed-width formats
    side: dict[str, np.ndarray]  # name -> (N, *shape)
    coded: list[bytes] | None  # per item, entropy-coded formats


def _pack_bits(groups: list[tuple[np.ndarray, int]], n: int) -> np.ndarray:
    """Concatenate groups of (N, K) ints at b bits each, MSB first, into (N, bytes) uint8."""
    if not groups:
        return np.zeros((n, 0), dtype=np.uint8)
    parts = []
    for values, b in groups:
        shifts = np.arange(b - 1, -1, -1, dtype=np.uint32)
        parts.append(((values[:, :, None] >> shifts) & 1).astype(np.uint8).reshape(n, -1))
    return np.packbits(np.concatenate(parts, axis=1), axis=1)


# Byte-aligned widths are read as big-endian words (MSB first, as packed), with no bit unpacking: the common
# 8-bit codes, on a server's per-call path.
_WHOLE = {8: ">u1", 16: ">u2", 32: ">u4"}


def _unpack_bits(data: np.ndarray, widths: list[tuple[int, int]]) -> list[np.ndarray]:
    """Inverse of ``_pack_bits``: (N, bytes) uint8 -> one (N, K) uint32 array per (K, b) group."""
    n = data.shape[0]
    total = sum(k * b for k, b in widths)
    bits: np.ndarray | None = None  # unpacked only if some group is not whole bytes on a byte boundary
    out, pos = [], 0
    for k, b in widths:
        if pos % 8 == 0 and b in _WHOLE:
            words = np.ascontiguousarray(data[:, pos // 8 : (pos + k * b) // 8]).view(_WHOLE[b])
            out.append(words.reshape(n, k).astype(np.uint32))
        else:
            if bits is None:
                bits = np.unpackbits(data, axis=1, count=total) if total else np.zeros((n, 0), np.uint8)
            chunk = bits[:, pos : pos + k * b].reshape(n, k, b).astype(np.uint32)
            weights = (1 << np.arange(b - 1, -1, -1, dtype=np.uint32)).astype(np.uint32)
            out.append((chunk * weights).sum(axis=2, dtype=np.uint32))
        pos += k * b
    return out

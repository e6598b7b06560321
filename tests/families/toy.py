"""A toy codec family, kept as a test fixture: proof that a family is one module plus its registrations.

"pooled thumbnails": the code is the item average-pooled by 2 with a learned per-channel gain, quantised to
4 bits per value in [0, 1]; the decoder upsamples it back. Nothing outside this file knows it exists:
importing it registers the codec family (latent_codec/registry.py), the model (training/registry.py) and
its exporter (training/exporters.py), and tests/test_codec_families.py runs it through training, export,
the edge, the cloud (Decode, Ingest, Fetch with a store) and the benchmark's measurement unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from latent_codec.bit_packing import pack_bits, unpack_bits
from latent_codec.bundle import Bundle, InputSpec, Manifest
from latent_codec.codec import Codec, Side
from latent_codec.errors import PayloadError
from latent_codec.registry import register_family
from latent_codec.transforms import OnnxTransforms
from training.bundle_writer import check_out, new_manifest, write_bundle
from training.data import load_split
from training.exporters import ExportJob, register_exporter
from training.models.base import Autoencoder
from training.onnx_export import export_graphs, parity
from training.registry import register_model

KIND = "toy-pooled"


# ---- the torch-free side: payload layout and codec -----------------------------------------------------------
@dataclass
class ToyPayload:
    kind: ClassVar[str] = KIND
    bits: int
    code_dims: int

    @property
    def format(self) -> str:
        return f"pooled{self.bits}"

    @property
    def item_bytes(self) -> int:
        return (self.code_dims * self.bits + 7) // 8

    def to_dict(self) -> dict:
        return {"kind": KIND, "format": self.format, "bits": self.bits, "code_dims": self.code_dims}

    @classmethod
    def from_dict(cls, d: dict) -> ToyPayload:
        p = cls(int(d["bits"]), int(d["code_dims"]))
        if not 1 <= p.bits <= 8 or p.code_dims < 1:
            raise ValueError("pooled codes need 1..8 bits and at least one value")
        return p


@register_family(KIND)
class ToyCodec(Codec):
    payload_type = ToyPayload
    payload: ToyPayload

    @classmethod
    def build(cls, bundle: Bundle, threads: int = 0) -> ToyCodec:
        m = bundle.manifest
        t = OnnxTransforms.from_graphs(bundle.encoder_bytes, bundle.decoder_bytes, [], m.code_shape, threads)
        return cls(m.input, m.code_shape, m.payload, t, m.bundle_id, m)

    @property
    def levels(self) -> int:
        return (1 << self.payload.bits) - 1

    def analyse(self, x_unit: np.ndarray) -> tuple[np.ndarray, Side]:
        code, _ = self.transforms.analysis(x_unit)
        return np.asarray(code, np.float32).reshape(len(x_unit), -1), {}

    def quantise(self, codes: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(codes * self.levels), 0, self.levels).astype(np.uint32)

    def encode(self, x_raw: np.ndarray) -> list[bytes]:
        self.check_items(x_raw)
        symbols = self.quantise(self.analyse(self.scale(x_raw))[0])
        return [bytes(row) for row in pack_bits([(symbols, self.payload.bits)], len(symbols))]

    def symbols(self, payloads) -> tuple[np.ndarray, Side]:
        payloads = list(payloads)
        for i, p in enumerate(payloads):
            if len(p) != self.payload.item_bytes:
                raise PayloadError(
                    f"item {i}: payload is {len(p)} bytes, format {self.format} needs {self.item_bytes}"
                )
        data = np.frombuffer(b"".join(payloads), np.uint8).reshape(len(payloads), self.payload.item_bytes)
        return unpack_bits(data, [(self.payload.code_dims, self.payload.bits)])[0], {}

    def dequantise(self, symbols: np.ndarray, side: Side | None = None) -> np.ndarray:
        return (np.asarray(symbols, np.float32) / np.float32(self.levels)).astype(np.float32)

    def synthesise(self, codes: np.ndarray, side: Side, chunk: int = 0) -> np.ndarray:
        out = self.transforms.synthesis(codes, {})
        return np.clip(np.asarray(out, np.float32).reshape(len(codes), *self.input.shape), 0.0, 1.0)


# ---- the training side: model and exporter -------------------------------------------------------------------
@register_model("toy-pooled")
class PooledThumbnail(Autoencoder):
    codec_family = KIND

    def __init__(self, input_shape=(1, 8, 8), output: str = "linear", **_):
        super().__init__(input_shape, output)
        c = int(input_shape[0])
        self.gain = nn.Parameter(torch.ones(c))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return F.avg_pool2d(x, 2), {}

    def decode_logits(self, code: torch.Tensor, side: dict[str, torch.Tensor]) -> torch.Tensor:
        code = code.reshape(-1, self.input_shape[0], self.input_shape[1] // 2, self.input_shape[2] // 2)
        return F.interpolate(code, scale_factor=2, mode="nearest") * self.gain[None, :, None, None]


@register_exporter(KIND)
def export_pooled(job: ExportJob) -> Manifest:
    train = load_split(job.data, "train", job.fit_items)
    test = load_split(job.data, "test", job.test_limit)
    check_out(job.out, job.force)
    spec = InputSpec.of_items(train.x, output=job.model.output, loss=job.model.loss_name)
    enc, dec = export_graphs(job.model, torch.from_numpy(spec.to_unit(train.x[:8])))
    par = parity(job.model, enc, dec, torch.from_numpy(spec.to_unit(test.x[:64])))
    code_shape = list(job.model.code_shape)
    payload = ToyPayload(4, int(np.prod(code_shape)))
    manifest = new_manifest(job, spec, code_shape, payload, len(train), par)
    manifest.seal(enc, dec)
    write_bundle(job.out, manifest, enc, dec, test, job.force)
    return manifest

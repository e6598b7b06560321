"""Items -> item payloads with a bundle's encoder in ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from latent_codec import datasets
from latent_codec.bundle import Bundle, load_bundle, run_encoder
from latent_codec.errors import DataError
from latent_codec.packing import join_payloads
from latent_codec.wire.aecodec.v1 import codec_pb2 as pb


class EdgeEncoder:
    def __init__(self, bundle_dir: str | Path, threads: int = 0):
        self.bundle: Bundle = load_bundle(bundle_dir, need=("encoder",))
        self.manifest = self.bundle.manifest
        self.session = self.bundle.session("encoder", threads)
        self._side_names = [f.name for f in self.manifest.payload.side]

    @property
    def bundle_id(self) -> str:
        return self.bundle.bundle_id

    def check_items(self, x: np.ndarray) -> None:
        """Refuse items that do not fit the bundle, naming both shapes."""
        want = tuple(self.manifest.input.shape)
        got = tuple(int(s) for s in x.shape[1:])
        if got != want:
            raise DataError(
                f"items are {'x'.join(map(str, got))} (C x H x W) but bundle {self.bundle_id} "
                f"expects {'x'.join(map(str, want))}"
            )
        raw = self.manifest.input.dtype
        if raw == "uint8" and x.dtype != np.uint8:
            raise DataError(f"items are {x.dtype} but bundle {self.bundle_id} expects uint8 pixels")

    def code_batch(self, payloads: list[bytes]) -> pb.CodeBatch:
        """The wire form of a batch of this bundle's payloads (sizes only for variable-size formats)."""
        spec = self.manifest.payload
        data, sizes = join_payloads(payloads, spec.item_bytes is not None)
        return pb.CodeBatch(
            bundle_id=self.bundle_id, count=len(payloads), format=spec.format, data=data, sizes=sizes
        )

    def encode(self, x_raw: np.ndarray) -> list[bytes]:
        """(N, C, H, W) raw items -> N payloads, packed as the manifest says."""
        self.check_items(x_raw)
        code, side = run_encoder(self.session, datasets.to_unit(x_raw), self._side_names)
        return self.manifest.payload.pack(code, side)

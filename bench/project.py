"""The project's bundles measured through the real edge path and the real wire messages.

Per bundle: edge.encoder.EdgeEncoder (ONNX Runtime + PayloadSpec.pack), the
payloads framed as the edge sends them (a DecodeRequest per batch, like
``edge.cli evaluate``; an IngestRequest of IngestItems, like the durable
ingest path), parsed back from the serialised bytes, unpacked and decoded
with the bundle's decoder as the cloud does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latent_codec import datasets
from latent_codec.bundle import load_bundle, run_decoder
from latent_codec.packing import split_payloads
from latent_codec.wire.aecodec.v1 import codec_pb2 as pb

BATCH = 500  # edge.cli evaluate's default --batch-size


@dataclass
class WireSizes:
    payload: float  # mean payload bytes per item (what storage holds)
    decode_request: float  # serialised DecodeRequest bytes per item, batches of BATCH, no originals
    ingest_request: float  # serialised IngestRequest bytes per item (edge ids, device id, timestamps)


def _ingest_bytes(bundle_id: str, payloads: list[bytes]) -> int:
    """Bytes of the IngestRequests the edge's ingest sends for these payloads, BATCH items each.

    Built by the edge's own ``build_request`` with its default item ids (8 hex digits of the source,
    '#', the index), so this measures the real framing, not an estimate.
    """
    from edge.ingest import build_request, default_source_id
    from edge.spool import SpooledItem

    source = default_source_id("idx:/usr/share/datasets/fashion-mnist:test")
    now = int(time.time() * 1000)
    total = 0
    for i in range(0, len(payloads), BATCH):
        batch = [
            SpooledItem(
                seq=i + j,
                item_id=f"{source}#{i + j}",
                bundle_id=bundle_id,
                payload=p,
                captured_at_ms=now + i + j,
            )
            for j, p in enumerate(payloads[i : i + BATCH])
        ]
        total += build_request("device-0001", batch).ByteSize()
    return total


def measure_bundle(
    bundle_dir: Path, items: np.ndarray, threads: int = 1
) -> tuple[WireSizes, np.ndarray, dict]:
    """-> (bytes per item, uint8 reconstructions, bundle info) for items (N, C, H, W) uint8."""
    from edge.encoder import EdgeEncoder

    enc = EdgeEncoder(bundle_dir, threads)
    bundle = load_bundle(bundle_dir, need=("decoder",))
    dec = bundle.session("decoder", threads)
    m = bundle.manifest
    spec = m.payload
    recon = np.empty_like(items)
    n_payload = n_request = 0
    ideal_bits = 0.0
    all_payloads: list[bytes] = []
    for i in range(0, len(items), BATCH):
        xb = items[i : i + BATCH]
        payloads = enc.encode(xb)
        req = pb.DecodeRequest(
            codes=enc.code_batch(payloads),
            reconstruction_format=pb.RECONSTRUCTION_FORMAT_NONE,
        )
        wire = req.SerializeToString()
        n_request += len(wire)
        n_payload += sum(len(p) for p in payloads)
        all_payloads += payloads
        got = pb.DecodeRequest.FromString(wire).codes  # the cloud's view: parse, split, unpack, decode
        z, side = spec.unpack(split_payloads(got.data, list(got.sizes), got.count, spec.item_bytes))
        if spec.prior is not None:  # the prior's ideal code length: what the coder's termination adds to it
            ideal_bits += float(spec.prior.bits(spec.quantizer.quantize(z)).sum())
        rec = np.clip(run_decoder(dec, z, side, m.code_shape), 0.0, 1.0)
        recon[i : i + BATCH] = datasets.from_unit(rec, "uint8").reshape(xb.shape)
    n = len(items)
    sizes = WireSizes(n_payload / n, n_request / n, _ingest_bytes(enc.bundle_id, all_payloads) / n)
    info = {
        "bundle_id": enc.bundle_id,
        "format": spec.format,
        "model": m.model,
        "rd_lambda": (m.training.get("config") or {}).get("rd_lambda"),
        "path": str(bundle_dir),
        "ideal_bytes": ideal_bits / 8 / n if spec.prior is not None else None,
    }
    return sizes, recon, info

"""The project's bundles measured through the real codec and the real wire messages.

Per bundle: ``latent_codec.codec.Codec`` (the object the edge and the cloud run) encodes; the
payloads are framed as the edge sends them (a DecodeRequest per batch, like ``edge.cli evaluate``;
IngestRequests built by the edge's own framing, like the durable ingest path), parsed back from the
serialised bytes and decoded by the codec as the cloud does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latent_codec import framing
from latent_codec.codec import Codec
from latent_codec.container import from_batch, to_batch
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb

BATCH = 500  # edge.cli evaluate's default --batch-size


@dataclass
class WireSizes:
    payload: float  # mean payload bytes per item (what storage holds)
    decode_request: float  # serialised DecodeRequest bytes per item, batches of BATCH, no originals
    ingest_request: float  # serialised IngestRequest bytes per item (edge ids, device id, timestamps)


@dataclass
class _Item:
    item_id: str
    bundle_id: str
    payload: bytes
    captured_at_ms: int
    original: bytes | None = None
    name: str = ""  # array items carry no source name: none is sent


def _ingest_bytes(bundle_id: str, payloads: list[bytes]) -> int:
    """Bytes of the IngestRequests the edge's ingest sends for these payloads, BATCH items each.

    Built by the shared framing (latent_codec/framing.py) with the edge's default item ids (8 hex digits of
    the source, '#', the index), so this measures the real framing, not an estimate.
    """
    from edge.ingest import default_source_id

    source = default_source_id("idx:/usr/share/datasets/fashion-mnist:test")
    now = int(time.time() * 1000)
    total = 0
    for i in range(0, len(payloads), BATCH):
        batch = [
            _Item(f"{source}#{i + j}", bundle_id, p, now + i + j)
            for j, p in enumerate(payloads[i : i + BATCH])
        ]
        total += framing.ingest_request("device-0001", batch).ByteSize()
    return total


def measure_bundle(
    bundle_dir: Path, items: np.ndarray, threads: int = 1
) -> tuple[WireSizes, np.ndarray, dict]:
    """-> (bytes per item, raw reconstructions, bundle info) for raw items (N, C, H, W)."""
    codec = Codec.open(bundle_dir, threads=threads)
    m = codec.manifest
    assert m is not None
    recon = np.empty_like(items)
    n_payload = n_request = 0
    ideal_bits: float | None = 0.0
    all_payloads: list[bytes] = []
    for i in range(0, len(items), BATCH):
        xb = items[i : i + BATCH]
        payloads = codec.encode(xb)
        wire = pb.DecodeRequest(
            codes=to_batch(codec, payloads), reconstruction_format=pb.RECONSTRUCTION_FORMAT_NONE
        ).SerializeToString()
        n_request += len(wire)
        n_payload += sum(len(p) for p in payloads)
        all_payloads += payloads
        received = from_batch(codec, pb.DecodeRequest.FromString(wire).codes)  # the cloud's view of the bytes
        ideal = codec.ideal_bits(
            received
        )  # the entropy model's ideal length: what the coder's termination adds to it
        ideal_bits = None if ideal is None or ideal_bits is None else ideal_bits + float(ideal.sum())
        recon[i : i + BATCH] = codec.decode(received)
    n = len(items)
    sizes = WireSizes(n_payload / n, n_request / n, _ingest_bytes(codec.bundle_id, all_payloads) / n)
    info = {
        "bundle_id": codec.bundle_id,
        "format": codec.format,
        "stride": getattr(codec.payload, "stride", None),
        "model": m.model,
        "rd_lambda": (m.training.get("config") or {}).get("rd_lambda"),
        "path": str(bundle_dir),
        "ideal_bytes": ideal_bits / 8 / n if ideal_bits is not None else None,
        "device": device_costs(bundle_dir, items[:256]),
    }
    return sizes, recon, info


def device_costs(bundle_dir: Path, items: np.ndarray, repeats: int = 3) -> dict:
    """What a device pays for a bundle: graph sizes, and the codec's encode / decode time per item on 1 thread.

    Encode: the edge path on 64 single items (batch 1) and on the batch of 256; decode: the cloud path on 256
    payloads. Best of ``repeats`` runs, in milliseconds per item.
    """
    codec = Codec.open(bundle_dir, threads=1)

    def best(fn) -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    singles = items[:64]
    payloads = codec.encode(items)
    return {
        "encoder_kb": (bundle_dir / "encoder.onnx").stat().st_size / 1024,
        "decoder_kb": (bundle_dir / "decoder.onnx").stat().st_size / 1024,
        "encode_ms_batch1": best(lambda: [codec.encode(singles[i : i + 1]) for i in range(len(singles))])
        * 1000
        / len(singles),
        "encode_ms_batch256": best(lambda: codec.encode(items)) * 1000 / len(items),
        "decode_ms_batch256": best(lambda: codec.decode(payloads)) * 1000 / len(items),
    }

"""Decode a CodeBatch with its bundle; compare against originals when given. No gRPC here."""

from __future__ import annotations

import numpy as np

from latent_codec import datasets, metrics
from latent_codec.bundle import run_decoder
from latent_codec.errors import PayloadError
from latent_codec.packing import split_payloads
from latent_codec.tensors import from_tensor, to_tensor
from latent_codec.wire.aecodec.v1 import codec_pb2 as pb

from .bundles import LoadedBundle

MAX_BATCH_ITEMS = 65536  # bounds memory per request; clients send batches of hundreds


def payloads_of(batch: pb.CodeBatch, lb: LoadedBundle) -> list[bytes]:
    spec = lb.bundle.manifest.payload
    if batch.format != spec.format:
        raise PayloadError(
            f"codes.format is {batch.format!r} but bundle {lb.bundle.bundle_id} uses {spec.format!r}"
        )
    if batch.count == 0:
        raise PayloadError("codes.count is 0: send at least one item")
    if batch.count > MAX_BATCH_ITEMS:
        raise PayloadError(
            f"codes.count {batch.count} exceeds the limit of {MAX_BATCH_ITEMS} items per batch"
        )
    return split_payloads(batch.data, list(batch.sizes), batch.count, spec.item_bytes)


def decode_payloads(lb: LoadedBundle, payloads: list[bytes]) -> np.ndarray:
    """Payloads -> reconstructions float32 in [0, 1], (N, *input_shape)."""
    m = lb.bundle.manifest
    codes, side = m.payload.unpack(payloads)
    rec = run_decoder(lb.decoder, codes, side, m.code_shape)
    return np.clip(rec, 0.0, 1.0)


def to_raw(lb: LoadedBundle, rec_unit: np.ndarray) -> np.ndarray:
    """[0, 1] reconstruction -> the manifest's raw dtype (what the user gets back)."""
    return datasets.from_unit(rec_unit, lb.bundle.manifest.input.dtype)


def reconstruction_tensor(
    lb: LoadedBundle, rec_unit: np.ndarray, fmt: int, raw: np.ndarray | None = None
) -> pb.Tensor | None:
    """The reply's reconstructions in the requested format (raw: to_raw(rec_unit), if already computed)."""
    if fmt == pb.RECONSTRUCTION_FORMAT_NONE:
        return None
    if fmt == pb.RECONSTRUCTION_FORMAT_FLOAT32:
        return to_tensor(rec_unit.astype(np.float32))
    return to_tensor(to_raw(lb, rec_unit) if raw is None else raw)


def decode_request(lb: LoadedBundle, req: pb.DecodeRequest) -> pb.DecodeResponse:
    m = lb.bundle.manifest
    payloads = payloads_of(req.codes, lb)
    originals = None
    if req.HasField("originals"):
        originals = from_tensor(req.originals, "originals")
        want = [len(payloads), *m.input.shape]
        if list(originals.shape) != want:
            raise PayloadError(
                f"originals.shape is {list(originals.shape)}, expected {want} (count x manifest input.shape)"
            )
        if originals.dtype.name != m.input.dtype:
            raise PayloadError(
                f"originals.dtype is {originals.dtype.name}, the manifest's input dtype is {m.input.dtype}"
            )
    if req.reconstruction_format not in (
        pb.RECONSTRUCTION_FORMAT_UINT8,
        pb.RECONSTRUCTION_FORMAT_FLOAT32,
        pb.RECONSTRUCTION_FORMAT_NONE,
    ):
        raise PayloadError(f"reconstruction_format {req.reconstruction_format} is unknown")
    rec = decode_payloads(lb, payloads)
    float_reply = req.reconstruction_format == pb.RECONSTRUCTION_FORMAT_FLOAT32
    raw = None if float_reply else to_raw(lb, rec)  # once: for the reply and for the error
    resp = pb.DecodeResponse(bundle_id=m.bundle_id, count=len(payloads))
    t = reconstruction_tensor(lb, rec, req.reconstruction_format, raw)
    if t is not None:
        resp.reconstructions.CopyFrom(t)
    if originals is not None:
        # Error of what the user receives: uint8-rounded for uint8 data.
        got = rec if float_reply else datasets.to_unit(raw)
        mse = metrics.per_item_mse(datasets.to_unit(originals), got)
        batch_mse = float(mse.mean())
        resp.quality.CopyFrom(
            pb.Quality(
                mse=mse.tolist(),
                psnr=np.asarray(metrics.psnr_from_mse(mse)).tolist(),
                batch_mse=batch_mse,
                batch_psnr=metrics.psnr_from_mse(batch_mse),
            )
        )
    return resp

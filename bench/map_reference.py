"""The code-map path as it was before issue 21, kept callable: the reference for tests and the baseline of
bench/speed.py (measured side by side with today's code in one run).

- ``indices``: the integer hyper-decoder as int64 ``einsum`` over sliding windows (the 85 % hot spot);
- ``pack`` / ``unpack``: one constriction call per item per table group, grouping by ``argsort`` + ``unique``
  per item;
- ``encode`` / ``decode``: whole items through the graphs at once (no tiles).

Nothing here is used by the edge or the cloud.
"""

from __future__ import annotations

import numpy as np

from latent_codec.codec import Codec
from latent_codec.families.code_map import MapPayload
from latent_codec.families.hyper_decoder import IntegerHyperDecoder


def conv2d_int(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """'Same' 3x3 convolution of int64 maps (N, C, H, W) with int64 weights (O, C, k, k): exact integers."""
    k = w.shape[-1]
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    cols = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))  # N, C, H, W, k, k
    out = np.einsum("nchwij,ocij->nohw", cols, w, optimize=False)
    return out + b[None, :, None, None]


def log_scale_units(hd: IntegerHyperDecoder, z: np.ndarray) -> np.ndarray:
    x = np.asarray(z, np.int64).repeat(2, axis=2).repeat(2, axis=3)
    return conv2d_int(np.maximum(conv2d_int(x, hd.w1, hd.b1), 0), hd.w2, hd.b2)


def indices(hd: IntegerHyperDecoder, z: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, Nh, hz, wz) integer ẑ -> (N, M, h, w) table indices, the int64 einsum way."""
    units = log_scale_units(hd, z)[:, :, : size[0], : size[1]]
    return np.searchsorted(hd.thresholds, units, side="right").astype(np.int64)


def table_indices(p: MapPayload, y_shape: tuple[int, ...], z_sym: np.ndarray | None) -> np.ndarray:
    n, m, h, w = y_shape
    if p.entropy == "factorized":
        return np.broadcast_to(np.arange(m, dtype=np.int64)[None, :, None, None], y_shape)
    assert p.hyper_decoder is not None and z_sym is not None
    return indices(p.hyper_decoder, np.asarray(z_sym, np.int64) - (1 << (p.z_grid_bits - 1)), (h, w))


def _grouped(ks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(ks, kind="stable")
    groups, counts = np.unique(ks, return_counts=True)
    return order, groups, np.concatenate([[0], np.cumsum(counts)])


def pack(
    p: MapPayload, sizes: np.ndarray, y_sym: np.ndarray, z_sym: np.ndarray | None, idx=None
) -> list[bytes]:
    """The old per-item, per-group loop (``idx``: table indices already computed, to time the coder alone)."""
    idx = table_indices(p, y_sym.shape, z_sym) if idx is None else idx
    y_models, z_models = p.y_tables.coder_tables.models, p.z_tables.coder_tables.models if p.z_tables else []
    out = []
    for i in range(len(y_sym)):
        head, enc = p.begin(int(sizes[i][0]), int(sizes[i][1]))
        if z_sym is not None:
            zi = z_sym[i].reshape(p.hyper_channels, -1)
            for ch in range(p.hyper_channels):
                enc.push(zi[ch], z_models[ch])
        order, groups, bounds = _grouped(idx[i].ravel())
        ys = y_sym[i].ravel()[order]
        for g, k in enumerate(groups):
            enc.push(ys[bounds[g] : bounds[g + 1]], y_models[int(k)])
        out.append(head + enc.finish())
    return out


def unpack(p: MapPayload, payloads: list[bytes], idx_fn=None) -> tuple[np.ndarray, np.ndarray | None]:
    """The old decoder loop -> (ŷ symbols, ẑ symbols); ``idx_fn(y_shape, z_sym)`` selects tables."""
    idx_fn = idx_fn or (lambda shape, z: table_indices(p, shape, z))
    sizes, starts = p._headers(payloads)
    n = len(payloads)
    h, w = (int(v) for v in sizes[0])
    hy, wy = p.code_size(h, w)
    decoders, z_sym = [], None
    y_models, z_models = p.y_tables.coder_tables.models, p.z_tables.coder_tables.models if p.z_tables else []
    if p.has_hyper:
        hz, wz = p.hyper_size(h, w)
        z_sym = np.empty((n, p.hyper_channels, hz, wz), np.uint16)
    for i, (b, pos) in enumerate(zip(payloads, starts)):
        dec = p.open(b, pos)
        if z_sym is not None:
            for ch in range(p.hyper_channels):
                z_sym[i, ch] = dec.pop(z_models[ch], hz * wz).reshape(hz, wz)
        decoders.append(dec)
    idx = idx_fn((n, p.code_channels, hy, wy), z_sym)
    y_sym = np.empty((n, p.code_channels, hy, wy), np.uint16)
    for i, dec in enumerate(decoders):
        order, groups, bounds = _grouped(np.asarray(idx[i]).ravel())
        flat = np.empty(order.shape, np.uint16)
        for g, k in enumerate(groups):
            flat[order[bounds[g] : bounds[g + 1]]] = dec.pop(y_models[int(k)], bounds[g + 1] - bounds[g])
        dec.finish()
        y_sym[i] = flat.reshape(p.code_channels, hy, wy)
    return y_sym, z_sym


def encode(codec: Codec, x_raw: np.ndarray) -> list[bytes]:
    """Whole items through encoder.onnx, the old table selection and coder loop."""
    p = codec.payload
    n, _, h, w = x_raw.shape
    y, side = codec.transforms.analysis(codec.pad(codec.scale(x_raw)))  # type: ignore[attr-defined]
    z = p.z_symbols(side["hyper"]) if p.has_hyper else None
    return pack(p, np.tile(np.asarray([h, w], np.int64), (n, 1)), p.y_symbols(y), z)


def decode(codec: Codec, payloads: list[bytes]) -> np.ndarray:
    """The old coder loop and table selection, then decoder.onnx on whole items."""
    y_sym, _ = unpack(codec.payload, payloads)
    sizes = codec.payload.sizes(payloads)
    return codec.unscale(codec.synthesise(codec.dequantise(y_sym), {"size": sizes}))

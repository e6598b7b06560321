"""Training a vector-quantised autoencoder (training/models/vq.py) by Lloyd iterations.

Each iteration (one "epoch") assigns every training item to the codeword of
least cost ||x - c_k||^2 + lambda * (-log2 P(k)), then moves each codeword to
the mean of its items and re-estimates P from the assignment counts
(entropy-constrained VQ, Chou, Lookabaugh & Gray 1989; lambda = 0 is k-means).
Both steps can only lower the training objective, so no learning rate is
needed. A codeword left with no items is re-seeded on the item reconstructed
worst, so all K stay in use unless the rate term prices them out.

The record has the same shape as gradient training's: a per-iteration history
with the validation PSNR, and `rate_prior` (the index distribution on the
integer grid) for `--quant learned` export.
"""

from __future__ import annotations

import sys
import time

import torch

from latent_codec.metrics import psnr_from_mse

PSEUDO_COUNT = 0.5  # per index in P(k): an index never seen in training still gets a finite code length
CHUNK = 4096  # items per distance block: (CHUNK, K) floats stay small


def assign(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(index, squared error) per item under the model's current codebook and bias."""
    idx, err = [], []
    for i in range(0, len(x), CHUNK):
        flat = x[i : i + CHUNK].flatten(1)
        h = model.features(flat)
        k = torch.argmin(model.costs(h), dim=1)
        idx.append(k)
        e = ((h - model.codebook[k]) ** 2).sum(1)
        if model.subspace:  # plus what the subspace leaves out (orthonormal basis: Pythagoras)
            e = e + ((flat - model.mean) ** 2).sum(1) - (h**2).sum(1)
        err.append(e)
    return torch.cat(idx), torch.cat(err)


def fit_subspace(model, flat: torch.Tensor) -> None:
    """The top-k principal directions of the training items (float64 eigendecomposition of the covariance)."""
    mean = flat.double().mean(0)
    centred = flat.double() - mean
    _, vecs = torch.linalg.eigh(centred.t() @ centred)
    model.mean.copy_(mean.float())
    model.basis.copy_(vecs[:, -model.subspace :].flip(1).float())


def index_probabilities(idx: torch.Tensor, k_total: int) -> torch.Tensor:
    """P(k) from assignment counts, smoothed so every index has a finite code length."""
    counts = torch.bincount(idx, minlength=k_total).double()
    return (counts + PSEUDO_COUNT) / (counts.sum() + PSEUDO_COUNT * k_total)


@torch.no_grad()
def train_vq(model, x_train: torch.Tensor, x_val: torch.Tensor, cfg, progress: bool | None) -> dict:
    """Lloyd / ECVQ iterations on [0, 1] items; returns the training record."""
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(cfg.seed)
    k_total = model.codewords
    flat = x_train.flatten(1)
    pixels = flat.shape[1]
    if model.subspace and not bool(
        model.basis.abs().sum()
    ):  # fresh subspace model: PCA of the training items
        fit_subspace(model, flat)
    flat = model.features(flat)  # the space the codewords live in
    if not bool(
        model.codebook.abs().sum()
    ):  # fresh model (a chained rung keeps its codebook): K distinct items
        if len(flat) < k_total:
            raise ValueError(f"{k_total} codewords need at least as many training items, got {len(flat)}")
        model.codebook.copy_(flat[torch.randperm(len(flat), generator=g)[:k_total]])
    history = []
    for it in range(1, cfg.epochs + 1):
        idx, err = assign(model, x_train)
        counts = torch.bincount(idx, minlength=k_total).float()
        sums = torch.zeros_like(model.codebook).index_add_(0, idx, flat)
        used = counts > 0
        model.codebook[used] = sums[used] / counts[used, None]
        empty = int((~used).sum())
        if empty and cfg.rd_lambda == 0:  # re-seed on the worst-reconstructed items
            model.codebook[~used] = flat[torch.argsort(err, descending=True)[:empty]]
        p = index_probabilities(idx, k_total)
        model.bias.copy_(cfg.rd_lambda * -torch.log2(p))
        bits = float((-torch.log2(p[idx])).mean())
        rec = {
            "epoch": it,
            "train_loss": float(err.mean()) + cfg.rd_lambda * bits,
            "train_bits": bits,
            "codewords_used": int(used.sum()),
            "seconds": time.perf_counter() - t0,
        }
        if len(x_val):
            _, verr = assign(model, x_val)
            val_mse = float(verr.mean()) / pixels
            rec.update(val_mse=val_mse, val_psnr=psnr_from_mse(val_mse))
        history.append(rec)
        if progress is not None:
            print(
                f"iteration {it}: train loss {rec['train_loss']:.3f}  {bits:.2f} bits  "
                f"{rec['codewords_used']} codewords used  val PSNR {rec.get('val_psnr', float('nan')):.2f} dB",
                file=sys.stderr,
            )
    idx, _ = assign(model, x_train)  # the final codebook's assignment: what the exported tables describe
    p = index_probabilities(idx, k_total)
    b = model.grid_bits
    return {
        "history": history,
        "train_seconds": time.perf_counter() - t0,
        "rate_prior": {
            "grid_bits": b,
            "lo": -(1 << (b - 1)),
            "hi": (1 << (b - 1)) - 1,
            "components": 0,
            "rd_lambda": cfg.rd_lambda,
            "train_bits_per_item": float((-torch.log2(p[idx])).mean()),
            "probs": [[float(v) for v in p]],
        },
    }

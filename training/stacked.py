"""Stacked autoencoders: greedy layer-wise pre-training of a deep dense model, before end-to-end fine-tuning.

Layer i is trained as a one-hidden-layer autoencoder on the codes of layer i-1 (layer 0 on the
inputs, with the model's own output and loss; upper layers reconstruct the activations below
through the same activation, with squared error). Layer autoencoders tie their decoder to W^T, as
RBM pre-training does, so the only decoder-side parameter is a reconstruction bias. The layer's
decoding path is then dropped and its encoder output becomes the next layer's training data. The
deep model's decoder starts "unrolled" (Hinton & Salakhutdinov 2006): mirrored layer n-1-i gets
W_i^T and layer i's reconstruction bias, so before fine-tuning the deep autoencoder is exactly the
stack of pre-trained layers; train() then fine-tunes the whole network end to end. With masking/Gaussian noise set, every layer is a
denoising autoencoder (the notes' stacked denoising autoencoder).
"""

from __future__ import annotations

import math
import sys
import time

import torch
from torch import nn

from training.models.dense import DenseAutoencoder


def _layer_loss(
    model: DenseAutoencoder, first: bool, logits: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    if first and model.loss == "bce":
        per = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    elif first and model.output == "sigmoid":  # sigmoid output trained with squared error
        per = (torch.sigmoid(logits) - target) ** 2
    elif first:
        per = (logits - target) ** 2
    else:
        per = (model.act(logits) - target) ** 2  # the deep decoder applies act after this layer too
    return per.sum(1).mean()


def pretrain_stacked(
    model: nn.Module, x_train: torch.Tensor, cfg, corrupt=None, progress: bool | None = None
) -> dict:
    """Greedy layer-wise pre-training in place; returns {"layers": [{"layer", "sizes", "loss", "seconds"}]}."""
    if not isinstance(model, DenseAutoencoder):
        raise ValueError(
            f"stacked pre-training is implemented for dense models (layer-wise dense AEs), "
            f"not {getattr(model, 'registry_name', type(model).__name__)!r}"
        )
    n = len(model.enc_w)
    if n < 2:
        raise ValueError(
            "stacked pre-training needs a deep model: give hidden layers, e.g. --arg hidden=(256,64)"
        )
    g = torch.Generator().manual_seed(cfg.seed + 1)
    with torch.no_grad():
        h = model.normalize(x_train).flatten(1)
    layers = []
    for i in range(n):
        t0 = time.perf_counter()
        w, b = model.enc_w[i], model.enc_b[i]
        act = model.code_act if i == n - 1 else model.act
        c = nn.Parameter(torch.zeros(w.shape[1]))  # reconstruction bias of this layer's (tied) decoder
        params = [w, b, c]
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        steps = cfg.pretrain_epochs * math.ceil(len(h) / cfg.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=cfg.lr, total_steps=max(steps, 1), pct_start=0.15
        )
        total = 0.0
        for _ in range(cfg.pretrain_epochs):
            perm = torch.randperm(len(h), generator=g)
            total = 0.0
            for s in range(0, len(h), cfg.batch_size):
                hb = h[perm[s : s + cfg.batch_size]]
                h_in = corrupt(hb) if corrupt is not None else hb
                y = act(nn.functional.linear(h_in, w, b))
                logits = nn.functional.linear(y, w.t(), c)
                loss = _layer_loss(model, i == 0, logits, hb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(hb)
        with torch.no_grad():
            h = act(nn.functional.linear(h, w, b))  # this layer's codes: the next layer's data
            if not model.tied:
                model.dec_w[n - 1 - i].copy_(w.t())
            model.dec_b[n - 1 - i].copy_(c)
        rec = {
            "layer": i,
            "sizes": [int(w.shape[1]), int(w.shape[0])],
            "loss": total / len(h),
            "seconds": time.perf_counter() - t0,
        }
        layers.append(rec)
        if progress is not None:
            print(
                f"pretrain layer {i} ({rec['sizes'][0]}->{rec['sizes'][1]}): loss {rec['loss']:.3f} "
                f"after {cfg.pretrain_epochs} epochs",
                file=sys.stderr,
            )
    return {"epochs_per_layer": cfg.pretrain_epochs, "layers": layers}

"""Data for training: the shared loaders' uint8 items as float tensors in [0, 1], split for validation."""

from __future__ import annotations

import numpy as np
import torch

from latent_codec import datasets
from latent_codec.bundle import InputSpec


def load_split(spec: str | None, split: str, limit: int = 0) -> datasets.ArrayDataset:
    ds = datasets.load(spec, split)
    if limit and limit < len(ds):
        ds = datasets.ArrayDataset(
            ds.x[:limit], None if ds.y is None else ds.y[:limit], ds.source + f"[:{limit}]"
        )
    return ds


def to_tensor(ds: datasets.ArrayDataset) -> torch.Tensor:
    """Items scaled to [0, 1] exactly as the exported bundle's codec will scale them (InputSpec.of_items)."""
    return torch.from_numpy(InputSpec.of_items(ds.x).to_unit(ds.x))


def train_val_split(x: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed random split of the training items: validation never sees the test split."""
    g = np.random.default_rng(seed)
    idx = g.permutation(len(x))
    n_val = max(1, int(round(len(x) * val_fraction))) if val_fraction > 0 else 0
    return x[idx[n_val:]], x[idx[:n_val]]


def epoch_order(n: int, epoch: int, seed: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """The training items of epoch `epoch` (from 1) that process `rank` of `world_size` visits, in order.

    One permutation per epoch, the one single-process training drew before torchrun support (a generator
    seeded once with `seed`, one randperm per epoch; replayed here, so a resumed run gets the same order),
    cut into world_size interleaved shards as DistributedSampler does (the last n mod world_size items of the
    permutation dropped), so N processes together visit what one process visits, step by step.
    """
    g = torch.Generator().manual_seed(seed)
    perm = torch.arange(n)
    for _ in range(epoch):
        perm = torch.randperm(n, generator=g)
    return perm[: n - n % world_size][rank::world_size]

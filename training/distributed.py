"""Where training runs: the device (cpu, cuda or auto), mixed precision, and torchrun's process group.

    python -m training.train --device auto ...                                 # one process, GPU if there is one
    torchrun --standalone --nproc-per-node 2 -m training.train --device cpu ...   # two processes, gloo
    torchrun --standalone --nproc-per-node 4 -m training.train --device cuda ...  # one GPU each, NCCL

torchrun starts one process per GPU (or per CPU share) and tells each its RANK,
LOCAL_RANK and WORLD_SIZE; ``setup`` joins the process group from them (NCCL
when the device is CUDA, gloo on the CPU). Training then wraps the model in
DistributedDataParallel and shards each epoch with a DistributedSampler
(training/train.py). Only rank 0 writes: ``is_main`` guards checkpoints, logs
and bundles, and ``barrier`` makes the others wait until a checkpoint exists.
"""

from __future__ import annotations

import contextlib
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

DEVICES = ("auto", "cpu", "cuda")
AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """This process's place: its device, its rank among world_size processes (0 of 1 without torchrun)."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def sum(self, value: float) -> float:
        """value summed over all processes (itself in one process)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """cpu, cuda (this process's GPU: cuda:LOCAL_RANK) or auto (cuda when torch sees a GPU, else cpu)."""
    if name not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(
            "--device cuda: torch sees no CUDA device here (a CPU build, or no GPU); use cpu or auto"
        )
    if local_rank >= torch.cuda.device_count():
        raise ValueError(f"LOCAL_RANK {local_rank} has no GPU: only {torch.cuda.device_count()} are visible")
    return torch.device("cuda", local_rank)


def setup(device: str) -> Runtime:
    """This process's Runtime; under torchrun (WORLD_SIZE > 1) joins the process group once (idempotent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device, int(os.environ.get("LOCAL_RANK", "0")))
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    if dist.is_initialized():
        return Runtime(dev, dist.get_rank(), dist.get_world_size())
    return Runtime(dev)


def is_main() -> bool:
    """True in a single process and on rank 0: the one process that writes files and prints."""
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    """Wait for every process (no-op in a single process): after rank 0 wrote a file the others read."""
    if dist.is_initialized():
        dist.barrier()


def check_in_step(module: torch.nn.Module, atol: float = 1e-6) -> None:
    """After training every process must hold rank 0's parameters (DDP keeps them in step as long as every
    trained parameter is inside the wrapped module and starts equal); a RuntimeError names the first that is not."""
    if not dist.is_initialized():
        return
    for name, p in module.named_parameters():
        ref = p.detach().clone()
        dist.broadcast(ref, 0)
        bad = torch.tensor([float((ref - p.detach()).abs().max())], device=p.device)
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        if bad.item() > atol:
            raise RuntimeError(f"processes disagree on {name} by {bad.item():.3g} after training")


def teardown() -> None:
    """Leave the process group, after every process got here and the DDP wrappers are gone.

    A DistributedDataParallel wrapper sits in reference cycles; freed later, at interpreter exit, it would
    touch a destroyed gloo group and abort the process (seen here as an occasional SIGABRT after the work).
    """
    if dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def check_options(
    amp: str, device: torch.device, quantised_codes: bool, contractive: bool
) -> torch.dtype | None:
    """The autocast dtype for --amp; a one-line ValueError for what is not safe or not supported on the device.

    Mixed precision is safe for plain, denoising and sparse training on CUDA: the model's forward pass runs in
    bf16/fp16 and every loss in fp32 (fp16 with a gradient scaler). It is refused for codes on an integer grid
    (--rd-lambda, --quant-noise), whose rounding and bin likelihoods need fp32 (bf16 keeps 8 significant bits:
    codes above 256, or their fractions, are lost). CPU autocast is not offered. The contractive penalty runs
    on the CPU only (training/regularizers.py builds its Jacobian probes there), so never with --amp.
    """
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {', '.join(AMP_DTYPES)}, got {amp!r}")
    if contractive and device.type != "cpu":
        raise ValueError("the contractive penalty runs on the CPU only: use --device cpu")
    if amp == "none":
        return None
    if device.type != "cuda":
        raise ValueError(f"--amp {amp} needs --device cuda (mixed precision runs on GPUs only)")
    if quantised_codes:
        raise ValueError(f"--amp {amp} with rate-distortion or quantisation-aware training: codes need fp32")
    return AMP_DTYPES[amp]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision for the forward pass when dtype is set; otherwise nothing."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)

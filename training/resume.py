"""Resumable training: the whole training state in one file, written atomically and read back exactly.

The state holds the weights (and the rate prior's), the optimizer, the learning-rate schedule, the gradient
scaler and clipping history, the divergence guard with its snapshots, every random generator training draws
from, the position (epoch, offset within the epoch's order, global step), the epoch's running loss, the
history and learning curve so far, the early-stopping state, and the training time of every session. A run
resumed from it in one process takes the same steps with the same numbers as a run never interrupted (tested);
under torchrun rank 0's state is restored in every process and the others draw fresh noise.

It loads with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts only.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, asdict, fields
from pathlib import Path

import torch

FORMAT = 1
# Fields a resumed run may change: where and how fast it runs, and when it stops or saves; not what it computes.
FREE_FIELDS = (
    "threads",
    "device",
    "checkpoint_minutes",
    "resume",
    "state",
    "stop_at_step",
    "stop_after_minutes",
    "channels_last",  # step speed only (training/step_speed.py)
    "compile",
)


def state_path_for(out: str | Path) -> Path:
    """runs/x.pt -> runs/x.state.pt: where --checkpoint-minutes writes and --resume reads by default."""
    out = Path(out)
    return out.with_name(out.stem + ".state.pt")


def rng_state(*generators: torch.Generator | None) -> dict:
    """torch's global generator (model noise: quantisation proxy, rate noise) and the given ones (denoising
    corruption, the contractive estimate)."""
    return {
        "torch": torch.get_rng_state(),
        "others": [g.get_state() if g is not None else None for g in generators],
    }


def set_rng_state(state: dict, *generators: torch.Generator | None) -> None:
    torch.set_rng_state(state["torch"])
    for g, s in zip(generators, state["others"]):
        if g is not None and s is not None:
            g.set_state(s)


def write_state(path: Path, state: dict) -> None:
    """Write beside the target and rename: a crash mid-write leaves the previous state intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)


def read_state(path: Path, cfg) -> dict:
    """The saved state, after checking it belongs to this run (same config but for FREE_FIELDS)."""
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise ValueError(f"--resume: {path} is not a readable training state ({exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"--resume: {path} is not a training state of format {FORMAT}")
    want = asdict(cfg)
    saved = state["config"]
    # A field added to the config since the state was written counts as its default (what that run computed).
    defaults = {f.name: f.default for f in fields(cfg) if f.default is not MISSING}
    differ = [k for k in want if k not in FREE_FIELDS and saved.get(k, defaults.get(k)) != want[k]]
    if differ:
        shown = ", ".join(f"{k}: saved {saved.get(k)!r}, now {want[k]!r}" for k in differ[:4])
        raise ValueError(
            f"--resume: {path} was written by a run with other settings ({shown}); resume with the same "
            "settings, or start afresh without --resume (or with another --out)"
        )
    return state


def config_dict(cfg) -> dict:
    return asdict(cfg)

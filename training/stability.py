"""Training that does not spike or diverge: the learning-rate schedule, gradient-norm clipping, and a guard
that rolls back to the last good state at a lower learning rate.

- Schedules: "onecycle" (torch's OneCycleLR: 15 % warm-up from lr/25, cosine down to lr/25e4, momentum
  cycled; what every ladder before this module trained with) and "cosine" (linear warm-up over --warmup of
  the steps, then a half cosine from the peak down to --lr-final times the peak).
- Clipping: the global gradient norm is bounded before the optimizer sees it: a fixed bound, or "auto":
  CLIP_FACTOR times the median of the last CLIP_WINDOW norms, so it adapts to any loss scale (an image of 784
  or 12,288 pixels, any lambda) and cuts only outliers. One outlier batch then cannot fill Adam's second-moment
  estimate with a huge value that freezes learning for the next thousand steps, nor push its first moment far
  along one direction.
- Guard: an exponential moving average of the training loss (the mean over processes under torchrun, so every
  process decides alike) is compared with its lowest value so far; above GUARD_FACTOR times that, or a
  non-finite loss or gradient norm, is a divergence. The guard keeps the two most recent snapshots of the whole
  training state (weights, optimizer, schedule, clipping history, random generators, position), taken every
  SNAPSHOT_EVERY healthy steps, and restores the older one (the newer may already hold the start of the
  blow-up), then multiplies the learning rate by ROLLBACK_LR for the rest of the run. After MAX_ROLLBACKS it
  stops training at the last good state and marks the record diverged.
"""

from __future__ import annotations

import copy
import math
from collections import deque

import torch

SCHEDULES = ("onecycle", "cosine")
CLIP_FACTOR, CLIP_WINDOW, CLIP_MIN_HISTORY = 3.0, 200, 10
GUARD_FACTOR, GUARD_EMA = 4.0, 0.98
SNAPSHOT_EVERY, MAX_ROLLBACKS, ROLLBACK_LR = 100, 4, 0.5


def build_scheduler(
    opt: torch.optim.Optimizer, kind: str, lr: float, total: int, warmup: float, final: float
):
    """The per-step learning-rate schedule (stepped once per optimizer step)."""
    total = max(int(total), 1)
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
    if kind != "cosine":
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
    if not 0.0 <= warmup < 1.0 or not 0.0 <= final <= 1.0:
        raise ValueError(f"--warmup must lie in [0, 1) and --lr-final in [0, 1], got {warmup}, {final}")
    ramp = max(1, round(total * warmup))

    def factor(step: int) -> float:
        if step < ramp:
            return (step + 1) / ramp
        t = min(1.0, (step - ramp) / max(1, total - ramp))
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def parse_clip(value: str | float) -> float:
    """--clip-grad: 'auto' (-1 here), 'off' or 0 (0), or a positive bound on the global gradient norm."""
    text = str(value).strip().lower()
    if text == "auto":
        return -1.0
    if text in ("off", "none", "0"):
        return 0.0
    try:
        bound = float(text)
    except ValueError:
        raise ValueError(f"--clip-grad must be auto, off or a positive number, got {value!r}") from None
    if not bound > 0 or not math.isfinite(bound):
        raise ValueError(f"--clip-grad must be auto, off or a positive number, got {value!r}")
    return bound


class GradClipper:
    """Bounds the global gradient norm: bound > 0 fixed, -1 auto (CLIP_FACTOR x median of recent norms), 0 off."""

    def __init__(self, bound: float):
        self.bound = float(bound)
        self.norms: deque[float] = deque(maxlen=CLIP_WINDOW)
        self.clipped = 0
        self.steps = 0

    def threshold(self) -> float:
        if self.bound > 0:
            return self.bound
        if self.bound == 0 or len(self.norms) < CLIP_MIN_HISTORY:
            return math.inf
        return CLIP_FACTOR * float(torch.tensor(list(self.norms)).median())

    def __call__(self, params) -> float:
        """Clip the gradients in place; -> the norm before clipping (inf/nan when a gradient is not finite)."""
        params = [p for p in params if p.grad is not None]
        limit = self.threshold()
        norm = float(torch.nn.utils.clip_grad_norm_(params, limit if math.isfinite(limit) else math.inf))
        if math.isfinite(norm):
            self.steps += 1
            self.clipped += norm > limit
            self.norms.append(norm)
        return norm

    def state_dict(self) -> dict:
        return {"bound": self.bound, "norms": list(self.norms), "clipped": self.clipped, "steps": self.steps}

    def load_state_dict(self, s: dict) -> None:
        self.bound, self.clipped, self.steps = float(s["bound"]), int(s["clipped"]), int(s["steps"])
        self.norms = deque((float(v) for v in s["norms"]), maxlen=CLIP_WINDOW)

    def report(self) -> dict:
        mode = "auto" if self.bound < 0 else ("off" if self.bound == 0 else self.bound)
        return {"clip_grad": mode, "clipped_steps": self.clipped, "steps": self.steps}


class DivergenceGuard:
    """Watches the training loss; keeps snapshots to roll back to; scales the learning rate down after each."""

    def __init__(
        self, enabled: bool = True, factor: float = GUARD_FACTOR, max_rollbacks: int = MAX_ROLLBACKS
    ):
        self.enabled, self.factor, self.max_rollbacks = enabled, float(factor), int(max_rollbacks)
        self.ema: float | None = None
        self.best = math.inf
        self.lr_scale = 1.0
        self.events: list[dict] = []
        self.snapshots: deque[dict] = deque(maxlen=2)
        self.since_snapshot = 0

    def diverged(self, loss: float, grad_norm: float = 0.0) -> str | None:
        """Update with one step's loss (and gradient norm); -> the reason when this step is a divergence."""
        if not self.enabled:  # still tracks the average, for the records and progress lines
            if math.isfinite(loss):
                self.ema = loss if self.ema is None else GUARD_EMA * self.ema + (1 - GUARD_EMA) * loss
            return None
        if not math.isfinite(loss):
            return f"loss is {loss}"
        if not math.isfinite(grad_norm):
            return f"gradient norm is {grad_norm}"
        self.ema = loss if self.ema is None else GUARD_EMA * self.ema + (1 - GUARD_EMA) * loss
        if self.ema > self.factor * self.best and self.best > 0:
            return f"loss average {self.ema:.4g} is {self.ema / self.best:.1f}x its lowest ({self.best:.4g})"
        self.best = min(self.best, self.ema)
        return None

    def want_snapshot(self) -> bool:
        self.since_snapshot += 1
        return self.enabled and (not self.snapshots or self.since_snapshot >= SNAPSHOT_EVERY)

    def keep(self, state: dict) -> None:
        self.snapshots.append(copy.deepcopy(state))
        self.since_snapshot = 0

    def rollback(self, reason: str, position: dict) -> dict | None:
        """-> the snapshot to restore with the learning rate lowered, or None when rollbacks are used up."""
        event = {**position, "reason": reason, "lr_scale": self.lr_scale * ROLLBACK_LR}
        if len(self.events) >= self.max_rollbacks or not self.snapshots:
            self.events.append({**event, "lr_scale": self.lr_scale, "stopped": True})
            return None
        self.lr_scale *= ROLLBACK_LR
        target = self.snapshots[0]
        self.snapshots.clear()
        self.snapshots.append(target)
        event["back_to_step"] = target["position"]["step"]
        self.events.append(event)
        self.ema, self.best = target["guard_stats"]["ema"], target["guard_stats"]["best"]
        self.since_snapshot = 0
        return copy.deepcopy(target)

    def stats(self) -> dict:
        return {"ema": self.ema, "best": self.best}

    def state_dict(self) -> dict:
        return {
            **self.stats(),
            "lr_scale": self.lr_scale,
            "events": self.events,
            "snapshots": list(self.snapshots),
            "since_snapshot": self.since_snapshot,
        }

    def load_state_dict(self, s: dict) -> None:
        self.ema, self.best, self.lr_scale = s["ema"], float(s["best"]), float(s["lr_scale"])
        self.events = list(s["events"])
        self.snapshots = deque(s["snapshots"], maxlen=2)
        self.since_snapshot = int(s["since_snapshot"])

    def report(self) -> dict:
        return {"guard": self.enabled, "rollbacks": self.events, "lr_scale": self.lr_scale}

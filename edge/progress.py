"""Progress of long single-item work (a photo's tiles, entropy-coding passes) on stderr.

The codec reports (step, done, total) through ``Codec.progress``; this shows one tqdm bar per step, only
once a step has run for a second (short work prints nothing), and never when the user asked for none.
"""

from __future__ import annotations

import sys
from typing import Any


class StepProgress:
    """A ``latent_codec.codec.Progress`` callback: one bar per step name, closed when the step completes."""

    def __init__(self, enabled: bool = True, delay: float = 1.0):
        self.enabled = enabled
        self.delay = delay
        self._bars: dict[str, Any] = {}

    def __call__(self, step: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        bar = self._bars.get(step)
        if bar is None:
            bar = self._bars[step] = tqdm(
                total=total, desc=step, unit="part", delay=self.delay, file=sys.stderr
            )
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
            del self._bars[step]

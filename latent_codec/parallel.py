"""One call's independent parts on several threads: a photo's tiles, the hyper-decoder's strips, groups of items.

Most of what runs in the parts releases Python's lock (ONNX Runtime runs, numpy's matrix products and array
copies), so two threads can finish a big item in little more than half the time when the machine has two cores
free. The entropy coder (constriction) holds the lock while it codes, so coding parts do not overlap each other,
but they overlap the other threads' graph runs and products (docs/speed.md measures which steps release it; its
runs so far had no second core free to show the speed-up).

``Workers.map`` is safe on a pool its caller already runs on (a server's decode threads): the caller takes parts
itself and waits only for parts another thread has *started*, so a call never waits for a pool thread that is
busy elsewhere; helpers that start late find nothing left and return at once. Each part writes its own slice
of an output, so the result does not depend on which thread ran which part, nor on how many threads there are.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["Workers", "pieces"]

P = TypeVar("P")
R = TypeVar("R")

# (step, done, total), as latent_codec.codec.Progress
Report = Callable[[str, int, int], None]


def pieces(n: int, parts: int, least: int) -> list[tuple[int, int]]:
    """[a, b) ranges covering 0..n in order: `parts` of them about equal, none under `least` (one when n is small)."""
    k = max(1, min(parts, n // max(1, least)))
    step = -(-n // k) if n else 1
    return [(a, min(n, a + step)) for a in range(0, n, step)] or [(0, 0)]


class Workers:
    """Up to ``threads`` threads for the parts of one call: the caller's own and helpers from ``executor`` (a
    pool of this object's own, made on first use, when none is given)."""

    def __init__(self, threads: int = 1, executor: Executor | None = None):
        self.threads = max(1, int(threads or os.cpu_count() or 1))
        self._executor = executor
        self._lock = threading.Lock()

    def executor(self) -> Executor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="codec-part")
            return self._executor

    def map(
        self, fn: Callable[[P], R], parts: Sequence[P], report: Report | None = None, step: str = ""
    ) -> list[R]:
        """[fn(p) for p in parts], parts run on up to ``threads`` threads; the first failing part's error (by
        index, among the parts run) is raised after the running parts finish. ``report(step, done, total)``
        hears of each finished part (from the thread that ran it, counted in order of finishing)."""
        n = len(parts)
        if self.threads <= 1 or n <= 1:
            out = []
            for i, p in enumerate(parts):
                out.append(fn(p))
                if report is not None:
                    report(step, i + 1, n)
            return out
        results: list = [None] * n
        errors: list[tuple[int, BaseException]] = []
        cond = threading.Condition()
        state = {"next": 0, "busy": 0, "done": 0}

        def work() -> None:
            while True:
                with cond:
                    if state["next"] >= n or errors:
                        return
                    i = state["next"]
                    state["next"] += 1
                    state["busy"] += 1
                try:
                    results[i] = fn(parts[i])
                except BaseException as exc:  # handed to the caller
                    with cond:
                        errors.append((i, exc))
                finally:
                    with cond:
                        state["busy"] -= 1
                        state["done"] += 1
                        done = state["done"]
                        cond.notify_all()
                if report is not None:
                    report(step, done, n)

        pool = self.executor()
        for _ in range(min(self.threads, n) - 1):
            try:
                pool.submit(work)
            except RuntimeError:  # the pool is shutting down (a server stopping): the caller does it all
                break
        work()
        with cond:
            while state["busy"]:
                cond.wait()
        if errors:
            raise min(errors, key=lambda e: e[0])[1]
        return results

"""A mutation run of our own: one-line faults applied one at a time in a copy of the repository, each followed by
the test files that should catch it. Prints (and with --out writes) a table: mutation, killed or survived, by
which test. docs/mutation.md holds the last run and what each survivor means.

    python -m tools.mutate                      # every mutation (about 20 minutes on a busy 2-core machine)
    python -m tools.mutate --only ingest- --only budget-   # names starting with these
    python -m tools.mutate --list               # the mutations, nothing run

The checkout itself is never edited: the tree is copied to a temporary directory once (.git, caches and runs
left out; symlinks such as .venv and data/ kept as links) and each mutated file is restored there after its
run. A mutation whose original fragment is not found exactly once is an error (the code moved: update it).
Each run has a timeout; a run that hits it counts as killed by the timeout and is reported as such.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns(".git", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", "runs")


@dataclass(frozen=True)
class Mutation:
    """Replace `original` (found exactly once in `path`) by `replacement`; `tests` should then fail."""

    name: str
    path: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    why: str  # the idea switched off or done wrong


RATE = "tests/test_rate_terms.py"
SPATIAL = "tests/test_spatial.py"
TABLES = "tests/test_map_tables_and_pixels.py"
EXACT = "tests/test_map_exactness.py"
ACK = "tests/test_ingest_ack.py"
BUDGET = "tests/test_budget_release.py"
SERVING = "tests/test_serving.py"
RETRY = "tests/test_divergence_retry.py"
STABILITY = "tests/test_stability.py"
RD_BENCH = "tests/test_rd_bench.py"

MUTATIONS: list[Mutation] = [
    # ---- map-codec training: the rate term --------------------------------------------------------------------
    Mutation(
        "rate-no-hyper-bits",
        "training/models/spatial.py",
        "return y_bits + z_bits",
        "return y_bits",
        (RATE, SPATIAL),
        "the hyper-latent's rate dropped from the rate term",
    ),
    Mutation(
        "rate-rounding-not-noise",
        "training/models/spatial.py",
        "r_t = self._noisy(y - mean)",
        "r_t = torch.round(y - mean)",
        (RATE, SPATIAL),
        "mixed mode: the rate of ŷ uses rounding instead of the noise proxy",
    ),
    Mutation(
        "rate-noisy-always-rounds",
        "training/models/spatial.py",
        "return v + torch.empty_like(v).uniform_(-0.5, 0.5) if self.training else torch.round(v)",
        "return torch.round(v)",
        (RATE, SPATIAL),
        "the noise proxy ignored everywhere (ŷ and ẑ rated at rounded values in training)",
    ),
    Mutation(
        "rate-forward-rounds-z",
        "training/models/spatial.py",
        'z_t = self._noisy(side["hyper"]) if proxy',
        'z_t = torch.round(side["hyper"]) if proxy',
        (RATE, SPATIAL),
        "forward() rates ẑ at rounded values: h_a gets no rate gradient",
    ),
    Mutation(
        "rate-no-gaussian-floor",
        "training/models/spatial.py",
        "return (upper - lower).clamp_min(LIKELIHOOD_FLOOR)",
        "return upper - lower",
        (RATE, SPATIAL),
        "the likelihood floor removed (infinite bits far in the tails)",
    ),
    Mutation(
        "rate-no-logistic-floor",
        "training/rate.py",
        "return self._cdf_mass(y - 0.5, y + 0.5).clamp_min(LIKELIHOOD_FLOOR)",
        "return self._cdf_mass(y - 0.5, y + 0.5)",
        (RATE, SPATIAL),
        "the factorised prior's likelihood floor removed",
    ),
    Mutation(
        "rate-gaussian-bin-width",
        "training/models/spatial.py",
        "upper = 0.5 * torch.erfc(-(0.5 - v) / (scale * math.sqrt(2)))",
        "upper = 0.5 * torch.erfc(-(1.5 - v) / (scale * math.sqrt(2)))",
        (RATE, SPATIAL),
        "the Gaussian bin is not the unit bin the coder uses",
    ),
    Mutation(
        "rate-global-noise-off",
        "training/rate.py",
        "return code + torch.empty_like(code).uniform_(-0.5, 0.5) if self.training else torch.round(code)",
        "return torch.round(code)",
        (RATE, "tests/test_training.py"),
        "global codes: the factorised prior's rate at rounded codes in training",
    ),
    Mutation(
        "rate-model-lambda-dropped",
        "training/rate.py",
        "        return dist + self.rd_lambda * bits\n\n    @torch.no_grad()\n    def export_record(self, model, x01: torch.Tensor, batch_size: int = 500",
        "        return dist + bits\n\n    @torch.no_grad()\n    def export_record(self, model, x01: torch.Tensor, batch_size: int = 500",
        (RATE, SPATIAL),
        "map models' objective ignores lambda",
    ),
    # ---- integer table selection and scaling back to pixels ----------------------------------------------------
    Mutation(
        "tables-b2-scaled-once",
        "latent_codec/families/hyper_decoder.py",
        "r(w2, f), r(b2, f * f)",
        "r(w2, f), r(b2, f)",
        (TABLES, SPATIAL, EXACT),
        "from_float scales layer 2's bias by 2^F instead of 2^2F",
    ),
    Mutation(
        "tables-thresholds-scaled-once",
        "latent_codec/families/hyper_decoder.py",
        "r(np.asarray(thresholds), f * f)",
        "r(np.asarray(thresholds), f)",
        (TABLES, SPATIAL, EXACT),
        "from_float puts the thresholds in the wrong units",
    ),
    Mutation(
        "tables-threshold-side-left",
        "latent_codec/families/hyper_decoder.py",
        'return np.searchsorted(self.sorted, u, side="right")',
        'return np.searchsorted(self.sorted, u, side="left")',
        (TABLES, EXACT, SPATIAL),
        "the slow lookup puts an element on a threshold in the lower table",
    ),
    Mutation(
        "tables-fast-lookup-off-by-one",
        "latent_codec/families/hyper_decoder.py",
        "k += u >= self.ext[k + 1]",
        "k += u > self.ext[k + 1]",
        (TABLES, EXACT, SPATIAL),
        "the fast lookup puts an element on a threshold in the lower table",
    ),
    Mutation(
        "tables-no-relu",
        "latent_codec/families/hyper_decoder.py",
        "        np.maximum(a, 0, out=a)\n",
        "",
        (TABLES, SPATIAL, EXACT),
        "the integer hyper-decoder leaves out h_s's ReLU",
    ),
    Mutation(
        "tables-means-unit",
        "latent_codec/families/hyper_decoder.py",
        "unit = 2.0 ** (-2 * self.frac_bits)",
        "unit = 2.0 ** (-self.frac_bits)",
        (TABLES, "tests/test_mean_scale.py"),
        "mean-and-scale: the means in the wrong units",
    ),
    Mutation(
        "pixels-truncate",
        "latent_codec/bundle.py",
        "return np.rint(x).astype(np.uint8)",
        "return x.astype(np.uint8)",
        (TABLES, "tests/test_map_tiles.py"),
        "scaling back to pixels truncates instead of rounding to the nearest level",
    ),
    Mutation(
        "pixels-no-clip",
        "latent_codec/bundle.py",
        "x = np.clip(np.asarray(x_unit, dtype=np.float32), 0.0, 1.0) * np.float32(self.scale)",
        "x = np.asarray(x_unit, dtype=np.float32) * np.float32(self.scale)",
        (TABLES, "tests/test_map_tiles.py"),
        "scaling back to pixels does not clip (uint8 wraps around)",
    ),
    Mutation(
        "pixels-block-rows-skipped",
        "latent_codec/families/code_map.py",
        "for r in range(0, x.shape[2], rows):",
        "for r in range(0, x.shape[2] - rows, rows):",
        ("tests/test_map_tiles.py",),
        "a large item's last block of rows is never scaled back",
    ),
    # ---- the ladder's divergence retry and the guard ------------------------------------------------------------
    Mutation(
        "ladder-retry-same-lr",
        "bench/train_ladder.py",
        '**{**common, "lr": args.lr / 4**k},',
        '**{**common, "lr": args.lr},',
        (RETRY, RD_BENCH),
        "a diverged rung is retried at the same learning rate",
    ),
    Mutation(
        "ladder-no-retry",
        "bench/train_ladder.py",
        "if not diverged(trained, prev_psnr) or attempt == len(cfgs) - 1:",
        "if True:",
        (RETRY, RD_BENCH),
        "a diverged rung is kept, never retried",
    ),
    Mutation(
        "guard-lr-not-lowered",
        "training/stability.py",
        "        self.lr_scale *= ROLLBACK_LR\n",
        "",
        (RETRY, STABILITY),
        "the guard rolls back without lowering the learning rate",
    ),
    Mutation(
        "guard-newer-snapshot",
        "training/stability.py",
        "target = self.snapshots[0]",
        "target = self.snapshots[-1]",
        (RETRY, STABILITY),
        "the guard rolls back to the newer snapshot (which may hold the blow-up)",
    ),
    Mutation(
        "train-lr-scale-not-applied",
        "training/train.py",
        'g["lr"] = lr * guard.lr_scale',
        'g["lr"] = lr',
        (RETRY, STABILITY),
        "training ignores the guard's lowered rate",
    ),
    # ---- serving budgets -------------------------------------------------------------------------------------
    Mutation(
        "budget-held-not-released-on-error",
        "cloud/limits.py",
        "    async def __aexit__(self, *exc: object) -> None:\n        self.budget.bytes.release(self.taken[0])",
        "    async def __aexit__(self, *exc: object) -> None:\n        if exc[0] is not None:\n"
        "            return\n        self.budget.bytes.release(self.taken[0])",
        (BUDGET, SERVING),
        "a request failing inside the decode budget keeps its bytes and seconds",
    ),
    Mutation(
        "budget-inflight-not-released-on-error",
        "cloud/limits.py",
        "    async def __aexit__(self, *exc: object) -> None:\n        self.budget.release(self.taken)",
        "    async def __aexit__(self, *exc: object) -> None:\n        if exc[0] is None:\n"
        "            self.budget.release(self.taken)",
        (BUDGET, SERVING),
        "InFlight.hold keeps the bytes of a block that raised",
    ),
    Mutation(
        "budget-bytes-kept-when-seconds-cancelled",
        "cloud/limits.py",
        "        except BaseException:\n            self.budget.bytes.release(nbytes)\n            raise",
        "        except BaseException:\n            raise",
        (BUDGET, SERVING),
        "a request cancelled while waiting for seconds keeps the bytes it took",
    ),
    Mutation(
        "budget-stream-release-only-on-success",
        "cloud/batching.py",
        "                yield reply  # the bytes stay counted until the consumer has sent the reply, or the call is gone\n"
        "            finally:\n                ahead.release()\n                budget.release(taken)",
        "                yield reply  # the bytes stay counted until the consumer has sent the reply, or the call is gone\n"
        "                budget.release(taken)\n            finally:\n                ahead.release()",
        (BUDGET, SERVING),
        "a streamed request whose decoding fails keeps its read-ahead bytes",
    ),
    Mutation(
        "budget-waiter-granted-over-capacity",
        "cloud/limits.py",
        "            if self.used + nbytes > self.capacity:\n                return",
        "            if self.used > self.capacity:\n                return",
        (BUDGET, SERVING),
        "waiters are granted bytes that do not fit",
    ),
    Mutation(
        "budget-cancelled-grant-lost",
        "cloud/limits.py",
        "            if entry[1].done() and not entry[1].cancelled():  # granted, then cancelled before it could run\n"
        "                self.release(nbytes)",
        "            if entry[1].done() and not entry[1].cancelled():  # granted, then cancelled before it could run\n"
        "                pass",
        (BUDGET, SERVING),
        "a caller granted its bytes but cancelled before it ran keeps them",
    ),
    # ---- ingest: the sender and the spool ------------------------------------------------------------------------
    Mutation(
        "ingest-remove-before-check",
        "edge/sender.py",
        "                if batch is None or req is None or not framing.acknowledges(req, ack):\n"
        "                    raise CloudError(\n"
        '                        "the cloud acknowledged items this client did not send in that order; "\n'
        '                        "stopping with everything unacknowledged still spooled"\n'
        "                    )\n"
        "                self.spool.remove(batch)\n",
        "                if batch is not None:\n"
        "                    self.spool.remove(batch)\n"
        "                if batch is None or req is None or not framing.acknowledges(req, ack):\n"
        "                    raise CloudError(\n"
        '                        "the cloud acknowledged items this client did not send in that order; "\n'
        '                        "stopping with everything unacknowledged still spooled"\n'
        "                    )\n",
        (ACK, "tests/test_ingest_faults.py"),
        "a batch leaves the spool before its acknowledgement is checked",
    ),
    Mutation(
        "ingest-ack-unchecked",
        "edge/sender.py",
        "if batch is None or req is None or not framing.acknowledges(req, ack):",
        "if batch is None or req is None:",
        (ACK, "tests/test_ingest_faults.py"),
        "any acknowledgement removes the oldest batch",
    ),
    Mutation(
        "ingest-acks-prefix",
        "latent_codec/framing.py",
        "return list(received.item_ids) == list(want.item_ids) and list(received.item_seqs) == list(want.item_seqs)",
        "return set(received.item_seqs) <= set(want.item_seqs) and set(received.item_ids) <= set(want.item_ids)",
        (ACK, "tests/test_ingest_rpc.py"),
        "an ack naming only some of the request's items counts as the whole request's",
    ),
    Mutation(
        "spool-remove-nothing",
        "edge/spool.py",
        'db.executemany("DELETE FROM items WHERE seq = ?", [(it.seq,) for it in items])',
        'db.executemany("DELETE FROM items WHERE seq = ?", [(it.seq,) for it in items[:-1]])',
        (ACK, "tests/test_ingest_faults.py"),
        "the spool forgets all but the last acknowledged item (it is sent again)",
    ),
    Mutation(
        "spool-peek-skips",
        "edge/spool.py",
        '"SELECT seq, item_id, bundle_id, payload, captured_at_ms, original, name FROM items WHERE seq > ? "',
        '"SELECT seq, item_id, bundle_id, payload, captured_at_ms, original, name FROM items WHERE seq > ? + 1 "',
        (ACK, "tests/test_ingest_faults.py"),
        "the sender's read of the spool skips an item after each batch",
    ),
    # ---- fine-tuning from another model: its trained entropy model comes along ----------------------------------
    Mutation(
        "finetune-refits-prior",
        "training/rate.py",
        "        self._started = bool(prior_trained)",
        "        self._started = False",
        ("tests/test_spatial_options.py",),
        "a fine-tune fits its start's trained prior to the first batch's codes again",
    ),
    Mutation(
        "checkerboard-start-without-hyperprior",
        "training/models/spatial.py",
        "            for name in hyper:",
        "            for name in ():",
        ("tests/test_spatial_options.py",),
        "a checkerboard model started from mean-and-scale takes the transforms but not the trained hyperprior",
    ),
    # ---- the range coder's termination, canonical check and the short size header ------------------------------
    Mutation(
        "range-seal-not-shortest",
        "latent_codec/ans.py",
        "value = shortest_in(lo, lo + span - 1)",
        "value = lo + span - 1",
        ("tests/test_entropy_coding.py",),
        "the range coder ends on the top of its final interval instead of its shortest value",
    ),
    Mutation(
        "range-no-canonical-check",
        "latent_codec/ans.py",
        "if self._popped is not None and self._popped.finish() != self._data:",
        "if False:",
        ("tests/test_entropy_coding.py",),
        "a range-coded payload with bytes the encoder would not have written is accepted",
    ),
    Mutation(
        "map-size-flag-boundary",
        "latent_codec/families/code_map.py",
        "if head < _SIZE_MODELS.nominal_below and",
        "if head <= _SIZE_MODELS.nominal_below and",
        ("tests/test_codemap.py",),
        "the size flag read without a decoder disagrees with the decoder at its boundary",
    ),
    Mutation(
        "map-no-nominal-header",
        "latent_codec/families/code_map.py",
        "if (h, w) == self.nominal_size:",
        "if False:",
        ("tests/test_codemap.py",),
        "every map payload spells out its size, the trained size too",
    ),
    # ---- rate-aware rounding at the encoder ---------------------------------------------------------------------
    Mutation(
        "rounding-ignores-rates",
        "latent_codec/rd_rounding.py",
        "t = 0.5 + 0.5 * self.kappa * extra",
        "t = 0.5 + 0.0 * extra",
        ("tests/test_rd_rounding.py",),
        "residuals rounded to the nearest integer whatever their bits cost",
    ),
    Mutation(
        "rounding-wrong-neighbour",
        "latent_codec/rd_rounding.py",
        "up = f > self.thresholds[np.asarray(idx, np.intp), s]",
        "up = f < self.thresholds[np.asarray(idx, np.intp), s]",
        ("tests/test_rd_rounding.py",),
        "the rounding sends the neighbour of higher cost",
    ),
    Mutation(
        "rounding-anchors-full-kappa",
        "latent_codec/families/checkerboard.py",
        "k_anchor = kappa * ANCHOR_ROUNDING",
        "k_anchor = kappa",
        ("tests/test_rd_rounding.py",),
        "the checkerboard's anchors rounded at the non-anchors' strength",
    ),
    Mutation(
        "rounding-off-by-default",
        "latent_codec/families/mean_scale.py",
        "    rounding: float = DEFAULT_KAPPA",
        "    rounding: float = 0.0",
        ("tests/test_rd_rounding.py",),
        "the mean-and-scale encoder sends plain rounding unless asked",
    ),
    Mutation(
        "meanscale-second-hyper-pass",
        "latent_codec/families/mean_scale.py",
        "return p.residual_symbols(y, mu, idx, self.rounding), idx",
        "return p.residual_symbols(y, mu, idx, self.rounding), None",
        ("tests/test_rd_rounding.py",),
        "a mean-and-scale encode runs the hyper-decoder twice",
    ),
    # ---- deeper code maps (stride 8 / 16) -----------------------------------------------------------------------
    Mutation(
        "deep-decode-tile-in-elements",
        "latent_codec/families/code_map.py",
        "return max(2, DECODE_TILE * 4 // self.payload.stride)",
        "return DECODE_TILE",
        ("tests/test_deep_maps.py",),
        "a stride-16 map's synthesis tiles hold 16 times the pixels of a stride-4 map's",
    ),
    Mutation(
        "deep-probe-too-small",
        "latent_codec/families/code_map.py",
        "side = max(128, 16 * self._align())",
        "side = 128",
        ("tests/test_deep_maps.py",),
        "the receptive-field probe of a deep encoder is too small for its ẑ map: big items are not tiled",
    ),
    Mutation(
        "deep-family-unnamed",
        "bench/families.py",
        'name += f"-s{int(stride)}"',
        "pass",
        ("tests/test_photo_rd.py",),
        "the benchmarks merge a deeper ladder into the default ladder's curve",
    ),
    Mutation(
        "step-speed-no-compile",
        "training/step_speed.py",
        "    if compile_forward:",
        "    if False:",
        ("tests/test_step_speed.py",),
        "--compile is accepted and ignored",
    ),
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.mutate", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", action="append", default=[], help="run mutations whose name starts with this")
    p.add_argument("--list", action="store_true", help="list the mutations and exit")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per mutation's test run")
    p.add_argument("--marks", default="not slow", help='pytest -m expression ("" for every test)')
    p.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    p.add_argument(
        "--skip",
        action="append",
        default=[],
        help="leave this test file out of every run (e.g. the new tests, to see what the others catch)",
    )
    p.add_argument("--keep", action="store_true", help="keep the temporary copy (its path is printed)")
    return p.parse_args(argv)


def _check(mutations: list[Mutation], root: Path) -> None:
    for m in mutations:
        text = (root / m.path).read_text()
        n = text.count(m.original)
        if n != 1:
            raise SystemExit(
                f"mutation {m.name}: the original fragment occurs {n} times in {m.path} (update it)"
            )
        for t in m.tests:
            if not (root / t.split("::")[0]).is_file():
                raise SystemExit(f"mutation {m.name}: no test file {t}")


def _killer(output: str) -> str:
    """The first failing test pytest names (FAILED/ERROR lines of its short summary)."""
    found = re.search(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", output, re.M)
    return found.group(1) if found else ""


def run_one(m: Mutation, copy: Path, timeout: float, marks: str) -> tuple[str, str, float]:
    """Apply m in the copy, run its tests, restore. -> (outcome, by which test or why, seconds)."""
    target = copy / m.path
    original = target.read_text()
    target.write_text(original.replace(m.original, m.replacement, 1))
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rfE", *m.tests]
    if marks:
        cmd += ["-m", marks]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(copy)}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=copy,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a timeout ends the tests' children too
        preexec_fn=lambda: os.nice(5),
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return "killed (timeout)", f"no result within {timeout:g} s", time.monotonic() - t0
    finally:
        target.write_text(original)
    seconds = time.monotonic() - t0
    if code == 0:
        return "SURVIVED", "", seconds
    if code == 1:
        return "killed", _killer(out), seconds
    if code == 5:  # every test deselected (e.g. only slow ones, with -m "not slow"): nothing could catch it
        return "SURVIVED (no test ran)", "every test of these files deselected", seconds
    tail = " ".join(out.strip().splitlines()[-2:])[:160]
    return f"error (pytest exit {code})", tail, seconds


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or any(m.name.startswith(o) for o in args.only)]
    if args.skip:
        chosen = [
            replace(m, tests=tuple(t for t in m.tests if t.split("::")[0] not in args.skip)) for m in chosen
        ]
        chosen = [m for m in chosen if m.tests]
    _check(chosen, ROOT)
    if args.list:
        for m in chosen:
            print(f"{m.name:42} {m.path:42} {m.why}")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="mutate-"))
    copy = tmp / ROOT.name
    shutil.copytree(ROOT, copy, symlinks=True, ignore=IGNORE)
    rows = []
    try:
        for m in chosen:
            outcome, by, seconds = run_one(m, copy, args.timeout, args.marks)
            rows.append((m, outcome, by, seconds))
            print(f"{m.name:42} {outcome:18} {seconds:6.0f} s  {by}", flush=True)
    finally:
        if args.keep:
            print(f"copy kept in {copy}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    table = [
        "| mutation | file | what it breaks | outcome | by | s |",
        "|---|---|---|---|---|---|",
        *(
            f"| {m.name} | {m.path} | {m.why} | {outcome} | {by.replace('|', '/') or '-'} | {seconds:.0f} |"
            for m, outcome, by, seconds in rows
        ),
    ]
    killed = sum(o.startswith("killed") for _, o, _, _ in rows)
    summary = f"{killed} of {len(rows)} mutations killed; survivors: " + (
        ", ".join(m.name for m, o, _, _ in rows if o.startswith("SURVIVED")) or "none"
    )
    print("\n".join(table))
    print(summary)
    if args.out:
        args.out.write_text("\n".join(table) + "\n\n" + summary + "\n")
    return 0 if all(o.startswith("killed") for _, o, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

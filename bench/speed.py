"""Map-codec speed and memory, measured in one run beside the old code path; writes docs/speed.md.

    python -m bench.speed --out docs/speed.md          # the committed report (make bench-speed)
    python -m bench.speed --quick --out /tmp/speed.md  # fewer repeats, shorter serving cells

What it measures (issue 21), one thread throughout (ONNX Runtime sessions with 1 intra-op thread, BLAS limited
to 1 thread) except where two threads are named, old and new alternated in the same process so the shared machine's load hits both alike:
- 28x28 items at batch 256: encode and decode ms per item, split into the ONNX graphs, table selection and
  entropy coding, for today's code and for the old path (bench/map_reference.py);
- grey photographs (scikit-image's samples and a 4 MP mosaic of them): seconds per megapixel to encode and
  decode, old and new;
- a 12-megapixel grey photo end to end: `python -m edge.cli encode` in a child process, then a real
  `python -m cloud.server` process decoding it for a CloudClient, with each side's wall time, CPU time and
  peak RSS (the kernel's accounting: wait4 for the edge, VmHWM for the server), on one thread each side and
  on two (edge --threads 2, server --decode-workers 2), checking both give the same bytes;
- bench/serving.py's zoo rows: a conv bundle beside the recommended map bundle behind a real server.
Times are CPU seconds of this (single-threaded) process where the machine's load would otherwise count other
processes' time; wall-clock figures are given beside them. The report states the machine and its load.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MAP_BUNDLES = (
    "zoo/spatial-lambda-0.0032",
    "zoo/spatial-factorized-lambda-0.0064",
    "zoo/spatial-lambda-0.0004",
)
# The Fashion-MNIST map bundles on grey photos, and the photo zoo's (colour, docs/photo_training.md) middle and
# highest-rate mean-and-scale rungs and its middle checkerboard rung on colour photos, and the deeper (stride-8)
# ladder's middle rungs of both families: what a user who sends photographs runs.
PHOTO_BUNDLES = (
    "zoo/spatial-lambda-0.0032",
    "zoo/spatial-factorized-lambda-0.0064",
    "zoo/photo/photo-lambda-0.005",
    "zoo/photo/photo-lambda-0.0012",
    "zoo/photo/photo-checkerboard-lambda-0.005",
    "zoo/photo/photo-deep-lambda-0.005",
    "zoo/photo/photo-deep-checkerboard-lambda-0.005",
)
E2E_BUNDLE = "zoo/spatial-lambda-0.0032"
BIG = (3000, 4000)  # the 12-megapixel photo


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench.speed", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("docs/speed.md"))
    p.add_argument(
        "--repeats", type=int, default=5, help="timed repeats per measurement (the median is kept)"
    )
    p.add_argument("--serving-seconds", type=float, default=4.0, help="duration of each serving cell")
    p.add_argument("--quick", action="store_true", help="2 repeats, 2 s serving cells, no old photo path")
    p.add_argument("--work-dir", type=Path, default=None)
    return p.parse_args(argv)


# ---- the machine ------------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem = next(
        int(ln.split()[1])
        for ln in Path("/proc/meminfo").read_text().splitlines()
        if ln.startswith("MemTotal")
    )
    import onnxruntime

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gib": mem / 2**20,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
        "load": os.getloadavg(),
        "reference_gflops": reference_gflops(),
    }


def reference_gflops(n: int = 1024, repeats: int = 5) -> float:
    """A fixed workload's speed, to compare runs on different machines of one kind: GFLOP/s of an n x n float64
    matrix product on one BLAS thread (best CPU time of the repeats). Machines sold under one CPU name differ."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a, b = rng.random((n, n)), rng.random((n, n))
    best = float("inf")
    with threadpool_limits(limits=1, user_api="blas"):
        a @ b
        for _ in range(repeats):
            c0 = time.process_time()
            a @ b
            best = min(best, time.process_time() - c0)
    return 2 * n**3 / max(best, 1e-9) / 1e9


def busy_processes() -> list[str]:
    """Other processes using the CPU right now (what shares the machine with this run)."""
    out = subprocess.run(
        ["ps", "-eo", "pcpu,comm", "--sort=-pcpu", "--no-headers"], capture_output=True, text=True
    )
    rows = [ln.split(None, 1) for ln in out.stdout.splitlines() if ln.strip()]
    return [f"{c.strip()} {float(p):.0f} %" for p, c in rows[:8] if float(p) >= 5 and c.strip() != "ps"]


# ---- timing -----------------------------------------------------------------------------------------------
def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median CPU seconds, median wall seconds) of fn() over repeats runs (one warm-up first)."""
    fn()
    cpu, wall = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - t0)
    return float(np.median(cpu)), float(np.median(wall))


def split_small(codec, x: np.ndarray, repeats: int) -> dict:
    """Per-item ms (CPU) of encode/decode and of their parts, new and old, on one batch of small items."""
    from bench import map_reference as ref

    p = codec.payload
    n, _, h, w = x.shape
    sizes = np.tile(np.asarray([h, w], np.int64), (n, 1))
    y, side = codec.analyse(codec.scale(x))
    y_sym = codec.quantise(y)
    z = p.z_symbols(side["hyper"]) if p.has_hyper else None
    payloads = codec.encode(x)
    idx = p.table_indices(y_sym.shape, z)
    old_idx = ref.table_indices(p, y_sym.shape, z)
    dsym, dside = codec.symbols(payloads)

    def graphs_encode() -> None:
        y, side = codec.analyse(codec.scale(x))
        codec.quantise(y)
        if z is not None:
            p.z_symbols(side["hyper"])

    def entropy_only(fn: Callable[[], object]) -> Callable[[], object]:
        """fn with the table selection answered from a precomputed array: the coder alone."""

        def run() -> object:
            p.table_indices = lambda shape, zs, workers=None: idx  # type: ignore[method-assign]
            try:
                return fn()
            finally:
                del p.table_indices

        return run

    parts = {
        "new": {
            "encode": lambda: codec.encode(x),
            "decode": lambda: codec.decode(payloads),
            "encode graphs": graphs_encode,
            "decode graphs": lambda: codec.unscale(codec.synthesise(codec.dequantise(dsym, dside), dside)),
            "tables": lambda: p.table_indices(y_sym.shape, z),
            "encode entropy": entropy_only(lambda: p.pack(sizes, y_sym, z)),
            "decode entropy": entropy_only(lambda: p.unpack(payloads)),
        },
        "old": {
            "encode": lambda: ref.encode(codec, x),
            "decode": lambda: ref.decode(codec, payloads),
            "encode graphs": graphs_encode,
            "decode graphs": lambda: codec.unscale(codec.synthesise(codec.dequantise(dsym, dside), dside)),
            "tables": lambda: ref.table_indices(p, y_sym.shape, z),
            "encode entropy": lambda: ref.pack(p, sizes, y_sym, z, idx=old_idx),
            "decode entropy": lambda: ref.unpack(p, payloads, idx_fn=lambda shape, zs: old_idx),
        },
    }
    assert ref.encode(codec, x) == payloads, "the old path must give the same bytes"
    out: dict = {"new": {}, "old": {}}
    for name in parts["new"]:
        for which in ("old", "new"):  # alternated: the machine's load falls on both
            cpu, wall = timed(parts[which][name], repeats)
            out[which][name] = (1e3 * cpu / n, 1e3 * wall / n)
    out["bytes"] = float(np.mean([len(b) for b in payloads]))
    out["floor"] = floor(codec, idx, y_sym, z, repeats)
    return out


def floor(codec, idx: np.ndarray, y_sym: np.ndarray, z: np.ndarray | None, repeats: int) -> dict:
    """What the new path's table selection and entropy coding cannot go below as built: the coder's own calls
    (one per table run, as many as the tables an item uses) with nothing else around them, and the hyper-decoder's
    multiply-adds per item (float64 products: its exactness bound is past float32's 2^24)."""
    from latent_codec import ans
    from latent_codec.families.code_map import _TableRuns

    p = codec.payload
    n = len(y_sym)
    runs = _TableRuns(idx, p._y_models, presorted=p.entropy == "factorized")
    ordered = runs.sort(y_sym).astype(np.int32)
    items = [runs.item(j) for j in range(n)]
    calls = float(np.mean([len(s) for s, _, _ in items])) + (1.0 if z is not None else 0.0)

    def bare() -> None:  # ŷ's runs only: each item's stream in the bundle's coder, one encode call per run
        for j, (starts, ends, models) in enumerate(items):
            enc = ans.encoder(p.coder)
            enc.push_runs(ordered[j], starts, ends, models)
            enc.finish()

    cpu, _ = timed(bare, repeats)
    macs = 0.0
    bound = None
    if p.has_hyper and p.hyper_decoder is not None:
        hd = p.hyper_decoder
        nh, m = hd.w1.shape[0], hd.w2.shape[0]
        hz, wz = z.shape[2:] if z is not None else (0, 0)
        h, w = y_sym.shape[2:]
        macs = float(hz * wz * 4 * (4 * nh) * nh + h * w * 9 * nh * m)  # layer 1 by phases, layer 2
        bound = p.exactness().largest.bit_length()
    return {"calls": calls, "bare_ms": 1e3 * cpu / n, "macs": macs, "bound_bits": bound}


# ---- which steps release Python's lock ---------------------------------------------------------------------
def _alongside(fn: Callable[[], object], seconds: float) -> tuple[float, float]:
    """fn in a loop on one thread while another thread spins in pure Python for `seconds`: (fn's thread CPU s,
    the spinner's CPU s). A step that holds Python's lock starves the spinner (it runs only between calls); one
    that releases it lets the spinner run beside it, as far as the machine gives the process a core."""
    import threading

    stop = threading.Event()
    got: dict[str, float] = {}

    def work() -> None:
        c0 = time.thread_time()
        while not stop.is_set():
            fn()
        got["work"] = time.thread_time() - c0

    def spin() -> None:
        c0 = time.thread_time()
        while not stop.is_set():
            pass
        got["spin"] = time.thread_time() - c0

    threads = [threading.Thread(target=work), threading.Thread(target=spin)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return got["work"], got["spin"]


def _pair(fa: Callable[[], object], fb: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(best wall s of fa(); fb() on one thread, best wall s of fa and fb on two threads at once)."""
    import threading

    one = two = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fa()
        fb()
        one = min(one, time.perf_counter() - t0)
        ts = [threading.Thread(target=f) for f in (fa, fb)]
        t0 = time.perf_counter()
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        two = min(two, time.perf_counter() - t0)
    return one, two


def lock_release(codec, x: np.ndarray, repeats: int) -> list[dict]:
    """Per decode step of two disjoint 256-item payload groups: one thread doing both vs two threads one each
    (wall), and a pure-Python spinner's CPU share beside the step in a loop (does the step release the lock?)."""
    from latent_codec.families.code_map import _TableRuns

    p = codec.payload
    groups = [codec.encode(x[:256]), codec.encode(x[256:512])]
    unpacked = [p.unpack(g) for g in groups]
    idx = [p.table_indices(y.shape, z) for _, y, z in unpacked]
    codes = [codec.dequantise(y) for _, y, _ in unpacked]
    sides = [{"size": sizes} for sizes, _, _ in unpacked]

    def entropy(k: int) -> Callable[[], object]:
        """The coder's part of unpacking: ẑ and ŷ popped under tables known in advance (constriction)."""
        sizes, y, z = unpacked[k]
        hz, wz = z.shape[2:] if z is not None else (0, 0)
        starts = p._headers(groups[k])[1]

        def run() -> None:
            runs = _TableRuns(idx[k], p._y_models)
            out = runs.empty()
            zz = np.empty_like(z) if z is not None else None
            for j, (payload, pos) in enumerate(zip(groups[k], starts)):
                dec = p.open(payload, pos)
                if zz is not None:
                    p._pop_z(dec, zz[j].reshape(-1), hz, wz)
                a, b, t = runs.item(j)
                dec.pop_runs(out[j], a, b, t)

        return run

    import constriction

    rng = np.random.default_rng(0)
    model = constriction.stream.model.Categorical(np.full(64, 1 / 64), perfect=False)
    long = rng.integers(0, 64, 1 << 21).astype(np.int32)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(long, model)
    words = coder.get_compressed()
    a, w = rng.random((1 << 15, 288)), rng.random((288, 32))

    steps: dict[str, Callable[[int], Callable[[], object]]] = {
        "one constriction call (2^21 symbols)": lambda k: (
            lambda: constriction.stream.stack.AnsCoder(words).decode(model, len(long))
        ),
        "one float64 matrix product (2^15 x 288 x 32)": lambda k: lambda: a @ w,
        "entropy decoding (constriction, one call per run)": entropy,
        "table selection (numpy, BLAS)": lambda k: (
            lambda: p.table_indices(unpacked[k][1].shape, unpacked[k][2])
        ),
        "synthesis (ONNX Runtime)": lambda k: lambda: codec.synthesise(codes[k], sides[k]),
        "whole decode": lambda k: lambda: codec.decode(groups[k]),
    }
    rows = []
    for name, make in steps.items():
        one, two = _pair(make(0), make(1), repeats)
        work, spin = _alongside(make(0), 1.5)
        rows.append({"step": name, "one": one, "two": two, "work_cpu": work, "spin_cpu": spin})
        print(rows[-1], file=sys.stderr)
    return rows


# ---- photos -----------------------------------------------------------------------------------------------
def grey_photos() -> dict[str, np.ndarray]:
    """scikit-image's sample photographs as grey uint8 (1, 1, H, W) items."""
    return sample_photos(1)


def sample_photos(channels: int) -> dict[str, np.ndarray]:
    """scikit-image's sample photographs as uint8 (1, C, H, W) items: grey (C = 1) or RGB (C = 3; the grey
    samples repeated over the three channels)."""
    from skimage import data
    from skimage.color import rgb2gray

    out = {}
    for name in ("camera", "moon", "coins", "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field"):
        img = getattr(data, name)()
        if img.ndim == 3 and channels == 1:
            img = (rgb2gray(img[..., :3]) * 255).round().astype(np.uint8)[..., None]
        elif img.ndim == 3:
            img = img[..., :3]
        else:
            img = np.repeat(img[..., None], channels, axis=2)
        out[name] = np.ascontiguousarray(img.transpose(2, 0, 1)[None].astype(np.uint8))
    return out


def mosaic(photos: dict[str, np.ndarray], h: int, w: int) -> np.ndarray:
    """An h x w photo: the sample photographs tiled (reflected at the seams) and cropped."""
    rows, y = [], 0
    names = list(photos)
    k = 0
    while y < h:
        row, x, rh = [], 0, 512
        while x < w:
            p = photos[names[k % len(names)]][0]
            k += 1
            p = np.pad(p, ((0, 0), (0, max(0, rh - p.shape[1])), (0, 0)), mode="reflect")[:, :rh]
            row.append(p)
            x += p.shape[2]
        rows.append(np.concatenate(row, axis=2)[:, :, :w])
        y += rh
    return np.ascontiguousarray(np.concatenate(rows, axis=1)[None, :, :h, :w])


def photo_rates(codec, items: list[np.ndarray], old: bool) -> dict:
    """CPU seconds per megapixel to encode and decode the items (one at a time), new and (optionally) old."""
    from bench import map_reference as ref

    mp = sum(x.shape[2] * x.shape[3] for x in items) / 1e6
    out = {}
    paths = {"new": (codec.encode, lambda p: codec.decode(p))}
    if old:
        paths["old"] = (lambda x: ref.encode(codec, x), lambda p: ref.decode(codec, p))
    for which, (enc, dec) in paths.items():
        ce = we = cd = wd = 0.0
        for x in items:
            c0, t0 = time.process_time(), time.perf_counter()
            payloads = enc(x)
            c1, t1 = time.process_time(), time.perf_counter()
            dec(payloads)
            ce, we = ce + c1 - c0, we + t1 - t0
            cd, wd = cd + time.process_time() - c1, wd + time.perf_counter() - t1
        out[which] = {"encode": ce / mp, "decode": cd / mp, "encode_wall": we / mp, "decode_wall": wd / mp}
    out["mp"] = mp
    return out


# ---- a 12 MP photo end to end -----------------------------------------------------------------------------
def _vm(pid: int, field: str) -> float:
    """A process's VmHWM (peak) or VmRSS in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


# A child's ru_maxrss from wait4 starts at its parent's RSS when it was forked (the high-water mark survives
# exec), so the command runs under a small Python that forks it and reports what wait4 says of it.
_RUSAGE_WRAPPER = (
    "import json, os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execvp(sys.argv[1], sys.argv[1:])\n"
    "_, status, ru = os.wait4(pid, 0)\n"
    "print(json.dumps({'code': os.waitstatus_to_exitcode(status), 'maxrss_kib': ru.ru_maxrss,\n"
    "                  'cpu': ru.ru_utime + ru.ru_stime}))\n"
)


def child_rusage(cmd: list[str], env: dict) -> tuple[float, dict]:
    """Run cmd; (wall seconds, {'cpu': s, 'maxrss_kib': peak RSS of the command itself})."""
    import json

    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _RUSAGE_WRAPPER, *cmd], cwd=ROOT, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    usage = (
        json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {"code": done.returncode}
    )
    if done.returncode or usage["code"]:
        raise RuntimeError(f"{shlex.join(cmd)} failed: {done.stderr[-2000:]}")
    return wall, usage


def end_to_end(photo: np.ndarray, work: Path, threads: int = 1) -> dict:
    """edge.cli encode in a child process, then a real server process decodes the payload for a CloudClient;
    `threads` for both: the edge's --threads, the server's --decode-workers (ONNX Runtime one thread per run:
    the threads run a photo's tiles and strips, latent_codec/parallel.py)."""
    import shutil

    from PIL import Image

    from bench.server_process import child_env
    from bench.serving import cpu_seconds
    from edge.client import CloudClient
    from edge.codefile import read_codes
    from latent_codec.codec import Codec
    from latent_codec.container import from_batch

    bundle = ROOT / E2E_BUNDLE
    png, codes = work / "photo-12mp.png", work / f"photo-12mp-{threads}.aec"
    if not png.exists():
        Image.fromarray(photo[0, 0]).save(png)
    env = {**child_env(), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "edge.cli",
        "encode",
        "--bundle",
        str(bundle),
        "--data",
        str(png),
        "--out",
        str(codes),
        "--threads",
        str(threads),
        "--no-progress",
    ]
    wall, usage = child_rusage(cmd, env)
    out = {
        "edge_wall": wall,
        "edge_cpu": usage["cpu"],
        "edge_rss_mib": usage["maxrss_kib"] / 1024,
        "code_bytes": codes.stat().st_size,
        "codes": codes.read_bytes(),
        "threads": threads,
    }
    root = work / "e2e-bundles"
    if not root.exists():
        shutil.copytree(bundle, root / bundle.name)
    # The default per-request budgets refuse one 12 MP grey item (about 550 MB of working memory over
    # --max-decode-mib 64, 28.5 M symbols over max_symbols 2^24): bench/big_item_server.py raises both.
    port_file = work / "e2e-port"
    port_file.unlink(missing_ok=True)
    log = open(work / "e2e-server.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.big_item_server",
            "--max-symbols",
            str(1 << 26),
            "--bundles",
            str(root),
            "--address",
            "127.0.0.1:0",
            "--port-file",
            str(port_file),
            "--log-level",
            "WARNING",
            "--max-decode-mib",
            "1024",
            "--max-decode-seconds",
            "120",
            "--threads",
            "1",
            "--decode-workers",
            str(threads),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {(work / 'e2e-server.log').read_text()[-2000:]}")
            time.sleep(0.05)
        target = f"127.0.0.1:{int(port_file.read_text())}"
        codec = Codec.open(bundle, need=("decoder",), threads=1)
        payloads = from_batch(codec, read_codes(codes).batch)
        out["server_rss_idle_mib"] = _vm(proc.pid, "VmHWM")
        c0, t0 = cpu_seconds([proc.pid]), time.perf_counter()
        with CloudClient(target, timeout=600) as client:
            result = client.decode(codec, payloads)
        out["server_wall"] = time.perf_counter() - t0
        out["server_cpu"] = cpu_seconds([proc.pid]) - c0
        out["server_rss_mib"] = _vm(proc.pid, "VmHWM")
        rec = result.items
        assert rec is not None
        out["rec_sha"] = hashlib.sha256(np.ascontiguousarray(rec).tobytes()).hexdigest()
        mse = float(np.mean((rec.astype(np.float64) - photo.astype(np.float64)) ** 2))
        out["psnr"] = 10 * np.log10(255.0**2 / mse)
        from latent_codec.bundle import load_bundle
        from latent_codec.decode_cost import measure_graph

        codec.graph_cost = measure_graph(
            load_bundle(bundle).decoder_bytes or b""
        )  # as the server does on load
        out["cost"] = codec.decode_costs(payloads, threads)  # as the server prices it on its decode threads
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log.close()
    return out


# ---- report -----------------------------------------------------------------------------------------------
def _ms(v: tuple[float, float]) -> str:
    return f"{v[0]:.3f} ({v[1]:.3f})"


def write_report(path: Path, argv: list[str], r: dict) -> None:
    cmd = "python -m bench.speed" + ("" if not argv else " " + " ".join(shlex.quote(a) for a in argv))
    m = r["machine"]
    la0, la1 = r["machine"]["load"], r["load_end"]
    lines = [
        "# Map-codec speed and memory (issue 21)",
        "",
        f"Generated by `{cmd}` on {r['date']} (commit {r['commit']}) in {r['seconds']:.0f} s; do not edit by hand.",
        "",
        f"**Machine**: {m['cpu']}, {m['cores']} cores, {m['mem_gib']:.0f} GiB; Python {m['python']}, numpy "
        f"{m['numpy']}, ONNX Runtime {m['onnxruntime']}. **Reference**: a 1024x1024 float64 matrix product on one "
        f"BLAS thread ran at {m.get('reference_gflops', float('nan')):.1f} GFLOP/s (machines of one CPU name differ; "
        "compare runs by this). **Load**: the machine is shared with other engineers' "
        f"jobs; load average {la0[0]:.1f} / {la0[1]:.1f} / {la0[2]:.1f} (1/5/15 min) at the start and "
        f"{la1[0]:.1f} / {la1[1]:.1f} / {la1[2]:.1f} at the end on {m['cores']} cores; busiest other processes at "
        f"the start: {', '.join(r['busy']) or 'none'}.",
        "",
        "Everything runs on one thread (ONNX Runtime sessions with one intra-op thread, BLAS limited to one "
        "thread), except the 12 MP photo's second run, on two threads each side. Under that load a process "
        "waits for a core much of the time, so the primary figures are the process's **CPU time** (what one thread spends); wall-clock time is in parentheses. Old and new are "
        "measured alternately in the same process, so the load falls on both.",
        "",
        "## 28x28 items at batch 256: ms per item",
        "",
        "*Old*: the code before issue 21 (bench/map_reference.py: int64 `einsum` table selection, one coder call "
        "per item per table group). *New*: today's (BLAS table selection under the proven bound, the coder's "
        "runs, latent_codec/families/). Both give the same payload bytes (checked in the run). Median of "
        f"{r['repeats']} repeats; CPU ms (wall ms).",
        "",
        "| bundle | bytes/item | path | encode | decode | encode graphs | decode graphs | table selection | "
        "encode entropy | decode entropy | (tables + entropy) / total |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    goals = []
    for name, s in r["small"].items():
        for which in ("old", "new"):
            d = s[which]
            share_e = (d["tables"][0] + d["encode entropy"][0]) / d["encode"][0]
            share_d = (d["tables"][0] + d["decode entropy"][0]) / d["decode"][0]
            lines.append(
                f"| `{name}` | {s['bytes']:.1f} | {which} | {_ms(d['encode'])} | {_ms(d['decode'])} | "
                f"{_ms(d['encode graphs'])} | {_ms(d['decode graphs'])} | {_ms(d['tables'])} | "
                f"{_ms(d['encode entropy'])} | {_ms(d['decode entropy'])} | "
                f"{100 * share_e:.0f} % / {100 * share_d:.0f} % |"
            )
        n, o = s["new"], s["old"]
        lines.append(
            f"| | | **speed-up** | **{o['encode'][0] / n['encode'][0]:.1f}x** | "
            f"**{o['decode'][0] / n['decode'][0]:.1f}x** | | | {o['tables'][0] / n['tables'][0]:.1f}x | "
            f"{o['encode entropy'][0] / n['encode entropy'][0]:.1f}x | "
            f"{o['decode entropy'][0] / n['decode entropy'][0]:.1f}x | |"
        )
        worst = max(n["encode"][0], n["decode"][0])
        share = max(
            (n["tables"][0] + n["encode entropy"][0]) / n["encode"][0],
            (n["tables"][0] + n["decode entropy"][0]) / n["decode"][0],
        )
        goals.append(
            f"- `{name}`: encode {n['encode'][0]:.3f} ms, decode {n['decode'][0]:.3f} ms per item (goal <= 0.5: "
            f"{'met' if worst <= 0.5 else 'not met'}); table selection + entropy coding {100 * share:.0f} % of "
            f"the total at most (goal < 25 %: {'met' if share < 0.25 else 'not met'})."
        )
    lines += [
        "",
        "What the share is made of (new path, one thread): the coder's own calls, one per table run of each item "
        "(the format orders ŷ by table, so an item's runs are the tables it uses; timed bare, the encode calls "
        "and the stream's termination with nothing else around them), and the hyper-decoder's multiply-adds in float64 (its proven bound "
        "is past float32's 2^24, so the products cannot run in float32 and stay exact).",
        "",
        "| bundle | coder calls/item | bare coder ms/item | encode entropy ms/item | hyper-decoder multiply-adds/item "
        "| exactness bound | table selection ms/item | GMAC/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in r["small"].items():
        f, d = s["floor"], s["new"]
        t = d["tables"][0]
        gmacs = f"{f['macs'] / (t * 1e-3) / 1e9:.1f}" if f["macs"] and t > 0 else "-"
        lines.append(
            f"| `{name}` | {f['calls']:.1f} | {f['bare_ms']:.3f} | {d['encode entropy'][0]:.3f} | "
            f"{f['macs'] / 1e6:.2f} M | {'2^' + str(f['bound_bits']) if f['bound_bits'] else '-'} | {t:.3f} | "
            f"{gmacs} |"
        )
    lines += [
        "",
        "## Which decode steps release Python's lock",
        "",
        f"`{E2E_BUNDLE}`, two disjoint groups of 256 items: each step done for both groups on one thread, then on "
        "two threads at once (one group each), best wall time of the repeats; and the step run in a loop on one "
        "thread for 1.5 s while a second thread spins in pure Python, with each thread's CPU seconds. A step that "
        "holds the lock leaves the spinner only the moments between its calls (the first row: one long coder "
        "call); one that releases it lets the spinner run beside it (as far as the loaded machine gives this "
        "process a second core: the speed-up column shows how far). The coder's calls in decoding are short "
        "(one per table run), so the lock changes hands between them. The server splits one request's groups, tiles and strips over its decode threads "
        "(latent_codec/parallel.py), so a group's entropy decoding overlaps another's graph run and products.",
        "",
        "| step | one thread, both groups (ms) | two threads (ms) | speed-up | step's CPU s | spinner's CPU s beside it |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in r["locks"]:
        lines.append(
            f"| {row['step']} | {1e3 * row['one']:.1f} | {1e3 * row['two']:.1f} | {row['one'] / row['two']:.2f}x | "
            f"{row['work_cpu']:.2f} | {row['spin_cpu']:.2f} |"
        )
    synth = next(row for row in r["locks"] if row["step"].startswith("synthesis"))
    lines += [
        "",
        f"Two threads ran ONNX Runtime's synthesis, which releases the lock, {synth['one'] / synth['two']:.2f}x as "
        "fast as one: about the cores this run's process got from the machine, and the most any split (the "
        "12 MP photo's two-thread run, the served 256-item requests) can show in this run.",
    ]
    lines += ["", "## Photographs: CPU seconds per megapixel (wall in parentheses)", ""]
    lines += [
        f"scikit-image's sample photographs ({r['photo_names']}; {r['photos_mp']:.2f} MP in all, one item per "
        f"call) and a {r['mosaic_shape'][0]}x{r['mosaic_shape'][1]} mosaic of them ({r['mosaic_mp']:.1f} MP; items "
        "larger than one tile go through the graphs tile by tile): grey for the grey bundles (Fashion-MNIST's map "
        "bundles), RGB for the photo zoo's colour bundles (the grey samples as three equal channels). Megapixels "
        "count pixels, not values: a colour megapixel is three times the values of a grey one. The old path "
        "runs whole items (grey only).",
        "",
        "| bundle | items | path | encode s/MP | decode s/MP |",
        "|---|---|---|---:|---:|",
    ]
    for name, ph in r["photos"].items():
        colour = "RGB" if ph.get("channels", 1) == 3 else "grey"
        for label, res in (("samples", ph["samples"]), ("mosaic", ph["mosaic"])):
            for which in ("old", "new"):
                if which in res:
                    d = res[which]
                    lines.append(
                        f"| `{name}` | {label}, {colour} | {which} | {d['encode']:.3f} ({d['encode_wall']:.3f}) | "
                        f"{d['decode']:.3f} ({d['decode_wall']:.3f}) |"
                    )
        best = ph["mosaic"]["new"]
        goals.append(
            f"- `{name}` photos: {best['encode']:.2f} s/MP to encode, {best['decode']:.2f} s/MP to decode on one "
            f"thread (CPU; goal <= 0.5: {'met' if max(best['encode'], best['decode']) <= 0.5 else 'not met'})."
        )
    e1, e2 = r["e2e"], r["e2e2"]
    rows = []
    for e in (e1, e2):
        t = e["threads"]
        rows += [
            f"| {t} | edge encode (CLI: read PNG, encode, write) | {e['edge_wall']:.1f} | {e['edge_cpu']:.1f} | "
            f"{e['edge_rss_mib']:.0f} |",
            f"| {t} | server decode (request to reply) | {e['server_wall']:.1f} | {e['server_cpu']:.1f} | "
            f"{e['server_rss_mib']:.0f} |",
            f"| {t} | **total** | **{e['edge_wall'] + e['server_wall']:.1f}** | "
            f"{e['edge_cpu'] + e['server_cpu']:.1f} | |",
        ]
    c1, c2 = e1["cost"], e2["cost"]
    lines += [
        "",
        f"## A {BIG[0]}x{BIG[1]} (12 MP) grey photo end to end",
        "",
        f"`python -m edge.cli encode --bundle {E2E_BUNDLE} --threads N` on a PNG of the mosaic in a child "
        "process, then a real `cloud.server` process (`--decode-workers N --threads 1`: N decode threads, ONNX "
        "Runtime one thread per run) decoding the code file's payload for a CloudClient (uint8 reconstruction in "
        "the reply), for N = 1 and N = 2. With N = 2 both sides run the photo's tiles and the hyper-decoder's "
        "strips on two threads (latent_codec/parallel.py); the entropy coder's one stream per item stays on one. "
        f"The two runs' code files are {'byte-identical' if r['e2e_same_codes'] else 'DIFFERENT'} and their "
        f"reconstructions {'identical' if r['e2e_same_rec'] else 'DIFFERENT'} (checked in the run). Peak RSS is "
        "the kernel's: wait4's ru_maxrss for the edge process (forked from a small wrapper: a child's high-water "
        "mark starts at its parent's), VmHWM for the server (which had started, loaded its bundle and idled at "
        f"{e1['server_rss_idle_mib']:.0f} MiB). The server is the real one (`cloud.server.main`) started through "
        "bench/big_item_server.py with `--max-decode-mib 1024 --max-decode-seconds 120` and a symbol budget of "
        "2^26: its default per-request budgets (64 MiB of working memory, 10 s of estimated CPU, 2^24 code "
        "symbols) refuse one such item. `Codec.decode_costs` is what the budgets count (below). Wall time is "
        "what two threads shorten (CPU time is the work, about the same); under this machine's load a thread "
        "waits for a core much of the time, so both columns are given.",
        "",
        "| threads | side | wall s | CPU s | peak RSS MiB |",
        "|---:|---|---:|---:|---:|",
        *rows,
        "",
        f"Payload {e1['code_bytes']:,} bytes; PSNR {e1['psnr']:.2f} dB. `Codec.decode_costs` of that payload "
        f"(the decoder graph measured as the server measures it on load), on one thread: the graph's working "
        f"memory {int(c1.graph_bytes[0]) / 2**20:.0f} MiB (one tile at a time), unpacking "
        f"{int(c1.unpack_bytes[0]) / 2**20:.0f} MiB, output {int(c1.out_bytes[0]) / 2**20:.0f} MiB, "
        f"{c1.working_bytes(1) / 2**20:.0f} MiB in all; on two threads (two tiles and two strips at once) "
        f"{c2.working_bytes(1) / 2**20:.0f} MiB; {float(c1.seconds[0]):.1f} s of CPU estimated (measured above: "
        f"{e1['server_cpu']:.1f} s on one thread, {e2['server_cpu']:.1f} s on two).",
        "",
    ]
    for e in (e1, e2):
        wall = e["edge_wall"] + e["server_wall"]
        rss = max(e["edge_rss_mib"], e["server_rss_mib"]) * 1.048576
        goals.append(
            f"- 12 MP end to end in <= 10 s, {e['threads']} thread{'s' if e['threads'] > 1 else ''} each side: "
            f"{wall:.1f} s wall under this load ({e['edge_cpu'] + e['server_cpu']:.1f} s of CPU): "
            f"{'met' if wall <= 10 else 'not met'}; peak RSS < 500 MB on each side: edge "
            f"{e['edge_rss_mib'] * 1.048576:.0f} MB, server {e['server_rss_mib'] * 1.048576:.0f} MB: "
            f"{'met' if rss < 500 else 'not met'}."
        )
    from bench.serving import zoo_lines

    lines += [
        "## Served: a conv bundle beside the recommended map bundle",
        "",
        "bench/serving.py's zoo rows: each bundle served alone by a real `python -m cloud.server` process with its "
        "defaults (2 decode threads), Fashion-MNIST's 28x28 test items, clients in this process; the ceiling is "
        "that bundle's own in-process rate (Codec.decode of 256 items on 2 threads) measured just before and just after the "
        f"cell; {r['serving_seconds']:g} s per cell.",
        "",
        *zoo_lines(r["zoo"]),
        "",
        "## Goals",
        "",
        *goals,
    ]
    lines.append("")
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from threadpoolctl import threadpool_limits

    from bench.serving import zoo_rows
    from latent_codec import datasets
    from latent_codec.codec import Codec

    threadpool_limits(1)
    repeats = 2 if args.quick else args.repeats
    serving_seconds = 2.0 if args.quick else args.serving_seconds
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="aecodec-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    r: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": git.stdout.strip(),
        "machine": machine(),
        "busy": busy_processes(),
        "repeats": repeats,
        "serving_seconds": serving_seconds,
    }
    x = datasets.load("fashion-mnist", "test").x[:256]
    r["small"] = {}
    for b in MAP_BUNDLES:
        codec = Codec.open(ROOT / b, threads=1)
        r["small"][Path(b).name] = split_small(codec, x, repeats)
        print(Path(b).name, r["small"][Path(b).name], file=sys.stderr)
    full = datasets.load("fashion-mnist", "test").x[:512]
    r["locks"] = lock_release(Codec.open(ROOT / E2E_BUNDLE, threads=1), full, repeats)
    photos = grey_photos()
    items = list(photos.values())
    big = mosaic(photos, *BIG)
    four = np.ascontiguousarray(big[:, :, :2048, :2048])
    r["photo_names"] = ", ".join(photos)
    r["photos_mp"] = sum(p.shape[2] * p.shape[3] for p in items) / 1e6
    r["mosaic_shape"], r["mosaic_mp"] = four.shape[2:], four.shape[2] * four.shape[3] / 1e6
    r["photos"] = {}
    for b in PHOTO_BUNDLES:
        codec = Codec.open(ROOT / b, threads=1)
        c = codec.input.shape[0]
        ph = photos if c == 1 else sample_photos(c)
        r["photos"][Path(b).name] = {
            "channels": c,
            "samples": photo_rates(codec, list(ph.values()), old=not args.quick and c == 1),
            "mosaic": photo_rates(codec, [four if c == 1 else mosaic(ph, 2048, 2048)], old=False),
        }
        print(Path(b).name, r["photos"][Path(b).name], file=sys.stderr)
    r["e2e"] = end_to_end(big, work, threads=1)
    r["e2e2"] = end_to_end(big, work, threads=2)
    r["e2e_same_codes"] = r["e2e"].pop("codes") == r["e2e2"].pop("codes")
    r["e2e_same_rec"] = r["e2e"]["rec_sha"] == r["e2e2"]["rec_sha"]
    print(r["e2e"], r["e2e2"], file=sys.stderr)
    r["zoo"] = zoo_rows([ROOT / b for b in ("zoo/conv-lambda-0.1", E2E_BUNDLE)], x, work, serving_seconds)
    r["load_end"] = os.getloadavg()
    r["seconds"] = time.perf_counter() - t_start
    write_report(args.out, list(argv if argv is not None else sys.argv[1:]), r)
    print(
        f"wrote {args.out} (peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What decoding costs: bytes of working memory and CPU seconds, per item, known before anything is decoded.

A payload of a few bytes can name an item whose decoding holds gigabytes: the decoder graph's activations
(a transposed convolution's column buffer alone is hundreds of bytes per output pixel), the integer
hyper-decoder's int64 maps, the entropy decoder's arrays. The reconstruction is a small part of it. So a
server's budget must count what decoding *holds*, and that comes from the graph:

- ``measure_graph`` runs the decoder graph per probe size in a profiling ONNX Runtime session (one
  thread) and reads what ORT itself reports per node: the peak bytes its allocator had in use; and in a
  plain one-thread session, the CPU time a run takes on the calling thread. Two probes give a line, bytes
  and seconds per output pixel plus a per-run constant.
  Probe inputs come from the graph's own input metadata (symbolic spatial sizes are varied when the graph
  has them, else the batch), so no codec family is special-cased here.
- ``DecodeCosts`` is one request's bill, per item, as ``Codec.decode_costs(payloads)`` builds it from the
  payload headers; a codec that decodes large items in tiles reports a smaller per-item graph figure.

The figures are estimates measured on the machine that serves; docs/deployment.md states the bound they give.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np

# CPU seconds per entropy-decoded symbol (constriction ANS, table selection included): 270-900 ns measured on
# this project's 2-core machine (docs/hostile.md); counted at the slow end so the estimate is not optimistic.
ENTROPY_SECONDS_PER_SYMBOL = 1e-6
# Bytes the entropy decoder holds per symbol while unpacking: the symbol (uint16/int64), its dequantised float32
# and its table index (int64), plus the grouping's sort order (int64).
ENTROPY_BYTES_PER_SYMBOL = 32


@dataclass(frozen=True)
class GraphCost:
    """One decoder-graph run: bytes it holds and CPU seconds it takes, a constant plus a term per output pixel
    (items x height x width of x_hat)."""

    run_bytes: int
    pixel_bytes: float
    run_seconds: float
    pixel_seconds: float

    def bytes(self, pixels: np.ndarray) -> np.ndarray:
        return np.ceil(np.asarray(pixels, np.float64) * self.pixel_bytes).astype(np.int64)

    def seconds(self, pixels: np.ndarray) -> np.ndarray:
        return np.asarray(pixels, np.float64) * self.pixel_seconds


def probe_feeds(session, batch: int, spatial: int) -> dict[str, np.ndarray]:
    """Zero inputs for a graph from its input metadata: the first dimension is the batch, other symbolic
    dimensions (a code map's height and width) get `spatial`."""
    feeds = {}
    for arg in session.get_inputs():
        shape = [
            batch if k == 0 else (d if isinstance(d, int) and d > 0 else spatial)
            for k, d in enumerate(arg.shape)
        ]
        dtype = np.int64 if "int64" in arg.type else np.float32
        feeds[arg.name] = np.zeros(shape, dtype)
    return feeds


def _has_spatial(session) -> bool:
    return any(not isinstance(d, int) for arg in session.get_inputs() for d in arg.shape[1:])


def _session(graph: bytes, profile_prefix: str | None = None):
    """A one-thread CPU session, as a server's decode thread runs the graph (on the calling thread)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(graph, sess_options=opts, providers=["CPUExecutionProvider"])


def _profile_run(graph: bytes, feeds: dict[str, np.ndarray], runs: int = 3) -> tuple[int, float, int]:
    """(peak bytes the run held above what was in use before it, CPU seconds of one run, output pixels).

    Bytes come from ORT's per-node allocator figures (the same on a busy machine as on an idle one). Seconds are
    the calling thread's CPU time (``time.thread_time``), the least of `runs` runs after a warm-up: a one-thread
    session computes on the caller's thread, and CPU time, unlike the kernels' wall time, does not grow when
    other processes share the cores (measured at load, a busy machine would otherwise price requests higher).
    """
    with tempfile.TemporaryDirectory(prefix="aecodec-probe-") as tmp:
        session = _session(graph, os.path.join(tmp, "probe"))
        for _ in range(runs):  # the allocator's peak over several runs, as a server's session runs many
            out = session.run(None, feeds)[0]
        with open(session.end_profiling()) as f:
            events = json.load(f)
    nodes = [e for e in events if e.get("cat") == "Node" and "mem_in_use_peak" in e.get("args", {})]
    if not nodes:
        raise RuntimeError("ONNX Runtime's profile has no per-node memory figures")
    first = nodes[0]["args"]
    before = int(first["mem_bytes_in_use"]) - int(first["mem_in_use_delta"])
    peak = max(int(e["args"]["mem_in_use_peak"]) for e in nodes) - before
    plain = _session(graph)
    plain.run(None, feeds)  # warm-up: first-run allocations and kernel selection are not a request's cost
    per_run = []
    for _ in range(runs):
        t0 = time.thread_time()
        plain.run(None, feeds)
        per_run.append(time.thread_time() - t0)
    pixels = int(np.prod(out.shape[:1])) * int(np.prod(out.shape[2:]))
    return max(peak, 0), min(per_run), pixels


def measure_graph(graph: bytes) -> GraphCost:
    """Measure a decoder graph (serialised ONNX) at two probe sizes and fit bytes and seconds per output pixel."""
    import onnxruntime as ort

    meta = ort.InferenceSession(graph, providers=["CPUExecutionProvider"])
    if _has_spatial(meta):
        small, large = probe_feeds(meta, 1, 8), probe_feeds(meta, 1, 32)
    else:
        small, large = probe_feeds(meta, 4, 1), probe_feeds(meta, 64, 1)
    b1, s1, p1 = _profile_run(graph, small)
    b2, s2, p2 = _profile_run(graph, large)
    pixel_bytes = max((b2 - b1) / max(p2 - p1, 1), b2 / p2 * 0.5, 0.0)
    pixel_seconds = max((s2 - s1) / max(p2 - p1, 1), s2 / p2 * 0.5, 0.0)
    return GraphCost(
        run_bytes=max(int(b2 - pixel_bytes * p2), 0, int(b1 - pixel_bytes * p1)),
        pixel_bytes=pixel_bytes,
        run_seconds=max(s1 - pixel_seconds * p1, 0.0),
        pixel_seconds=pixel_seconds,
    )


def release_arena(session) -> None:
    """Give ONNX Runtime's arena memory back after a large run: a one-element run with arena shrinkage on
    (ORT keeps the peak of every run otherwise, for the life of the session)."""
    import onnxruntime as ort

    opts = ort.RunOptions()
    opts.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    session.run(None, probe_feeds(session, 1, 1), opts)


@dataclass
class DecodeCosts:
    """Per item of one request: reconstruction bytes, the decoder graph's working bytes, unpacking bytes, code
    symbols and CPU seconds; ``run_bytes`` is what one graph run holds whatever its size."""

    out_bytes: np.ndarray
    graph_bytes: np.ndarray
    unpack_bytes: np.ndarray
    symbols: np.ndarray
    seconds: np.ndarray
    run_bytes: int = 0

    def working_bytes(self, run_items: int) -> int:
        """Everything decoding the request holds at once: its reconstructions and unpacked codes, and the graph's
        working set for the `run_items` largest items (what runs at once: a chunk per decode thread)."""
        graph = np.sort(self.graph_bytes)[::-1][: max(run_items, 1)]
        return int(self.out_bytes.sum() + self.unpack_bytes.sum() + graph.sum() + self.run_bytes)

    def item_bytes(self) -> np.ndarray:
        """What each item alone holds while decoded (a request of that one item, less the per-run constant)."""
        return self.out_bytes + self.unpack_bytes + self.graph_bytes


__all__ = [
    "DecodeCosts",
    "ENTROPY_BYTES_PER_SYMBOL",
    "ENTROPY_SECONDS_PER_SYMBOL",
    "GraphCost",
    "measure_graph",
    "probe_feeds",
    "release_arena",
]

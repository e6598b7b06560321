"""How much memory an ONNX graph's run asks for, measured by ONNX Runtime itself, per item or per map element.

A decode budget needs the decoder graph's working memory before it runs. Rather than model one architecture,
this runs the graph once in a profiling session at two probe sizes and reads ONNX Runtime's own account of
the bytes its memory planner had in use at the peak (``mem_bytes_requested_in_use`` of each node event).
The difference between the two probes divided by the difference in size is the cost of one more unit (an
item for fixed-size graphs, a map element for fully convolutional ones); weights and fixed buffers cancel
out. ONNX Runtime's arena grows in powers of two, so a process may hold up to twice what was requested:
``ARENA_SLACK`` is applied by the callers that turn this into a budget.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np

ARENA_SLACK = 2  # the CPU arena extends in powers of two: held memory <= 2 x requested at the peak
_TYPES = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(float16)": np.float16}


def _peak(blob: bytes, items: int, side: int) -> int:
    """Peak bytes ONNX Runtime requested running the graph once on zeros: ``items`` items and, for inputs with
    free spatial dimensions, ``side`` x ``side`` elements."""
    import onnxruntime as ort

    tmp = tempfile.mkdtemp(prefix="aecodec-profile-")
    try:
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = os.path.join(tmp, "run")
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        sess = ort.InferenceSession(blob, sess_options=opts, providers=["CPUExecutionProvider"])
        feeds = {}
        for inp in sess.get_inputs():
            dims = [d if isinstance(d, int) else (items if i == 0 else side) for i, d in enumerate(inp.shape)]
            feeds[inp.name] = np.zeros(dims, _TYPES.get(inp.type, np.float32))
        sess.run(None, feeds)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return max(
        (int(e["args"].get("mem_bytes_requested_in_use", 0)) for e in events if e.get("cat") == "Node"),
        default=0,
    )


def bytes_per_item(blob: bytes) -> float:
    """Extra peak bytes per item in one run (a fixed-size graph: 4 items vs 12)."""
    return max(0.0, (_peak(blob, 12, 1) - _peak(blob, 4, 1)) / 8)


def bytes_per_element(blob: bytes) -> float:
    """Extra peak bytes per input map element in one run of one item (16 x 16 vs 32 x 32 elements)."""
    return max(0.0, (_peak(blob, 1, 32) - _peak(blob, 1, 16)) / (32 * 32 - 16 * 16))

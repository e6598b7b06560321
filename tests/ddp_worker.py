"""torchrun's worker for tests/test_distributed.py (not a test module): `python -m MODULE ARGS`, with a record.

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_worker.py training.train ARGS...

Runs MODULE as ``python -m`` would, and records every file this process opened for writing (Python's
``open`` audit event) and every ``torch.save`` (which writes from C++, past the audit hook) in
$AECODEC_WRITES_DIR/rank-$RANK.json, so the test can check that only rank 0 wrote.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path


def main() -> None:
    import torch

    written: list[str] = []

    def audit(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[1], str) and set(args[1]) & set("wax+"):
            written.append(os.path.abspath(os.fsdecode(args[0])))

    real_save = torch.save

    def save(obj, f, *a, **k):
        if isinstance(f, str | os.PathLike):
            written.append(os.path.abspath(os.fsdecode(f)))
        return real_save(obj, f, *a, **k)

    torch.save = save
    sys.addaudithook(audit)
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    log = Path(os.environ["AECODEC_WRITES_DIR"]) / f"rank-{os.environ.get('RANK', '0')}.json"
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        log.write_text(json.dumps(sorted(set(written))))


if __name__ == "__main__":
    main()

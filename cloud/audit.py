"""Field quality monitoring: the error of items devices attach their originals to, per bundle.

Edge ingest can attach the original to a sampled fraction of items (``--audit-fraction``). The
cloud decodes each such item, measures its MSE on the [0, 1] scale, and keeps per-bundle running
figures: all-time mean MSE (and its PSNR), and the PSNR of the mean over the most recent items,
where drift shows first. They are served in ModelInfo and as Prometheus metrics, so a bundle that
degrades on real data shows up on a dashboard (deploy/prometheus/rules.yml alerts on it). Figures
are per server process since it started; Prometheus sums the counters over replicas.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from latent_codec.metrics import psnr_from_mse
from latent_codec.wire.aecodec.v2 import codec_pb2 as pb

RECENT = 1000


@dataclass
class _Figures:
    items: int = 0
    mse_sum: float = 0.0
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT))


class Audit:
    def __init__(self, metrics=None):
        self._by_bundle: dict[str, _Figures] = {}
        self._lock = threading.Lock()
        self.metrics = metrics

    def add(self, bundle_id: str, mse: list[float]) -> None:
        with self._lock:
            f = self._by_bundle.setdefault(bundle_id, _Figures())
            f.items += len(mse)
            f.mse_sum += float(sum(mse))
            f.recent.extend(mse)
            recent = float(psnr_from_mse(sum(f.recent) / len(f.recent)))
        if self.metrics is not None:
            self.metrics.audit_items.labels(bundle_id).inc(len(mse))
            self.metrics.audit_mse.labels(bundle_id).inc(float(sum(mse)))
            per_item = self.metrics.audit_item_mse.labels(bundle_id)
            for value in mse:
                per_item.observe(value)
            self.metrics.audit_recent_psnr.labels(bundle_id).set(recent)

    def figures(self, bundle_id: str) -> pb.AuditFigures:
        with self._lock:
            f = self._by_bundle.get(bundle_id)
            if f is None or not f.items:
                return pb.AuditFigures()
            mean = f.mse_sum / f.items
            recent = sum(f.recent) / len(f.recent)
            return pb.AuditFigures(
                items=f.items,
                mean_mse=mean,
                psnr=float(psnr_from_mse(mean)),
                recent_psnr=float(psnr_from_mse(recent)),
            )

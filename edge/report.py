"""The numbers a user compares: bytes raw, in payloads and on the wire, and the quality kept."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Report:
    bundle_id: str
    payload_format: str
    items: int = 0
    raw_bytes: int = 0
    payload_bytes: int = 0
    wire_bytes: int = 0  # serialised DecodeRequest messages without the evaluation originals
    eval_bytes: int = 0  # extra bytes of originals sent only to measure quality
    squared_error_sum: float = 0.0  # sum of per-item MSE, for the mean
    mse: float | None = None
    psnr: float | None = None
    seconds: float = 0.0

    @property
    def ratio_payload(self) -> float:
        return self.raw_bytes / self.payload_bytes if self.payload_bytes else float("inf")

    @property
    def ratio_wire(self) -> float:
        return self.raw_bytes / self.wire_bytes if self.wire_bytes else float("inf")

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(ratio_payload=self.ratio_payload, ratio_wire=self.ratio_wire)
        return d

    def format(self) -> str:
        n = max(self.items, 1)
        lines = [
            f"bundle            {self.bundle_id} ({self.payload_format})",
            f"items             {self.items}",
            f"raw bytes         {self.raw_bytes:>12,}  ({self.raw_bytes / n:.1f} per item)",
            f"payload bytes     {self.payload_bytes:>12,}  ({self.payload_bytes / n:.2f} per item)",
            f"wire bytes        {self.wire_bytes:>12,}  ({self.wire_bytes / n:.2f} per item, serialised requests)",
            f"ratio raw/payload {self.ratio_payload:>12.1f}:1",
            f"ratio raw/wire    {self.ratio_wire:>12.1f}:1",
        ]
        if self.mse is not None:
            lines += [
                f"MSE (server)      {self.mse:>12.5f}  (pixels on [0, 1])",
                f"PSNR (server)     {self.psnr:>12.2f} dB",
            ]
        lines.append(
            f"time              {self.seconds:>12.1f} s  ({self.items / max(self.seconds, 1e-9):.0f} items/s)"
        )
        return "\n".join(lines)

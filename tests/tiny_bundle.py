"""One tiny digits bundle per test session for the serving tests (exposure, metrics), trained once on disk.

Those tests exercise transport, auth and counting, not model quality, so a
few epochs suffice; sharing it through the session's base temp directory keeps
it to one training even though two test modules use it.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import train_and_export


def tiny_bundle(tmp_path_factory) -> Path:
    root = tmp_path_factory.getbasetemp() / "tiny-digits"
    bundle = root / "bundle-dense-affine8"
    if not (bundle / "manifest.json").is_file():
        bundle = train_and_export(
            root,
            "dense",
            {"code_dim": 8, "hidden": [32]},
            data="digits",
            epochs=3,
            limit=0,
            batch_size=64,
            quant="affine8",
            test_limit=0,
            fit_items=0,
        )
    return bundle

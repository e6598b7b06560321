"""The Python API the README documents: Codec offline, CloudClient decode/fetch/list_stored, ingest by IngestConfig."""

from __future__ import annotations

import tomllib
from importlib import import_module

import numpy as np
import pytest

from latent_codec import datasets
from latent_codec.codec import Codec
from tests.helpers import ROOT


@pytest.fixture
def cloud(digits_bundle, tmp_path):
    from cloud.server import build_server

    root = tmp_path / "bundles"
    root.mkdir()
    (root / digits_bundle.name).symlink_to(digits_bundle, target_is_directory=True)
    running = build_server(root, "127.0.0.1:0", workers=4, store=str(tmp_path / "store.db"))
    yield f"127.0.0.1:{running.port}"
    running.stop(grace=1.0)


def test_codec_round_trip_offline_equals_the_cloud_and_ingest_then_fetch(cloud, digits_bundle, tmp_path):
    from edge.client import CloudClient
    from edge.ingest import IngestConfig, run

    x = datasets.load("digits", "test").x[:40]
    codec = Codec.open(digits_bundle)
    payloads = codec.encode(x)
    offline = codec.decode(payloads)
    assert offline.shape == x.shape and offline.dtype == np.uint8
    with CloudClient(cloud) as client:
        result = client.decode(codec, payloads, originals=x)
        assert result.items is not None and np.abs(result.items.astype(int) - offline.astype(int)).max() <= 1
        assert result.mse is not None and result.psnr is not None and len(result.mse) == 40
        np.testing.assert_allclose(result.mse, codec.squared_error(x, result.items), rtol=1e-6, atol=1e-9)
        unit = client.decode(codec, payloads, unit=True).items
        assert unit is not None and unit.dtype == np.float32 and 0 <= unit.min() and unit.max() <= 1

        config = IngestConfig(
            bundle=digits_bundle, spool=tmp_path / "spool.db", device_id="cam-7", source_id="s"
        )
        report = client.ingest(config, items=x)
        assert report.acknowledged == 40 and report.still_spooled == 0 and report.device_id == "cam-7"
        (summary,) = client.list_stored("cam-7")
        assert summary.items == 40 and summary.bundle_available and summary.bundle_id == codec.bundle_id
        fetched = sorted(client.fetch(device_id="cam-7"), key=lambda f: int(f.item_id.split("#")[1]))
        assert [f.item_id for f in fetched] == [f"s#{i}" for i in range(40)]
        got = np.stack([f.item for f in fetched])
        np.testing.assert_array_equal(got, result.items)  # stored items decode to what Decode returned
        codes = client.fetch(item_ids=["s#3"], codes_only=True)
        assert codes[0].item is None and codes[0].payload == payloads[3]
    # The same run again is idempotent: nothing new is taken (the spool remembers the cursor).
    again = run(
        IngestConfig(bundle=digits_bundle, server=cloud, spool=tmp_path / "spool.db", source_id="s"), items=x
    )
    assert again.taken == 0 and again.acknowledged == 0


def test_console_scripts_resolve_to_main_functions_that_take_argv():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"aecodec-edge", "aecodec-cloud", "aecodec-train", "aecodec-export", "aecodec-healthcheck"} <= set(
        scripts
    )
    for name, target in scripts.items():
        module, func = target.split(":")
        main = getattr(import_module(module), func)
        with pytest.raises(SystemExit) as info:
            main(["--help"])
        assert info.value.code == 0, name

"""The codec-family registry: a new family is one module plus its registrations, and flows everywhere.

tests/families/toy.py adds a family nobody else knows ("pooled thumbnails"). Here it is trained, exported,
encoded by the edge, decoded by a real server (Decode), ingested into a real SQLite store and fetched back,
and measured by the benchmark's own measurement, with no other file changed. The registry itself refuses
unknown kinds with a message that names the kinds it knows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from latent_codec import registry
from latent_codec.bundle import MANIFEST_NAME, Manifest, load_bundle
from latent_codec.codec import Codec
from latent_codec.errors import BundleError
from tests.families import toy


@pytest.fixture(scope="module")
def toy_bundle(tmp_path_factory) -> Path:
    from training.export import export_bundle
    from training.train import main as train_main

    d = tmp_path_factory.mktemp("toy")
    rc = train_main(
        [
            "--model",
            "toy-pooled",
            "--data",
            "digits",
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--lr",
            "0.01",
            "--no-progress",
            "--out",
            str(d / "toy.pt"),
        ]
    )
    assert rc == 0
    export_bundle(d / "toy.pt", d / "bundles" / "toy", fit_items=0, test_limit=0)
    return d / "bundles" / "toy"


def test_the_toy_family_is_built_from_its_bundle(toy_bundle):
    codec = Codec.open(toy_bundle)
    assert type(codec) is toy.ToyCodec and codec.kind == toy.KIND
    m = json.loads((toy_bundle / MANIFEST_NAME).read_text())
    assert m["payload"]["kind"] == toy.KIND and codec.format == "pooled4"
    from latent_codec import datasets

    x = datasets.load("digits", "test").x[:50]
    payloads = codec.encode(x)
    assert {len(p) for p in payloads} == {8}  # 16 values of 4 bits
    err = float(codec.squared_error(x, codec.decode(payloads)).mean())
    # What the family promises: the 2x-pooled thumbnail, up to 4-bit rounding (gain ~1 after training).
    u = x.astype(np.float64) / 255
    pooled = u.reshape(len(u), 1, 4, 2, 4, 2).mean(axis=(3, 5)).repeat(2, axis=2).repeat(2, axis=3)
    reference = float(((u - pooled) ** 2).mean())
    assert reference * 0.9 < err < reference + 0.004


def test_the_toy_family_through_edge_cloud_store_and_bench(toy_bundle, tmp_path):
    from bench.project import measure_bundle
    from cloud.server import build_server
    from edge.client import CloudClient
    from edge.ingest import IngestConfig, run
    from latent_codec import datasets

    codec = Codec.open(toy_bundle)
    x = datasets.load("digits", "test").x[:40]
    payloads = codec.encode(x)
    running = build_server(toy_bundle.parent, "127.0.0.1:0", workers=2, store=str(tmp_path / "cloud.db"))
    try:
        target = f"127.0.0.1:{running.port}"
        with CloudClient(target) as cloud:
            decoded = cloud.decode(codec, payloads, originals=x)
            np.testing.assert_array_equal(decoded.items, codec.decode(payloads))
            assert np.allclose(decoded.mse, codec.squared_error(x, codec.decode(payloads)))
        report = run(
            IngestConfig(
                bundle=toy_bundle,
                server=target,
                spool=tmp_path / "spool.db",
                data="digits",
                limit=40,
                device_id="cam-toy",
                batch_size=16,
            )
        )
        assert report.acknowledged == 40 and report.quarantined == 0 and report.still_spooled == 0
        with CloudClient(target) as cloud:
            fetched = cloud.fetch(device_id="cam-toy")
        assert len(fetched) == 40
        got = {f.item_id: f for f in fetched}
        assert all(f.bundle_id == codec.bundle_id for f in fetched)
        items = np.stack([got[k].item for k in sorted(got, key=lambda k: int(k.split("#")[1]))])
        np.testing.assert_array_equal(items, codec.decode(payloads))
    finally:
        running.stop(grace=1.0)
    sizes, recon, info = measure_bundle(toy_bundle, x, threads=1)
    assert sizes.payload == 8 and info["format"] == "pooled4" and info["ideal_bytes"] is None
    np.testing.assert_array_equal(recon, codec.decode(payloads))


def test_unknown_kinds_are_refused_naming_the_known_ones(toy_bundle, tmp_path):
    m = Manifest.from_json((toy_bundle / MANIFEST_NAME).read_text())
    d = m.to_dict()
    d["payload"]["kind"] = "hologram"
    with pytest.raises(BundleError, match="hologram.*not a codec family.*flat.*map"):
        Manifest.from_dict(d)
    with pytest.raises(ValueError, match="already registered"):
        registry.register_family("map")(toy.ToyCodec)


def test_built_in_families_are_registered_and_flat_is_the_default():
    assert {"flat", "map"} <= set(registry.kinds())
    assert registry.payload_kind({"format": "affine8"}) == "flat"
    assert (
        load_bundle
    )  # the loader resolves payloads through the registry (test_zoo_payloads covers every kind)

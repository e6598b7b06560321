"""Fixtures: real trained bundles, real gRPC servers on 127.0.0.1 with ephemeral ports, a real PostgreSQL schema.

Helpers that are not fixtures live in tests/helpers.py (``from tests.helpers import ...``).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from tests.helpers import (
    IN_CI,
    PG_BASE,
    need_fashion,
    pg_admin,
    photo_crops,
    spatial_bundle,
    train_and_export,
)


@pytest.fixture(scope="session")
def fashion_bundle(tmp_path_factory) -> Path:
    """A dense 784-128-32 autoencoder trained briefly on Fashion-MNIST, 8-bit affine codes."""
    need_fashion()
    return train_and_export(
        tmp_path_factory.mktemp("fashion"), "dense", {"code_dim": 32, "hidden": [128]}, epochs=2, limit=4000
    )


@pytest.fixture(scope="session")
def digits_bundle(tmp_path_factory) -> Path:
    """An 8x8 digits model (scikit-learn data, always available), entropy-coded 6-bit codes."""
    return train_and_export(
        tmp_path_factory.mktemp("digits"),
        "dense",
        {"code_dim": 8, "hidden": [32]},
        data="digits",
        epochs=80,
        limit=0,
        batch_size=64,
        quant="affine6",
        entropy=True,
        test_limit=0,
        fit_items=0,
    )


@pytest.fixture(scope="session")
def colour_bundle(tmp_path_factory) -> Path:
    """A tiny colour spatial bundle (16 channels, 8 code channels, hyperprior) trained for 4 epochs on 1,200
    32x32 crops of scikit-image's photographs (about a minute on 2 cores); takes colour items of any size."""
    import numpy as np

    root = tmp_path_factory.mktemp("map-colour")
    crops = photo_crops()
    np.savez(root / "crops.npz", x_train=crops[:1200], x_test=crops[1200:])
    args = {"channels": 16, "code_channels": 8, "hyper_channels": 8, "entropy": "hyperprior"}
    return spatial_bundle(root, args, data=str(root / "crops.npz"), limit=0, epochs=4)


@pytest.fixture(scope="session")
def bundles_dir(fashion_bundle, digits_bundle, tmp_path_factory) -> Path:
    """A directory holding both bundles (symlinks), as a server's --bundles."""
    d = tmp_path_factory.mktemp("bundles")
    for b in (fashion_bundle, digits_bundle):
        (d / b.name).symlink_to(b, target_is_directory=True)
    return d


@pytest.fixture
def server(bundles_dir):
    """A real gRPC server in this process on 127.0.0.1 with an ephemeral port (no store)."""
    from cloud.server import build_server

    running = build_server(bundles_dir, "127.0.0.1:0", workers=4)
    yield running
    running.stop(grace=1.0)


@pytest.fixture
def stub(server):
    """A Decoding stub connected to ``server``."""
    import grpc

    from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

    ch = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield pb_grpc.DecodingStub(ch)
    ch.close()


@pytest.fixture(scope="session")
def pg_url():
    """A fresh schema in the test database, as a store URL; dropped after the session.

    Without a server: skip with the reason, except under CI=true, where it fails.
    """
    try:
        import psycopg  # noqa: F401

        admin = pg_admin()
    except Exception as exc:  # ImportError or OperationalError: say which
        msg = f"no PostgreSQL at {PG_BASE} ({type(exc).__name__}: {str(exc).strip()[:200]}); run `make postgres`"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    schema = f"aecodec_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    finally:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.close()

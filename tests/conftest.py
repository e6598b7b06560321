"""Shared fixtures: real trained bundles, real gRPC servers on 127.0.0.1 with ephemeral ports."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latent_codec.datasets import FASHION_MNIST_DIR  # noqa: E402

HAVE_FASHION = FASHION_MNIST_DIR.is_dir()
IN_CI = os.environ.get("CI") == "true"


def need_fashion() -> None:
    """Skip (visibly) without Fashion-MNIST on a user's machine; under CI its absence fails."""
    if HAVE_FASHION:
        return
    if IN_CI:
        pytest.fail(f"CI needs Fashion-MNIST at {FASHION_MNIST_DIR} (make dataset installs it)")
    pytest.skip(f"Fashion-MNIST not installed at {FASHION_MNIST_DIR}")


def train_and_export(
    out_dir: Path,
    model: str = "dense",
    model_args: dict | None = None,
    data: str = "fashion-mnist",
    epochs: int = 2,
    limit: int = 3000,
    quant: str = "affine8",
    entropy: bool = False,
    test_limit: int = 500,
    fit_items: int = 2000,
    **cfg,
) -> Path:
    """Train a small model for real and export it as a bundle; returns the bundle directory."""
    from training.export import export_bundle
    from training.train import TrainConfig, save_checkpoint, train

    out_dir.mkdir(parents=True, exist_ok=True)
    tc = TrainConfig(model=model, model_args=model_args or {}, data=data, epochs=epochs, limit=limit, **cfg)
    m, record = train(tc, progress=False)
    ckpt = save_checkpoint(out_dir / f"{model}.pt", m, tc, record)
    bundle = out_dir / f"bundle-{model}-{quant}{'-ans' if entropy else ''}"
    export_bundle(ckpt, bundle, quant=quant, entropy=entropy, fit_items=fit_items, test_limit=test_limit)
    return bundle


def decode_through_server(bundles_root: Path, enc, payloads: list[bytes], x: np.ndarray):
    """Start a real server on bundles_root, send one evaluated DecodeRequest of these payloads, stop it."""
    import grpc

    from cloud.server import build_server
    from latent_codec.tensors import to_tensor
    from latent_codec.wire.aecodec.v1 import codec_pb2 as pb
    from latent_codec.wire.aecodec.v1 import codec_pb2_grpc as pb_grpc

    running = build_server(bundles_root, "127.0.0.1:0", workers=2)
    try:
        req = pb.DecodeRequest(
            codes=enc.code_batch(payloads),
            originals=to_tensor(x),
            reconstruction_format=pb.RECONSTRUCTION_FORMAT_FLOAT32,
        )
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            return pb_grpc.CodecStub(ch).Decode(req, timeout=60)
    finally:
        running.stop(grace=1.0)


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
def bundles_dir(fashion_bundle, digits_bundle, tmp_path_factory) -> Path:
    """A directory holding both bundles (symlinks), as a server's --bundles."""
    d = tmp_path_factory.mktemp("bundles")
    for b in (fashion_bundle, digits_bundle):
        (d / b.name).symlink_to(b, target_is_directory=True)
    return d


@pytest.fixture
def server(bundles_dir):
    """A real gRPC server in this process on 127.0.0.1 with an ephemeral port."""
    from cloud.server import build_server

    running = build_server(bundles_dir, "127.0.0.1:0", workers=4)
    yield running
    running.stop(grace=1.0)


@pytest.fixture
def stub(server):
    import grpc

    from latent_codec.wire.aecodec.v1 import codec_pb2_grpc as pb_grpc

    ch = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield pb_grpc.CodecStub(ch)
    ch.close()


def fashion_test_items(n: int) -> np.ndarray:
    from latent_codec import datasets

    return datasets.load("fashion-mnist", "test").x[:n]

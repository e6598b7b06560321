"""What the tests share, imported one way: ``from tests.helpers import ...`` (fixtures live in conftest.py).

Real parts throughout: bundles trained for real, servers on 127.0.0.1 with ephemeral ports, child
processes killed with real signals, a real PostgreSQL schema per session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from bench.server_process import ServerProcess, child_env  # noqa: F401  (re-exported for the tests)
from cloud.limits import PEAK_BOUND_MIB  # noqa: F401  (re-exported for the tests)
from cloud.ports import free_port as free_port  # one implementation, shared with the benchmarks
from latent_codec.container import to_batch
from latent_codec.datasets import FASHION_MNIST_DIR

ROOT = Path(__file__).resolve().parents[2]
HAVE_FASHION = FASHION_MNIST_DIR.is_dir()
IN_CI = os.environ.get("CI") == "true"


def need_fashion() -> None:
    """Skip (visibly) without Fashion-MNIST on a user's machine; under CI its absence fails."""
    if HAVE_FASHION:
        return
    if IN_CI:
        pytest.fail(f"CI needs Fashion-MNIST at {FASHION_MNIST_DIR} (make dataset installs it)")
    pytest.skip(f"Fashion-MNIST not installed at {FASHION_MNIST_DIR}")


def fashion_test_items(n: int) -> np.ndarray:
    from latent_codec import datasets

    return datasets.load("fashion-mnist", "test").x[:n]


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


def spatial_bundle(
    root: Path, model_args: dict, data: str = "fashion-mnist", limit: int = 3000, epochs: int = 2
) -> Path:
    """A small spatial (code map) bundle trained briefly, learned quantisation."""
    return train_and_export(
        root,
        "spatial",
        model_args,
        data=data,
        epochs=epochs,
        limit=limit,
        batch_size=32,
        lr=2e-3,
        rd_lambda=0.01,
        quant_noise="mixed",
        quant="learned",
        test_limit=300,
        fit_items=2000,
    )


def photo_crops(n: int = 1500, size: int = 32, seed: int = 0) -> np.ndarray:
    """Random size x size crops of scikit-image's colour photographs, (n, 3, size, size) uint8."""
    from skimage import data

    photos = [data.chelsea(), data.coffee(), data.rocket(), data.hubble_deep_field()]
    rng = np.random.default_rng(seed)
    out = np.empty((n, 3, size, size), np.uint8)
    for i in range(n):
        p = photos[i % len(photos)]
        y, x = rng.integers(0, p.shape[0] - size), rng.integers(0, p.shape[1] - size)
        out[i] = np.moveaxis(p[y : y + size, x : x + size, :3], -1, 0)
    return out


def tiny_bundle(tmp_path_factory) -> Path:
    """One tiny digits bundle per test session for the serving tests (transport, auth, counting, not quality).

    Shared through the session's base temp directory, so the modules that use it train it once.
    """
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


def tiny_hashing_bundle(tmp_path_factory) -> Path:
    """A digits model with a noisy sigmoid code (semantic hashing), exported with --binary-code; once per session."""
    root = tmp_path_factory.getbasetemp() / "tiny-hashing"
    bundle = root / "bundle-dense-affine8"
    if not (bundle / "manifest.json").is_file():
        from training.export import export_bundle
        from training.train import TrainConfig, save_checkpoint, train

        cfg = TrainConfig(
            model="dense",
            model_args={"code_dim": 14, "hidden": [64], "code_activation": "sigmoid", "code_noise": 2.0},
            data="digits",
            epochs=60,
            batch_size=64,
            lr=5e-3,
            threads=1,
            device="cpu",
        )
        model, record = train(cfg, progress=None)
        ckpt = save_checkpoint(root / "hashing.pt", model, cfg, record)
        export_bundle(ckpt, bundle, "affine8", fit_items=0, test_limit=0, binary_code=True)
    return bundle


def server_cmd(bundles: Path, *extra: str) -> list[str]:
    """The cloud server's command line (python -m cloud.server) on `bundles`, at an ephemeral port of 127.0.0.1."""
    return [
        sys.executable,
        "-m",
        "cloud.server",
        "--bundles",
        str(bundles),
        "--address",
        "127.0.0.1:0",
        *extra,
    ]


def decode_with_the_edge_client(bundles_root: Path, codec, payloads: list[bytes], x: np.ndarray):
    """Start a real server on bundles_root, decode these payloads (x their originals) with the edge's CloudClient,
    stop the server; returns what CloudClient.decode returns."""
    from cloud.server import build_server
    from edge.client import CloudClient

    running = build_server(bundles_root, "127.0.0.1:0", workers=2)
    try:
        with CloudClient(f"127.0.0.1:{running.port}") as cloud:
            return cloud.decode(codec, payloads, originals=x)
    finally:
        running.stop(grace=1.0)


def decode_through_server(bundles_root: Path, codec, payloads: list[bytes], x: np.ndarray):
    """Start a real server on bundles_root, send one evaluated DecodeRequest of these payloads, stop it."""
    import grpc

    from cloud.server import build_server
    from latent_codec.container import to_tensor
    from latent_codec.wire.aecodec.v2 import codec_pb2 as pb
    from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

    running = build_server(bundles_root, "127.0.0.1:0", workers=2)
    try:
        req = pb.DecodeRequest(
            codes=to_batch(codec, payloads),
            originals=to_tensor(x),
            reconstruction_format=pb.RECONSTRUCTION_FORMAT_FLOAT32,
        )
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            return pb_grpc.DecodingStub(ch).Decode(req, timeout=60)
    finally:
        running.stop(grace=1.0)


# ---- PostgreSQL and processes (the ingest and fault tests) ---------------------------------------------------
PG_BASE = os.environ.get("AECODEC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def pg_admin():
    import psycopg

    return psycopg.connect(PG_BASE, autocommit=True, connect_timeout=3)


def pg_fresh_schema() -> str:
    """Not a fixture: a second schema for a test that needs an empty database (dropped by the caller)."""
    schema = f"aecodec_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with pg_admin() as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    return schema


def pg_drop_schema(schema: str) -> None:
    with pg_admin() as admin:
        admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def fixed_size_variant(bundle: Path, out_dir: Path) -> Path:
    """The same trained model with plain (not entropy-coded) codes: a fixed payload size per item."""
    from latent_codec.bundle import DECODER_NAME, ENCODER_NAME, Manifest, write_manifest

    dst = out_dir / (bundle.name + "-fixed")
    if dst.exists():
        return dst
    shutil.copytree(bundle, dst)
    m = Manifest.from_json((dst / "manifest.json").read_text())
    m.payload.prior = None
    m.seal((dst / ENCODER_NAME).read_bytes(), (dst / DECODER_NAME).read_bytes())
    write_manifest(dst, m)
    return dst


def edge_cmd(bundle: Path, target: str, data: Path, spool: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "edge.cli",
        "ingest",
        "--bundle",
        str(bundle),
        "--server",
        target,
        "--data",
        str(data),
        "--spool",
        str(spool),
        "--source-id",
        "cam",
        "--device-id",
        "phone-1",
        "--no-progress",
        *extra,
    ]


def start_edge(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=open(log, "ab"), stderr=subprocess.STDOUT)


def stored_count(target: str, device: str) -> int:
    """Items the server at target holds for a device (its ListStored), or -1 when it does not answer."""
    import grpc

    from latent_codec.wire.aecodec.v2 import codec_pb2 as pb

    try:
        with grpc.insecure_channel(target) as ch:
            return CloudStub(ch).ListStored(pb.ListStoredRequest(device_id=device), timeout=2).total_items
    except grpc.RpcError:
        return -1


def check_exactly_once(target: str, payloads: list[bytes], device: str, source: str = "cam") -> None:
    """Through the server at target: every source item (SOURCE#i) is stored once, with the payload the
    edge's encoder produces for it, and nothing else is."""
    import grpc

    from latent_codec.wire.aecodec.v2 import codec_pb2 as pb

    n = len(payloads)
    with grpc.insecure_channel(target) as ch:
        stub = CloudStub(ch)
        listing = stub.ListStored(pb.ListStoredRequest(device_id=device), timeout=10)
        got = {}
        for resp in stub.Fetch(pb.FetchRequest(device_id=device, codes_only=True, limit=n + 100), timeout=60):
            for it in resp.items:
                assert it.item_id not in got, f"{it.item_id} returned twice"
                got[it.item_id] = it.payload
    assert listing.total_items == n
    assert sorted(got) == sorted(f"{source}#{i}" for i in range(n))
    assert all(got[f"{source}#{i}"] == payloads[i] for i in range(n))
    assert listing.total_payload_bytes == sum(len(p) for p in payloads)


def run_within(coro, seconds: float, what: str):
    """asyncio.run(coro) with a deadline: an AssertionError naming `what` instead of a hang (a lost budget release,
    a reader that never stops)."""
    import asyncio

    async def bounded():
        try:
            return await asyncio.wait_for(coro, seconds)
        except TimeoutError:
            raise AssertionError(f"timed out after {seconds} s: {what}") from None

    return asyncio.run(bounded())


def wait_for_file(proc: subprocess.Popen, path: Path, seconds: float, what: str) -> None:
    """Wait until a child writes `path` (its port file); fail with its stderr when it exits first or the deadline
    passes (then it is killed first: reading the stderr of a running child would wait for it forever)."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            late = proc.poll() is None
            if late:
                proc.kill()
            try:
                err = proc.communicate(timeout=10)[1]
            except subprocess.TimeoutExpired:
                err = "(no stderr: the child did not exit after SIGKILL within 10 s)"
            when = f"within {seconds} s" if late else f"(it exited with {proc.returncode})"
            raise AssertionError(f"{what}: {path.name} not written {when}; stderr: {str(err)[-2000:]}")
        time.sleep(0.05)


def wait_until(pred, timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ---- the codec's coding steps on codes directly (no transforms) -----------------------------------------------
def codes_codec(spec):
    """A Codec over a payload spec whose transforms are unused: its quantise, entropy and pack steps on codes."""
    from latent_codec.bundle import InputSpec
    from latent_codec.families.flat import FlatCodec
    from latent_codec.transforms import FunctionTransforms

    return FlatCodec(
        InputSpec([1, 1, spec.code_dims], "float32", 1.0),
        [spec.code_dims],
        spec,
        FunctionTransforms(lambda x: x, lambda z: z),
    )


def pack_codes(spec, codes: np.ndarray, side: dict | None = None) -> list[bytes]:
    """codes -> payloads through the codec's steps: quantise, entropy-encode, pack."""
    c = codes_codec(spec)
    symbols = c.quantise(codes)
    return c.pack(symbols, side or {}, c.entropy_encode(symbols))


def unpack_codes(spec, payloads: list[bytes]) -> tuple[np.ndarray, dict]:
    """payloads -> (codes at bin centres, side fields) through the codec's steps: unpack, entropy-decode, dequantise."""
    c = codes_codec(spec)
    symbols, side = c.symbols(payloads)
    return c.dequantise(symbols), side


def unit(x: np.ndarray) -> np.ndarray:
    """Raw items on the [0, 1] scale, as the codec's scaling step gives them."""
    from latent_codec.bundle import InputSpec

    return InputSpec.of_items(x).to_unit(x)


class CloudStub:
    """Both v2 services behind one object (tests call Decode and Ingest alike): each method goes to its service."""

    def __init__(self, channel):
        from latent_codec.wire.aecodec.v2 import codec_pb2_grpc as pb_grpc

        self.decoding = pb_grpc.DecodingStub(channel)
        self.storage = pb_grpc.StorageStub(channel)

    def __getattr__(self, name: str):
        return getattr(
            self.storage if name in ("Ingest", "Fetch", "ListStored", "Search") else self.decoding, name
        )


def tiny_spatial_model(entropy: str, seed: int):
    """An untrained spatial model on 16x16 grey items (8 channels, 4 code and 4 hyper channels) with the given
    entropy model, its weights drawn after ``torch.manual_seed(seed)``: for the toy checks of tables and rates."""
    import torch

    from training.registry import build_model

    torch.manual_seed(seed)
    args = {"input_shape": [1, 16, 16], "channels": 8, "code_channels": 4, "hyper_channels": 4}
    return build_model("spatial", {**args, "entropy": entropy})


# A small spatial rate-distortion model on 8x8 digits (quantisation noise, a learned prior, a hyperprior): the
# training runs of the stability and divergence tests; each adds its own length and schedule.
TINY_SPATIAL_TRAINING = dict(
    model="spatial",
    model_args={"channels": 8, "code_channels": 4, "hyper_channels": 4},
    data="digits",
    limit=600,
    batch_size=32,
    lr=2e-3,
    rd_lambda=0.01,
    quant_noise="mixed",
    threads=1,
    seed=5,
)

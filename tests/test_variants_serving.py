"""Every autoencoder variant trains briefly, exports to a bundle (ONNX parity <= 1e-4 checked by the
export) and decodes through a real gRPC server: what the phone packs is what the cloud decodes.

Uses the variant list of bench/variants.py on digits (8x8) with tiny budgets, one variant per distinct
architecture: the others (denoising, sparse, contractive, weight decay, stacked) differ only in training and
export the same graphs. Each trains a model, so all are marked slow.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.variants import VARIANTS, Variant
from tests.helpers import unit


def _digits_args(v: Variant) -> dict:
    args = dict(v.model_args)
    if v.model == "dense" and args.get("hidden"):
        args["hidden"] = [max(8, h // 8) for h in args["hidden"]]  # a smaller stack for 64-pixel items
    if "code_dim" in args:
        args["code_dim"] = (
            80 if args["code_dim"] > 784 else min(args["code_dim"], 12)
        )  # overcomplete stays so
    return args


def _params():
    seen, params = set(), []
    for v in VARIANTS:
        key = (v.model, json.dumps(v.model_args, sort_keys=True))
        if key not in seen:  # the first variant of each architecture
            seen.add(key)
            params.append(pytest.param(v, id=v.name, marks=pytest.mark.slow))
    return params


def test_variants_cover_the_registry():
    from training.registry import model_names

    # The family of the notes; other registered models (e.g. rate-distortion ones) have their own tests.
    assert {"dense", "conv", "linear"} <= {v.model for v in VARIANTS} <= set(model_names())
    assert {"deconv", "avg", "max", "random"} <= {
        v.model_args.get("up") for v in VARIANTS if v.model == "conv"
    }
    assert {2, 3} <= {
        v.model_args.get("deconv_kernel") for v in VARIANTS if v.model_args.get("up") == "deconv"
    }
    names = {v.name for v in VARIANTS}
    assert all(v.twin in names | {"pca-exact"} for v in VARIANTS if v.twin)  # every claim has its plain twin


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Bundles are added to this directory by each test; the server is started per test on it."""
    return tmp_path_factory.mktemp("variant-bundles")


@pytest.mark.parametrize("variant", _params())
def test_variant_trains_exports_and_decodes_through_the_server(variant: Variant, served, tmp_path):
    import torch

    from latent_codec import datasets
    from latent_codec.codec import Codec
    from latent_codec.container import from_tensor
    from tests.helpers import decode_through_server, train_and_export

    torch.set_num_threads(1)
    train = {"epochs": 10, "batch_size": 64, **variant.train}
    if "pretrain_epochs" in train:
        train["pretrain_epochs"] = 1
    bundle = train_and_export(
        tmp_path,
        variant.model,
        _digits_args(variant),
        data="digits",
        limit=0,
        test_limit=100,
        fit_items=600,
        **train,
    )
    manifest = json.loads((bundle / "manifest.json").read_text())
    par = manifest["training"]["onnx_parity"]
    assert par["encoder_max_abs_diff"] <= 1e-4 and par["decoder_max_abs_diff"] <= 1e-4
    assert manifest["input"]["output"] == variant.model_args.get(
        "output", "linear" if variant.model == "linear" else "sigmoid"
    )
    default_loss = {"sigmoid": "bce", "linear": "mse"}[manifest["input"]["output"]]
    assert manifest["input"]["loss"] == variant.model_args.get("loss", default_loss)
    side = manifest["payload"]["side"]
    if variant.model_args.get("up") == "max":
        assert [f["bits"] for f in side] == [2, 2]  # switches travel in the payload, counted
        assert manifest["payload"]["item_bytes"] * 8 >= sum(np.prod(f["shape"]) * 2 for f in side)
    else:
        assert side == []

    root = served / variant.name
    root.mkdir()
    (root / bundle.name).symlink_to(bundle, target_is_directory=True)
    enc = Codec.open(bundle)
    x = datasets.load("digits", "test").x[:32]
    payloads = enc.encode(x)
    resp = decode_through_server(root, enc, payloads, x)
    rec = from_tensor(resp.reconstructions)
    # The cloud's reconstruction is exactly what this bundle decodes locally from the same payloads.
    local = enc.decode(payloads, unit=True)
    assert rec.shape == (32, 1, 8, 8) and np.abs(rec - local).max() <= 1e-5
    # The server's quality report is the error of what it sent back ...
    x01 = unit(x)
    assert resp.quality.batch_mse == pytest.approx(float(((rec - x01) ** 2).mean()), rel=1e-4)
    # ... and the variant reconstructs something: far closer than a blank image (quality is bench/variants.py's job).
    assert resp.quality.batch_mse < 0.5 * float((x01**2).mean())


# The model options added for the notes' configurations: each trains, exports to ONNX and decodes through the
# Codec exactly as torch computes it (float32 codes, so the only difference is torch vs ONNX Runtime).
NEW_OPTIONS = {
    "dense-sigmoid-mse": ("dense", {"code_dim": 16, "hidden": [64], "loss": "mse"}),
    "conv-notes-3block-random-unpool": (
        "conv",
        {"code_dim": 16, "channels": [16, 8, 8], "pool": "max", "up": "random", "unpool_seed": 3},
    ),
    "conv-deconv-2k+1": ("conv", {"code_dim": 16, "channels": [4, 8], "up": "deconv", "deconv_kernel": 3}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(NEW_OPTIONS))
def test_new_model_options_train_export_and_decode_through_the_codec(name, tmp_path):
    import torch

    from latent_codec.codec import Codec
    from tests.helpers import fashion_test_items, need_fashion, train_and_export
    from training.train import load_checkpoint

    need_fashion()  # 28 x 28: the three-block network needs its padding
    torch.set_num_threads(1)
    model_name, args = NEW_OPTIONS[name]
    bundle = train_and_export(
        tmp_path,
        model_name,
        args,
        epochs=3,
        limit=2000,
        lr=5e-3,
        batch_size=64,
        quant="float32",
        test_limit=100,
        fit_items=500,
    )
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model"]["args"] == {**manifest["model"]["args"], **args}  # every option recorded
    assert manifest["input"]["loss"] == args.get("loss", "bce") and manifest["input"]["output"] == "sigmoid"
    x = fashion_test_items(64)
    codec = Codec.open(bundle)
    rec = codec.decode(codec.encode(x), unit=True)
    model, _, _ = load_checkpoint(tmp_path / f"{model_name}.pt")
    with torch.no_grad():
        want = model(torch.from_numpy(unit(x)))["x_hat"].numpy()
    assert rec.shape == x.shape and np.abs(rec - want).max() <= 1e-4
    # Trained, not just wired: far closer to the items than a blank image.
    assert float(((rec - unit(x)) ** 2).mean()) < 0.5 * float((unit(x) ** 2).mean())

"""Training smoke test: loss falls, checkpoints reload with weights_only=True, the CLI reports errors."""

from __future__ import annotations

import pytest
import torch

from training.train import TrainConfig, load_checkpoint, main, save_checkpoint, train


@pytest.mark.slow
def test_short_training_improves_and_checkpoint_reloads(tmp_path):
    cfg = TrainConfig(
        model="conv",
        model_args={"code_dim": 8, "channels": [8, 16]},
        data="digits",
        epochs=3,
        limit=600,
        batch_size=64,
        seed=1,
    )
    model, record = train(cfg, progress=None)
    h = record["history"]
    assert len(h) == 3 and h[-1]["train_loss"] < h[0]["train_loss"]
    assert all("val_loss" in e and "val_psnr" in e for e in h)
    path = save_checkpoint(tmp_path / "m.pt", model, cfg, record)
    raw = torch.load(path, weights_only=True)  # no pickled code objects
    assert raw["model"] == "conv" and raw["model_args"]["code_dim"] == 8
    again, cfg2, rec2 = load_checkpoint(path)
    x = torch.rand(4, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        assert torch.equal(again(x)["x_hat"], model(x)["x_hat"])
    assert cfg2["epochs"] == 3 and rec2["history"] == h


def test_same_seed_same_model():
    cfg = TrainConfig(model="dense", model_args={"code_dim": 4}, data="digits", epochs=1, limit=300, seed=3)
    a, _ = train(cfg, progress=None)
    b, _ = train(cfg, progress=None)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["--model", "conv", "--arg", "code_dim", "--out", str(tmp_path / "x.pt")]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert (
        main(["--model", "conv", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.pt")]) == 2
    )
    assert "data not found" in capsys.readouterr().err


@pytest.mark.slow
def test_export_replaces_only_a_bundle_directory(tmp_path, capsys):
    """`training.export --out DIR` never deletes a directory that is not a bundle (unless --force)."""
    from training.export import main as export_main
    from training.train import TrainConfig, save_checkpoint, train

    cfg = TrainConfig(
        model="dense", model_args={"code_dim": 4, "hidden": [16]}, data="digits", epochs=1, limit=200
    )
    model, record = train(cfg, progress=None)
    ckpt = save_checkpoint(tmp_path / "m.pt", model, cfg, record)
    precious = tmp_path / "bundles"
    (precious / "other-bundle").mkdir(parents=True)
    (precious / "other-bundle" / "manifest.json").write_text("{}")
    (precious / "notes.txt").write_text("keep me")
    args = ["--checkpoint", str(ckpt), "--quant", "affine8", "--fit-items", "100", "--test-limit", "50"]
    assert export_main([*args, "--out", str(precious)]) == 2
    err = capsys.readouterr().err
    assert "is a directory that is not a bundle" in err and "--force" in err
    assert (precious / "notes.txt").read_text() == "keep me" and (precious / "other-bundle").is_dir()
    # A bundle directory is replaced (a re-export), and a new path is created.
    bundle = precious / "dense"
    assert export_main([*args, "--out", str(bundle)]) == 0
    first = (bundle / "manifest.json").read_text()
    assert export_main([*args, "--out", str(bundle)]) == 0
    assert (bundle / "manifest.json").read_text() != "" and sorted(p.name for p in bundle.iterdir()) == [
        "decoder.onnx",
        "encoder.onnx",
        "manifest.json",
    ]
    assert first  # the earlier bundle was a bundle: replacing it is what re-export means
    assert (precious / "notes.txt").read_text() == "keep me"
    # --force replaces even a non-bundle directory: the user asked for it.
    assert export_main([*args, "--out", str(precious), "--force"]) == 0
    assert not (precious / "notes.txt").exists() and (precious / "manifest.json").is_file()


def test_a_fine_tune_that_blows_up_stops_and_says_so(tmp_path):
    """A fine-tune whose validation loss ends an epoch far above where it started stops there, marked diverged."""
    from training.train import TrainConfig, save_checkpoint, train

    base_cfg = TrainConfig(
        model="dense",
        model_args={"code_dim": 8, "hidden": [32]},
        data="digits",
        epochs=2,
        batch_size=64,
        threads=1,
    )
    model, record = train(base_cfg, progress=None)
    start = save_checkpoint(tmp_path / "base.pt", model, base_cfg, record)
    calm = train(
        TrainConfig(**{**base_cfg.__dict__, "init_checkpoint": str(start), "lr": 1e-4}), progress=None
    )[1]
    assert len(calm["history"]) == 2 and not any(h.get("diverged") for h in calm["history"])
    wild = train(
        TrainConfig(**{**base_cfg.__dict__, "init_checkpoint": str(start), "lr": 50.0, "epochs": 5}),
        progress=None,
    )[1]
    assert wild["history"][-1].get("diverged") and len(wild["history"]) < 5

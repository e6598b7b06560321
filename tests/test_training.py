"""Training smoke test: loss falls, checkpoints reload with weights_only=True, the CLI reports errors."""

from __future__ import annotations

import torch

from training.train import TrainConfig, load_checkpoint, main, save_checkpoint, train


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

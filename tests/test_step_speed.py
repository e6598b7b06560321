"""Faster CPU training steps (training/step_speed.py): channels-last weights and a compiled forward compute what
the plain model computes, keep the weights' names (checkpoints, resumption, export), and train."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import TINY_SPATIAL_TRAINING, tiny_spatial_model
from training.resume import read_state
from training.step_speed import accelerate
from training.train import TrainConfig, load_checkpoint, save_checkpoint, train


@pytest.mark.parametrize("channels_last,compile_forward", [(True, False), (False, True), (True, True)])
def test_an_accelerated_model_computes_what_the_plain_one_does(channels_last, compile_forward):
    plain = tiny_spatial_model("meanscale", seed=3).eval()
    fast = tiny_spatial_model("meanscale", seed=3).eval()
    plain.quant_proxy = fast.quant_proxy = "mixed"  # rounded codes and their bits, as validation sees them
    accelerate(fast, channels_last, compile_forward)
    assert list(fast.state_dict()) == list(plain.state_dict())
    if channels_last:
        conv = fast.g_a[2].weight  # (8, 8, 5, 5): the two layouts differ
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    # the module's own forward is the compiled one (an instance attribute wrapping the class's forward)
    compiled = getattr(vars(fast).get("forward"), "_torchdynamo_orig_callable", None)
    assert (compiled is not None) == compile_forward
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        a, b = plain(x), fast(x)
    assert torch.allclose(a["x_hat"], b["x_hat"], atol=1e-5)
    assert torch.allclose(a["code"], b["code"], atol=1e-5) and torch.allclose(a["bits"], b["bits"], rtol=1e-5)


@pytest.mark.slow
def test_a_compiled_channels_last_run_trains_and_its_checkpoint_loads_plain(tmp_path):
    cfg = TrainConfig(**{**TINY_SPATIAL_TRAINING, "epochs": 2, "compile": True, "channels_last": True})
    model, record = train(cfg, progress=False)
    curve = [e["val_loss"] for e in record["history"]]
    assert curve[-1] < curve[0]  # it learns
    ckpt = save_checkpoint(tmp_path / "m.pt", model, cfg, record)
    plain = load_checkpoint(ckpt)[0]  # a plain model: the same names and values
    for (k, v), (k2, v2) in zip(model.state_dict().items(), plain.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2)


def test_the_speed_settings_do_not_stop_a_run_from_resuming(tmp_path):
    """A state written without them is read by a run with them (and the other way round)."""
    state = tmp_path / "run.state.pt"
    cfg = TrainConfig(**{**TINY_SPATIAL_TRAINING, "epochs": 1, "state": str(state), "stop_at_step": 3})
    try:
        train(cfg, progress=False)
    except Exception as exc:  # Stopped: the state is written
        assert "stopped at step 3" in str(exc)
    faster = TrainConfig(
        **{**TINY_SPATIAL_TRAINING, "epochs": 1, "state": str(state), "compile": True, "channels_last": True}
    )
    assert read_state(state, faster)["run"]["step"] == 3
    other = TrainConfig(**{**TINY_SPATIAL_TRAINING, "epochs": 1, "state": str(state), "lr": 1e-2})
    with pytest.raises(ValueError, match="other settings"):
        read_state(state, other)

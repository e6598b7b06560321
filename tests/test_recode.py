"""training.recode: a sealed bundle switched to another entropy coder keeps its symbols, names itself anew, and
coming back gives the original bundle id (the id hashes what decoding depends on, the coder included)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from latent_codec import ans
from latent_codec.bundle import DECODER_NAME, ENCODER_NAME, Manifest, load_bundle, write_manifest
from latent_codec.codec import Codec
from tests.helpers import ROOT, fashion_test_items, need_fashion
from training import recode

FLAT = ROOT / "zoo" / "conv-lambda-0.3"
MAP = ROOT / "zoo" / "spatial-lambda-0.0256"


@pytest.mark.parametrize("src", [FLAT, MAP], ids=["flat", "map"])
def test_recode_to_ans_and_back_keeps_symbols_and_returns_to_the_same_id(src, tmp_path):
    need_fashion()
    original = load_bundle(src).manifest
    assert original.payload.to_dict()  # a committed range-coded bundle
    x = fashion_test_items(40)
    ref = Codec.open(src)
    ref_payloads = ref.encode(x)

    as_ans = tmp_path / "ans"
    assert recode.main([str(src), "--out", str(as_ans), "--coder", ans.ANS_CODER, "--test-limit", "200"]) == 0
    m = load_bundle(as_ans).manifest
    assert m.bundle_id != original.bundle_id
    assert m.training["recoded_from"] == original.bundle_id
    assert m.metrics["test"]["items"] == 200
    old = Codec.open(as_ans)
    old_payloads = old.encode(x)
    np.testing.assert_array_equal(old.symbols(old_payloads)[0], ref.symbols(ref_payloads)[0])
    np.testing.assert_array_equal(old.decode(old_payloads), ref.decode(ref_payloads))
    # the range coder's shorter termination, on the very same symbols (and a 1-byte header for maps)
    saved = np.mean([len(a) - len(b) for a, b in zip(old_payloads, ref_payloads)])
    assert saved > 1.5, saved

    back = tmp_path / "back"
    shutil.copytree(as_ans, back)
    assert recode.main([str(back), "--test-limit", "200"]) == 0  # in place, to the default coder
    again = load_bundle(back).manifest
    assert again.bundle_id == original.bundle_id
    assert Codec.open(back).encode(x) == ref_payloads


def test_recode_refuses_a_bundle_without_entropy_coding(tmp_path, capsys):
    fixed = tmp_path / "fixed"
    shutil.copytree(FLAT, fixed)
    d = json.loads((fixed / "manifest.json").read_text())
    d["payload"].update(entropy=None, format=d["payload"]["format"].split("+")[0], item_bytes=None)
    m = Manifest.from_dict(d)
    m.seal((fixed / ENCODER_NAME).read_bytes(), (fixed / DECODER_NAME).read_bytes())
    write_manifest(fixed, m)
    assert load_bundle(fixed).manifest.payload.format == "affine5"
    assert recode.main([str(fixed), "--out", str(tmp_path / "out")]) == 2
    assert "is not entropy-coded; nothing to recode" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()

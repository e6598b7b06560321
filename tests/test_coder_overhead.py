"""bench.coder_overhead: both coders on the same symbols, side by side, and the report built from them."""

from __future__ import annotations

import pytest

from bench import coder_overhead
from tests.helpers import ROOT, fashion_test_items, need_fashion


@pytest.mark.parametrize("name", ["conv-lambda-0.3", "spatial-lambda-0.0256"])
def test_range_coder_beats_the_ans_stack_on_the_same_symbols(name):
    need_fashion()
    row = coder_overhead.measure(ROOT / "zoo" / name, fashion_test_items(200))
    assert row["ideal"] <= row["range"] < row["ans"]
    assert row["range"] - row["ideal"] < 1.0 + (
        1.0 if name.startswith("spatial") else 0.0
    )  # + a 1-byte header
    assert row["ans"] - row["range"] > 1.5
    text = coder_overhead.report([row], 200)
    assert f"`{name}`" in text and f"{row['range']:.2f}" in text and f"{row['ans']:.2f}" in text

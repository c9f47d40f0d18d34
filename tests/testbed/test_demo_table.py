"""The demo's before/after table: every row lines up, whatever the method's name."""

from __future__ import annotations

import pytest

from alignlab.testbed.demo import ROWS, table


@pytest.mark.parametrize("method,header", [("dpo", "after DPO"), ("sft", "after SFT on best")])
def test_rows_line_up_and_show_three_decimals(method, header):
    before = {key: 0.25 for _, key in ROWS}
    after = {key: 1.0 / 3 for _, key in ROWS}
    lines = table({"settings": {"method": method}, "before": before, "after": after}).splitlines()
    assert len(lines) == 1 + len(ROWS)
    assert len({len(line) for line in lines}) == 1  # one width: the columns line up
    assert lines[0].endswith(header)
    assert lines[1].split() == ["gold", "reward", "(sampled)", "0.250", "0.333"]

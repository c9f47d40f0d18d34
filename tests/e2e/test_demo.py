"""The demo's acceptance checks, from the testbed models shipped with the package: the README's
table is reproduced within the tolerance the README states, with one thread and with two; DPO
raises the held-out gold reward on the arithmetic and sentiment tasks by more than the spread
across three seeds; and a rerun with the same seed gives the same numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from alignlab.testbed.build import intra_op_threads
from alignlab.testbed.demo import ROWS, DemoSettings, run_demo, table
from alignlab.testbed.shipped import shipped_dir

pytestmark = pytest.mark.slow

SEEDS = (0, 1, 2)
README = Path(__file__).resolve().parents[2] / "README.md"


def readme_table() -> tuple[dict[str, tuple[float, float]], float]:
    """The demo table the README shows (label -> (SFT model, after DPO)) and the tolerance it states."""
    text = README.read_text()
    block = text[text.index("The demo ends with a table"):]
    block = block[block.index("```") + 3:]
    block = block[:block.index("```")]
    rows = {}
    for line in block.strip().splitlines()[1:]:
        label, before, after = re.fullmatch(r"(.+?)\s+(-?[\d.]+)\s+(-?[\d.]+)", line.strip()).groups()
        rows[label] = (float(before), float(after))
    tolerance = float(re.search(r"within ±([\d.]+) of each\s+number", text).group(1))
    return rows, tolerance


def small(task: str, seed: int) -> DemoSettings:
    """Arithmetic at the demo's own sizes (its answers are two tokens long, so it is quick);
    sentiment, whose answers are up to 64 tokens, samples a quarter of the default 512 prompts
    and trains 8 epochs on them. Both measure on all 200 held-out prompts: with 100, the sampled
    gold reward of the SFT model alone varies by about 0.1 between seeds."""
    if task == "sentiment":
        return DemoSettings(task=task, seed=seed, eval_every=0, num_prompts=128, epochs=8.0)
    return DemoSettings(task=task, seed=seed, eval_every=0)


@pytest.mark.parametrize("threads", [1, 2])
def test_the_readme_table_is_reproduced(threads, tmp_path):
    """`alignlab demo` (arithmetic, seed 0, every default) from the shipped model gives the README's
    numbers within the README's tolerance, with one intra-op thread (as a test worker) and two (as
    the demo on a 2-core machine)."""
    expected, tolerance = readme_table()
    assert [label for label, _ in ROWS] == list(expected)
    with intra_op_threads(threads):
        report = run_demo(DemoSettings(), tmp_path / "demo", tmp_path / "cache", progress=False)
    assert report["sft_model"] == str(shipped_dir("arithmetic", "sft"))
    for label, key in ROWS:
        got = (report["before"][key], report["after"][key])
        assert abs(got[0] - expected[label][0]) <= tolerance and abs(got[1] - expected[label][1]) <= tolerance, \
            (label, got, expected[label], table(report))


@pytest.mark.parametrize("task", ["arithmetic", "sentiment"])
def test_dpo_beats_sft_by_more_than_the_seed_spread(task, tmp_path):
    reports = [run_demo(small(task, s), tmp_path / f"s{s}", tmp_path / "cache", progress=False) for s in SEEDS]
    before = [r["before"]["eval/gold/sampled"] for r in reports]
    after = [r["after"]["eval/gold/sampled"] for r in reports]
    gain = sum(after) / 3 - sum(before) / 3
    spread = max(after) - min(after)
    print(task, "before", before, "after", after)
    # Measured with the native sampler, one thread: sentiment's gold from −0.030, 0.030, −0.037 to
    # 0.075, 0.075, 0.040, a gain of 0.076 against a spread of 0.035 (from 256 prompts, in twice
    # the time: 0.149 against 0.125). With the earlier "hf" sampler and 256 prompts it was 0.192
    # against 0.060; arithmetic then 0.208 against 0.100.
    assert gain > spread, (before, after)
    assert all(a > b for a, b in zip(after, before, strict=True))
    for r in reports:  # the KL to the SFT model grew from 0, and the win rate is above a coin flip
        assert r["before"]["eval/gold/kl"] == 0.0 and r["after"]["eval/gold/kl"] > 0.0
        assert r["after"]["eval/gold/win_rate"] > 0.5
    out = tmp_path / "s0"
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "model" / "config.json").exists()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["after"] == reports[0]["after"] and saved["history"][0]["step"] == 0
    assert "after DPO" in table(reports[0])


def test_same_seed_same_numbers(tmp_path):
    """Each run computes its reference log-probs into a cache of its own, so both take the same
    path whichever runs of the other tests have cached the same values; the model is the shipped one."""
    first = run_demo(small("arithmetic", 1), tmp_path / "a", tmp_path / "ca", progress=False)
    second = run_demo(small("arithmetic", 1), tmp_path / "b", tmp_path / "cb", progress=False)
    assert first["before"] == second["before"]
    assert first["after"] == second["after"]
    assert first["history"] == second["history"]
    assert second["seconds"]["model"] < 5  # the shipped model, loaded: nothing was built

"""Over-optimisation over training (eval/overopt.py, `alignlab eval overopt`, the report's section):
the numbers by hand, the KL of a table model against its closed form, the command's errors, and a
real run's checkpoints end to end."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import pytest
import yaml

from alignlab.cli import main
from alignlab.data.records import PromptRecord
from alignlab.errors import UserError, command_line
from alignlab.eval.overopt import fit_gao, measure, percentile_interval, summarize, trend
from alignlab.eval_cli import cmd_overopt
from alignlab.generation import Sample, SamplingParams
from alignlab.rewards.base import Scorer
from tests.conftest import make_pairs, write_jsonl
from tests.decoding.fakes import EOS, A, B, Letters, Markov, logp

LN2 = math.log(2)


def test_summarize_by_hand():
    """Prompt 1 has 2 samples (KL terms 1 and 3), prompt 2 one (term 2). KL = (1 + 3 + 2)/3 = 2,
    sample std √((1 + 1 + 0)/2) = 1, √KL = √2. Proxy 0.5, 0.7, 0.9: mean 0.7, std 0.2. Gold 1, 0, 0:
    mean 1/3. With 2 prompts a bootstrap resample takes prompt 1 twice (probability 1/4: its mean),
    prompt 2 twice (1/4: its mean) or one of each (1/2: the sample-weighted mean (2·a + b)/3), so the
    2.5% and 97.5% percentiles are the two prompts' own means: KL [2, 2] (both prompts' means are 2),
    proxy [0.6, 0.9], gold [0, 0.5]; √KL's interval is √ of KL's."""
    row = summarize([1.0, 3.0, 2.0], [0.5, 0.7, 0.9], [1.0, 0.0, 0.0], [2, 1], resamples=1000, seed=3)
    assert row["kl"] == pytest.approx(2.0) and row["kl_std"] == pytest.approx(1.0)
    assert row["sqrt_kl"] == pytest.approx(math.sqrt(2))
    assert row["proxy"] == pytest.approx(0.7) and row["proxy_std"] == pytest.approx(0.2)
    assert row["gold"] == pytest.approx(1 / 3)
    assert (row["kl_low"], row["kl_high"]) == pytest.approx((2.0, 2.0))
    assert (row["proxy_low"], row["proxy_high"]) == pytest.approx((0.6, 0.9))
    assert (row["gold_low"], row["gold_high"]) == pytest.approx((0.0, 0.5))
    assert (row["sqrt_kl_low"], row["sqrt_kl_high"]) == pytest.approx((math.sqrt(2), math.sqrt(2)))
    assert row["samples"] == 3 and row["prompts"] == 2
    plain = summarize([-0.5], [1.0], [0.0], [1], resamples=0)  # a negative estimate: √KL is taken of 0
    assert plain["sqrt_kl"] == 0.0 and "kl_low" not in plain and plain["kl_std"] is None
    with pytest.raises(ValueError, match="one KL term"):
        summarize([1.0], [1.0, 2.0], [0.0], [1])


def test_percentile_interval_takes_order_statistics():
    """101 draws 0..100 at 95%: floor(0.025·100) = 2 and ceil(0.975·100) = 98."""
    assert percentile_interval([float(v) for v in reversed(range(101))]) == (2.0, 98.0)


def test_fit_gao_recovers_the_form_and_refuses_too_few_points():
    """R(d) = 0.3 + d(0.8 − 0.25 log d) at d = 0, 0.5, 1, 2, 3: the fit returns α 0.8, β 0.25, no
    residual. Without a first point at d = 0, or with fewer than three points past it (two fix α
    and β exactly, with no residual to say whether the form fits), there is no fit; with three
    off the form, the residual shows it."""
    d = [0.0, 0.5, 1.0, 2.0, 3.0]
    r = [0.3] + [0.3 + x * (0.8 - 0.25 * math.log(x)) for x in d[1:]]
    fit = fit_gao(d, r)
    assert fit["alpha"] == pytest.approx(0.8, abs=1e-9) and fit["beta"] == pytest.approx(0.25, abs=1e-9)
    assert fit["rmse"] == pytest.approx(0.0, abs=1e-9) and fit["points"] == 4
    assert fit_gao(d[1:], r[1:]) is None and fit_gao(d[:2], r[:2]) is None and fit_gao(d[:3], r[:3]) is None
    assert fit_gao(d[:4], r[:4])["points"] == 3
    # a reward rising as 0.1·d² is not of the form: a residual remains
    off = fit_gao([0.0, 1.0, 2.0, 3.0], [0.0, 0.1, 0.4, 0.9])
    assert off["rmse"] > 1e-3


def test_trend_by_hand():
    rows = [{"step": 0, "proxy": 0.8, "gold": 0.5}, {"step": 8, "proxy": 0.9, "gold": 0.6},
            {"step": 16, "proxy": 1.1, "gold": 0.2}]
    assert trend(rows) == pytest.approx({"proxy_change": 0.3, "gold_change": -0.3, "gold_peak": 0.6,
                                         "gold_peak_step": 8, "gold_fall_from_peak": 0.4})


# ---------------------------------------------------------------- KL of a table model


class TableSampler:
    """A generator that draws each token from fixed probabilities (EOS, a, b), whatever the
    context, as a table model with those probabilities everywhere would: ``random.Random(seed)``,
    one stream for the whole call."""

    def __init__(self, probs: tuple[float, float, float]):
        self.probs = probs

    def generate(self, prompts, n, params, start=0):
        rng = random.Random(params.seed * 1000 + start)
        out = []
        for _ in prompts:
            samples = []
            for _ in range(n):
                ids = []
                while len(ids) < params.max_new_tokens and (not ids or ids[-1] != EOS):
                    ids.append(rng.choices((EOS, A, B), weights=self.probs)[0])
                finished = ids[-1] == EOS
                samples.append(Sample(Letters().decode(ids), (7,), tuple(ids), finished))
            out.append(samples)
        return out


class CountA(Scorer):
    name = "count-a"

    def score(self, prompts, responses):
        return [float(r.count("a")) for r in responses]


class Length(Scorer):
    name = "length"

    def score(self, prompts, responses):
        return [float(len(r)) for r in responses]


# Every context: the policy says EOS 1/2, a 1/4, b 1/4; the reference EOS 1/4, a 1/2, b 1/4.
POLICY_P = logp(1 / 2, 1 / 4, 1 / 4)
REFERENCE_P = logp(1 / 4, 1 / 2, 1 / 4)


def test_kl_of_a_table_model_matches_its_closed_form():
    """Per token the log-ratio log π/π_ref is log 2 for EOS, −log 2 for a, 0 for b. An answer that
    stopped on EOS with j a's therefore has log π(y) − log π_ref(y) = log 2 · (1 − j): the KL row
    must equal log 2 · (1 − mean a's), the proxy (CountA) of the same answers, to rounding.
    In expectation the policy draws a before EOS with odds 1/4 : 1/2, so the number of a's is
    geometric, P(j) = (1/3)^j · 2/3, mean 1/2, variance 3/4: KL = log 2 / 2 = 0.3466, and one answer's
    term has standard deviation log 2 · √(3/4) = 0.600; over 2,000 answers the mean is within
    4 · 0.600/√2000 = 0.054 of it. The reference against itself has KL exactly 0."""
    policy = Markov({t: POLICY_P for t in range(3)}, start=POLICY_P)
    reference = Markov({t: REFERENCE_P for t in range(3)}, start=REFERENCE_P)
    prompts = [PromptRecord("x", source="test", row=i) for i in range(500)]
    params = SamplingParams(max_new_tokens=60, temperature=1.0, seed=5)
    row = measure(policy, reference, TableSampler((0.5, 0.25, 0.25)), prompts, 4, params, CountA(), Length(),
                  pad_id=EOS, batch_size=16, resamples=200)
    assert row["samples"] == 2000 and row["prompts"] == 500
    assert row["kl"] == pytest.approx(LN2 * (1 - row["proxy"]), abs=1e-5)
    assert row["kl"] == pytest.approx(LN2 / 2, abs=0.054)
    assert row["sqrt_kl"] == pytest.approx(math.sqrt(row["kl"]), abs=1e-12)
    assert row["kl_low"] < row["kl"] < row["kl_high"]
    same = measure(reference, reference, TableSampler((0.25, 0.5, 0.25)), prompts[:20], 2, params, CountA(),
                   Length(), pad_id=EOS, resamples=0)
    assert same["kl"] == 0.0 and same["sqrt_kl"] == 0.0


# ---------------------------------------------------------------- the command


def error_of(tokens: list[str]) -> str:
    with command_line(), pytest.raises(UserError) as e:
        cmd_overopt(tokens)
    text = str(e.value)
    assert "\n" not in text
    return text


def run_dir(tmp_path, model, **config):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.yaml").write_text(yaml.safe_dump({"model": str(model), **config}))
    return out


def test_bad_input_is_one_line(tiny_model_dir, tmp_path):
    missing = tmp_path / "nowhere"
    assert "no run.yaml there" in error_of(["--run", str(missing)])
    bare = run_dir(tmp_path, tiny_model_dir, task="arithmetic")
    assert "has no checkpoint and no final model" in error_of(["--run", str(bare)])
    assert error_of(["--run", str(bare), "--proxy", "nonsense:x"]).startswith("--proxy nonsense:x: ")
    assert "--temperature must be 1" in error_of(["--run", str(bare), "--temperature", "0.7"])
    assert "not a testbed task" in error_of(["--run", str(bare), "--task", "chess"])
    assert "--n must be >= 1" in error_of(["--run", str(bare), "-n", "0"])
    (bare / "run.yaml").write_text(yaml.safe_dump({"model": str(tiny_model_dir), "data": "pairs.jsonl"}))
    assert "names no testbed task" in error_of(["--run", str(bare)])
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "1+2="}])
    assert "give --proxy and --gold" in error_of(["--run", str(bare), "--prompts", str(prompts)])


def test_a_runs_checkpoints_against_sqrt_kl_and_the_report_shows_them(tiny_model_dir, tmp_path, capsys):
    """A DPO run of 2 steps with a checkpoint at each: rows start (step 0, KL exactly 0: the
    reference itself), step 1 and step 2 (the final model is the last checkpoint, not repeated),
    3 answers to each of 6 prompts per row. `alignlab report` then shows the figure and the table
    with the JSON's numbers."""
    data = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(8))
    run = tmp_path / "run"
    assert main(["train", "--method", "dpo", "--model", str(tiny_model_dir), "--data", str(data), "--output-dir",
                 str(run), "--max-steps", "2", "--batch-size", "4", "--lr", "5e-2", "--save-every", "1",
                 "--keep-checkpoints", "0", "--progress", "false"]) == 0
    plot = tmp_path / "overopt.png"
    assert main(["eval", "overopt", "--run", str(run), "--task", "arithmetic", "--limit", "6", "-n", "3",
                 "--bootstrap", "100", "--device", "cpu", "--plot", str(plot)]) == 0
    report = json.loads((run / "overopt.json").read_text())
    assert [(r["model"], r["step"]) for r in report["rows"]] == [("start", 0), ("step-00000001", 1),
                                                                  ("step-00000002", 2)]
    start = report["rows"][0]
    assert start["kl"] == 0.0 and start["sqrt_kl"] == 0.0 and start["samples"] == 18 and start["prompts"] == 6
    for r in report["rows"]:
        assert r["sqrt_kl"] == pytest.approx(math.sqrt(max(r["kl"], 0.0)))
        assert 0.0 <= r["gold"] <= 1.0 and r["proxy_low"] <= r["proxy"] <= r["proxy_high"]
    assert report["rows"][2]["kl"] != 0.0  # two steps at this rate moved the model
    assert report["proxy_scorer"] == "task:arithmetic:proxy" and report["gold_scorer"] == "task:arithmetic"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "sqrt(KL)" in out and "step-00000002" in out
    assert main(["report", str(run)]) == 0
    md = (run / "report.md").read_text()
    assert "## Over-optimisation" in md and "(report/overopt.png)" in md
    table = next(line for line in md.splitlines() if line.startswith("| step-00000002 |"))
    r = report["rows"][2]
    assert table.split("|")[3].strip() == f"{r['kl']:.3f} [{r['kl_low']:.3f}, {r['kl_high']:.3f}]"
    assert table.split("|")[6].strip().startswith(f"{r['gold']:.3f} [")
    assert (run / "report" / "overopt.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("flag", ["--out", "--plot"])
def test_the_report_and_plot_are_not_written_over_the_prompt_file(tiny_model_dir, tmp_path, flag):
    """--out or --plot naming the --prompts file is refused before any model samples, and the
    file is left as it was (the report replaced it)."""
    import shutil

    run = run_dir(tmp_path, tiny_model_dir, data="pairs.jsonl")
    shutil.copytree(tiny_model_dir, run / "model")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "1+2="}])
    before = Path(prompts).read_bytes()
    assert error_of(["--run", str(run), "--prompts", str(prompts), "--proxy", "length", "--gold", "length",
                     flag, str(prompts)]) == (f"{prompts}: is the prompt file (--prompts {prompts}); writing it would "
                                              "replace what is read: write to another file")
    assert Path(prompts).read_bytes() == before


@pytest.mark.parametrize("flag, name, message", [
    ("--plot", "x.txt", "--plot {p}: the plot is written as PNG; name the file *.png"),
    ("--plot", "myplot", "--plot {p}: the plot is written as PNG; name the file *.png"),
    ("--plot", "adir", "--plot {p}: is a folder; name the file to write (*.png)"),
    ("--out", "adir", "--out {p}: is a folder; name the file to write"),
])
def test_a_report_or_plot_that_cannot_be_written_is_refused_before_sampling(tiny_model_dir, tmp_path, flag, name,
                                                                           message):
    """Each of these failed (or wrote elsewhere) only after every model had sampled."""
    run = run_dir(tmp_path, tiny_model_dir, task="arithmetic")
    shutil.copytree(tiny_model_dir, run / "model")
    (tmp_path / "adir").mkdir()
    path = tmp_path / name
    assert error_of(["--run", str(run), flag, str(path)]) == message.format(p=path)
    assert not (tmp_path / "adir.png").exists() and not (tmp_path / "myplot.png").exists()


def test_the_help_shows_one_percent_sign(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "overopt", "--help"])
    out = capsys.readouterr().out
    assert "95% percentile" in out and "%%" not in out

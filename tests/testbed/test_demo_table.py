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


def test_the_kl_row_is_labelled_the_sampled_k1_estimate_which_the_demo_says_can_be_below_0(tmp_path, monkeypatch,
                                                                                            capsys):
    """A model close to SFT can show a KL a little below 0 (k1 on a few hundred answers); the row
    says which estimate it is and the demo prints under the table why it can read below 0, the
    number as it was measured."""
    from alignlab.cli import main
    from alignlab.testbed import demo

    before = {key: 0.0 for _, key in ROWS}
    after = {**before, "eval/gold/kl": -0.0021}
    report = {"settings": {"method": "grpo"}, "before": before, "after": after, "model": str(tmp_path / "model"),
              "seconds": {"total": 1.0}}
    monkeypatch.setattr(demo, "run_demo", lambda *args, **kwargs: report)
    assert main(["demo", "--method", "grpo", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    kl_row = next(line for line in out.splitlines() if line.startswith("KL"))
    assert kl_row.split() == ["KL", "to", "SFT", "(k1,", "nats)", "0.000", "-0.002"]
    note = out[out.index(table(report)) + len(table(report)):].split("\n\nreport: ")[0].strip()
    assert note == demo.TABLE_NOTE
    assert " ".join(note.split()) == ("KL (k1): the sampled estimate, the mean over the held-out answers of log π − "
                                      "log π_SFT summed over their tokens; unbiased, but on few samples of a model "
                                      "close to SFT it can come out a little below 0")


def test_the_demo_plots_kl_axis_says_it_is_the_k1_estimate(tmp_path, monkeypatch):
    """The plot beside the table shows the same estimate, labelled as such: its first points can sit
    below 0."""
    import matplotlib.axes

    from alignlab.report.plot import plot_history

    labels = []
    set_ylabel = matplotlib.axes.Axes.set_ylabel
    monkeypatch.setattr(matplotlib.axes.Axes, "set_ylabel",
                        lambda self, label, *a, **kw: labels.append(label) or set_ylabel(self, label, *a, **kw))
    history = [{"step": 0, "eval/gold/kl": 0.0}, {"step": 4, "eval/gold/kl": -0.001}, {"step": 8, "eval/gold/kl": 0.2}]
    assert plot_history(history, tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"
    assert labels[-1] == "KL(policy ‖ SFT), nats (k1: can dip below 0)"

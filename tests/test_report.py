"""Reports (``alignlab.report``): the table's numbers and the win-rate matrix from hand-made cell
results, a self-contained HTML page that a real browser (headless Chromium) shows without errors,
and `alignlab report` on a training run."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest

from alignlab import cli
from alignlab.report import write_report
from alignlab.report.stats import column_texts, spread, spread_text, win_matrix

# Hand-made comparison: rows dpo (3 seeds), ipo (seed 2 failed), kto (every seed failed), base.
GOLD = {("dpo", 0): 0.5, ("dpo", 1): 0.7, ("dpo", 2): 0.9, ("ipo", 0): 0.6, ("ipo", 1): 0.6,
        ("base", 0): 0.4, ("base", 1): 0.4, ("base", 2): 0.4}
KL = {("dpo", 0): 1.0, ("dpo", 1): 2.0, ("dpo", 2): 6.0, ("ipo", 0): 0.5, ("ipo", 1): 1.5,
      ("base", 0): 0.0, ("base", 1): 0.0, ("base", 2): 0.0}
# gold of each row's answer to held-out prompts 0..3, by seed
ANSWERS = {("dpo", 0): [1, 0, 1, 0], ("dpo", 1): [1, 1, 0, 0], ("dpo", 2): [1, 1, 1, 0],
           ("ipo", 0): [0, 0, 1, 1], ("ipo", 1): [1, 1, 1, 1],
           ("base", 0): [0, 0, 0, 1], ("base", 1): [0, 1, 0, 0], ("base", 2): [1, 0, 0, 0]}


def _write(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value))


def make_comparison(out: Path) -> Path:
    """A comparison's folder as `alignlab compare` leaves it, written by hand."""
    cells = []
    for group in ("base", "dpo", "ipo", "kto"):
        for seed in (0, 1, 2):
            cell_id = f"{group},seed={seed}" if group == "base" else f"method={group},seed={seed}"
            kind = "base" if group == "base" else "train"
            cells.append({"id": cell_id, "kind": kind, "group": group, "seed": seed,
                          "values": {"seed": seed} if kind == "base" else {"method": group, "seed": seed}})
            folder = out / "cells" / cell_id
            folder.mkdir(parents=True)
            (folder / "log.txt").write_text("== attempt\n")
            if (group, seed) not in GOLD:
                _write(folder / "failed.json", {"returncode": 1, "log": str(folder / "log.txt")})
                continue
            metrics = {"eval/gold/sampled": GOLD[group, seed], "eval/gold/kl": KL[group, seed],
                       "eval/gold/length": 2.0 + seed}
            _write(folder / "result.json", {"status": "ok", "metrics": metrics, "steps": 8, "seconds": 10.0,
                                            "answers": "answers.jsonl",
                                            "diagnostics": {"answers": {"empty": 0.25 * seed}, "note": f"s{seed}"}})
            (folder / "answers.jsonl").write_text("".join(
                json.dumps({"prompt": i, "answer": "x", "gold": g}) + "\n"
                for i, g in enumerate(ANSWERS[group, seed])))
            if kind == "train":
                (folder / "run").mkdir()
                (folder / "run" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
                    {"step": 1, "loss": 0.7}, {"step": 4, "loss": 0.6, "eval/gold/sampled": 0.45, "eval/gold/kl": 0.5},
                    {"step": 8, "loss": 0.5, "eval/gold/sampled": GOLD[group, seed], "eval/gold/kl": KL[group, seed]}]))
    _write(out / "compare.json", {"config": str(out / "compare.yaml"), "task": "arithmetic", "cells": cells})
    return out


def table_rows(markdown: str, first_header: str, column: str = "") -> dict[str, dict[str, str]]:
    """The rows of the first Markdown table whose first header is ``first_header`` (and that has
    ``column``), by first column."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |")
                 and f"| {column}" in line)
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def test_spread_is_the_mean_and_the_sample_standard_deviation():
    """0.5, 0.7, 0.9: mean 0.7, squared deviations 0.04 + 0 + 0.04 over n − 1 = 2 -> std 0.2; one
    value has no spread; nothing finite has no entry."""
    s = spread([0.5, 0.7, 0.9])
    assert s.mean == pytest.approx(0.7) and s.std == pytest.approx(0.2) and s.n == 3
    assert spread_text(s) == "0.700 ± 0.200"
    assert spread_text(spread([0.25])) == "0.250"
    assert spread([]) is None and spread([None]) is None and spread_text(None) == "–"
    assert spread_text(spread([1500.0, 2500.0])) == "2,000 ± 707"


def test_a_seed_that_is_not_finite_shows_in_its_row():
    """0.5 and NaN: the mean is NaN, not 0.5 over one seed; 1.0 and inf: inf."""
    s = spread([0.5, float("nan")])
    assert math.isnan(s.mean) and s.std is None and (s.n, s.nonfinite) == (2, 1)
    assert spread_text(s) == "nan (1 of 2 seeds not finite)"
    assert spread_text(spread([1.0, float("inf")])) == "inf (1 of 2 seeds not finite)"
    assert spread_text(spread([float("nan")])) == "nan (1 of 1 seeds not finite)"


def test_each_entry_keeps_the_decimals_its_own_size_needs():
    """One column: a loss of 0.62 and 0.60 (mean 0.61, std 0.02/√2 = 0.01414) beside one of 24.0
    and 25.2 (mean 24.6, std 1.2/√2 = 0.849); 0.012 has three significant digits, 0.0004 and
    0.0006 (mean 5e-4, std 2e-4/√2 = 1.414e-4) exponent form. Whole numbers are whole numbers only
    in a count column: a gold of 1.0 and a KL of 0 keep their decimals, 8 steps are 8."""
    column = [spread([0.62, 0.60]), spread([24.0, 25.2]), spread([0.012]), spread([0.0004, 0.0006]), None]
    assert column_texts(column) == ["0.610 ± 0.014", "24.6 ± 0.8", "0.0120", "5.00e-04 ± 1.41e-04", "–"]
    assert column_texts([spread([1.0]), spread([0.0, 0.0])]) == ["1.000", "0.000 ± 0.000"]
    assert column_texts([spread([8, 8]), spread([8, 10]), None], counts=True) == ["8", "9.000 ± 1.414", "–"]


def test_win_matrix_by_hand():
    """A and B share seeds 0 and 1, paired alike. Seed 0: A [1, 0, 1, 0] against B [0, 0, 1, 1]
    wins, ties, ties, loses: (1 + .5 + .5 + 0) / 4 = 0.5. Seed 1: A [1, 1, 0, 0] against B
    [1, 1, 1, 1]: (.5 + .5 + 0 + 0) / 4 = 0.25. So A beats B 0.375 and B beats A 0.625. C has only
    seed 5, in common with neither, so every seed of A meets it: A0 against C5 [1, 1, 1, 1] gives
    (.5 + 0 + .5 + 0) / 4 = 0.25, A1 against C5 gives 0.25: A beats C 0.25. The diagonal is 0.5."""
    golds = {"A": {0: dict(enumerate([1, 0, 1, 0])), 1: dict(enumerate([1, 1, 0, 0]))},
             "B": {0: dict(enumerate([0, 0, 1, 1])), 1: dict(enumerate([1, 1, 1, 1]))},
             "C": {5: dict(enumerate([1, 1, 1, 1]))}}
    m = win_matrix(golds)
    assert m[0] == pytest.approx([0.5, 0.375, 0.25])
    assert m[1][0] == pytest.approx(0.625) and m[2][0] == pytest.approx(0.75)
    assert all(m[i][j] + m[j][i] == pytest.approx(1.0) for i in range(3) for j in range(3))
    # only the prompts both answered count: B's seed 0 without prompt 3 -> A0 against B0 on 0..2
    # gives (1 + .5 + .5) / 3, seed 1 still 0.25
    golds["B"][0].pop(3)
    assert win_matrix(golds)[0][1] == pytest.approx((2 / 3 + 0.25) / 2)


def test_comparison_table_marks_failed_cells_and_computes_mean_and_std(tmp_path):
    """dpo's gold 0.5, 0.7, 0.9 -> 0.700 ± 0.200; its KL 1, 2, 6: mean 3, squared deviations
    4 + 1 + 9 = 14 over 2 -> std √7 = 2.646. ipo's seeds 0 and 1 finished (gold 0.6 and 0.6 ->
    0.600 ± 0.000; KL 0.5 and 1.5 -> 1.000 ± 0.707, √0.5) and seed 2 failed; kto failed on every
    seed: its row says FAILED, and the failed cells are listed with their logs."""
    out = make_comparison(tmp_path / "cmp")
    paths = write_report(out)
    md = paths["markdown"].read_text()
    rows = table_rows(md, "row")
    assert rows["dpo"]["gold (sampled)"] == "0.700 ± 0.200"
    assert rows["dpo"]["KL to base"] == "3.000 ± 2.646"
    assert rows["dpo"]["seeds"] == "3" and rows["dpo"]["steps"] == "8"
    assert rows["base"]["KL to base"] == "0.000 ± 0.000" and rows["base"]["steps"] == "–"
    assert rows["ipo"]["gold (sampled)"] == "0.600 ± 0.000"
    assert rows["ipo"]["KL to base"] == "1.000 ± 0.707"
    assert rows["ipo"]["seeds"] == "2 of 3 (failed: seed 2)"
    assert rows["kto"]["gold (sampled)"] == "FAILED" and rows["kto"]["seeds"].startswith("0 of 3")
    # the KL column is k1's estimate, which a model close to the base can show a little below 0
    assert ("KL: the sampled (k1) estimate from the row's samples, which can fall slightly below 0 for a model "
            "close to the base.") in md
    failed = table_rows(md, "cell", "exit status")
    assert set(failed) == {"method=ipo,seed=2", "method=kto,seed=0", "method=kto,seed=1", "method=kto,seed=2"}
    assert failed["method=kto,seed=1"]["log"] == "cells/method=kto,seed=1/log.txt"
    # the win-rate matrix of the report is win_matrix of the cells' answers
    golds = {g: {s: dict(enumerate(ANSWERS[g, s])) for s in (0, 1, 2) if (g, s) in ANSWERS} for g in ("base", "dpo", "ipo")}
    expected = win_matrix(golds)
    wins = table_rows(md, "row beats column")
    for i, a in enumerate(("base", "dpo", "ipo")):
        for j, b in enumerate(("base", "dpo", "ipo")):
            assert wins[a][b] == f"{expected[i][j]:.3f}"
    # the numeric diagnostics per row (dpo: empty 0, 0.25, 0.5 -> 0.250 ± 0.250), the others per cell
    assert table_rows(md, "row", "answers/empty")["dpo"]["answers/empty"] == "0.250 ± 0.250"
    assert '"s2"' in md
    for name in ("frontier", "curves", "win_rates", "length"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(report/{name}.png)" in md


def test_html_is_self_contained(tmp_path):
    """No script, stylesheet link or address: every src and href is inline data."""
    out = make_comparison(tmp_path / "cmp")
    html = write_report(out)["html"].read_text()
    assert "<script" not in html and "<link" not in html and "@import" not in html and "url(" not in html
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", html)
    assert len(refs) == 4 and all(r.startswith("data:image/png;base64,") for r in refs)
    assert "http://" not in html and "https://" not in html


def _chromium() -> str | None:
    import os

    for name in (os.environ.get("ALIGNLAB_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.mark.skipif(_chromium() is None, reason="no Chromium found (apt-get install chromium, or set ALIGNLAB_CHROMIUM)")
def test_the_report_loads_in_a_headless_browser(tmp_path):
    """Headless Chromium opens the report from disk: no console error, no page error, no request
    but the file itself and its inline images, every image decoded (natural width > 0), and a
    screenshot that is not blank."""
    from PIL import Image, ImageStat
    from playwright.sync_api import sync_playwright

    html = write_report(make_comparison(tmp_path / "cmp"))["html"]
    shot = tmp_path / "screenshot.png"
    errors, requests = [], []
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=_chromium(), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1200, "height": 900})
        try:
            page = context.new_page()
            page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type in (
                "error", "warning") else None)
            page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html.as_uri(), wait_until="load")
            widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
            title = page.title()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            context.close()
    assert errors == []
    assert all(u == html.as_uri() or u.startswith("data:") for u in requests), requests
    assert len(widths) == 4 and all(w > 0 for w in widths), widths
    assert title.startswith("Comparison")
    image = Image.open(shot).convert("L")
    assert image.height > 2000  # the whole page: table, four figures, diagnostics
    assert ImageStat.Stat(image).stddev[0] > 20  # not blank: text and plots on white


def test_report_of_a_training_run(tiny_model_dir, pairs_file, tmp_path, capsys):
    """`alignlab report RUN_DIR` on a finished run: its final metrics from summary.json, curves
    of its training and evaluation metrics, its config."""
    from alignlab import train

    run = tmp_path / "run"
    summary = train({"method": "dpo", "model": str(tiny_model_dir), "data": str(pairs_file), "output_dir": str(run),
                     "max_steps": 3, "batch_size": 4, "lr": 1e-3, "eval_fraction": 0.25, "eval_every": 1,
                     "progress": False})
    assert cli.main(["report", str(run)]) == 0
    assert str(run / "report.html") in capsys.readouterr().out
    md = (run / "report.md").read_text()
    final = table_rows(md, "metric")
    accuracy = summary.eval_metrics["eval/rewards/accuracies"]
    assert final["eval/rewards/accuracies"]["value"] == f"{accuracy:.4g}"
    assert final["train/loss"]["value"] == f"{summary.train_metrics['loss']:.4g}"
    assert table_rows(md, "key")["method"]["value"] == "dpo"
    assert "3 optimizer steps" in md
    for name in ("training", "evaluation"):
        assert (run / "report" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(report/{name}.png)" in md
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2


def test_report_of_a_folder_that_holds_no_run(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "neither a comparison" in err and "\n" not in err
    assert cli.main(["report", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'}: does not exist" in capsys.readouterr().err
    (tmp_path / "f.txt").write_text("x")
    assert cli.main(["report", str(tmp_path / "f.txt")]) == 2
    assert f"{tmp_path / 'f.txt'}: is a file" in capsys.readouterr().err


def test_columns_of_a_decoding_method_in_training_and_without_a_task():
    """A training run evaluated through a decoding method (task_eval_decoding) gets its columns
    after the plain ones; a comparison without a task shows the held-out loss and accuracy, or
    the final training loss when nothing was held out."""
    from alignlab.report.collect import CellResult
    from alignlab.report.document import metric_columns

    cell = CellResult("c", "train", "dpo", 0, "ok", {
        "eval/gold/sampled": 0.5, "eval/gold@best-of-n/sampled": 0.8, "eval/gold@best-of-n/forward_tokens": 30.0,
        "eval/gold/kl": 0.1, "train/loss": 0.6, "steps": 8, "seconds": 3.0})
    assert metric_columns([cell]) == [
        ("eval/gold/sampled", "gold (sampled)"), ("eval/gold/kl", "KL to base"),
        ("eval/gold@best-of-n/sampled", "gold through best-of-n"),
        ("eval/gold@best-of-n/forward_tokens", "forward tokens through best-of-n"), ("steps", "steps"),
        ("seconds", "time (s)")]
    held_out = CellResult("c", "train", "dpo", 0, "ok", {"eval/loss": 0.6, "eval/rewards/accuracies": 0.9,
                                                         "train/loss": 0.5})
    assert [k for k, _ in metric_columns([held_out])] == ["eval/loss", "eval/rewards/accuracies"]
    assert [k for k, _ in metric_columns([CellResult("c", "train", "dpo", 0, "ok", {"train/loss": 0.5})])] == [
        "train/loss"]


@pytest.mark.parametrize(("name", "text", "message"), [
    ("cells/method=dpo,seed=0/result.json", "{bad", "method=dpo,seed=0/result.json: cannot read it as JSON"),
    ("cells/method=dpo,seed=0/result.json", "[1]", "method=dpo,seed=0/result.json: expected a JSON object, got list"),
    ("compare.json", "", "compare.json: cannot read it as JSON"),
    ("cells/method=dpo,seed=0/answers.jsonl", '{"prompt": 0, "gold": 1}\n{"prompt": 0, "gold": "x"}\n',
     "method=dpo,seed=0/answers.jsonl, line 2, field 'gold': expected a number, got 'x'; delete the cell's folder"),
    ("cells/method=dpo,seed=0/answers.jsonl", '{"prompt": 0}\n{"prompt": 1, "gold": 1}\n',
     "method=dpo,seed=0/answers.jsonl, line 1: no 'gold'; delete the cell's folder"),
    ("cells/method=dpo,seed=0/answers.jsonl", '{"prompt": "a", "gold": 1}\n{"prompt": 1, "gold": 1}\n',
     "method=dpo,seed=0/answers.jsonl, line 1, field 'prompt': expected a whole number (the prompt's index), got 'a'"),
    ("cells/method=dpo,seed=0/answers.jsonl", '{"prompt": 0, "gold": true}\n{"prompt": 1, "gold": 1}\n',
     "method=dpo,seed=0/answers.jsonl, line 1, field 'gold': expected a number, got True"),
])
def test_a_comparison_file_that_is_not_json_is_one_line_naming_it(tmp_path, capsys, name, text, message):
    out = make_comparison(tmp_path / "out")
    (out / name).write_text(text)
    assert cli.main(["report", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err


@pytest.mark.parametrize(("name", "text", "message"), [
    ("run.yaml", "method: [dpo", "run.yaml: not valid YAML"),
    ("run.yaml", "- dpo", "run.yaml: expected a mapping of config keys, got list"),
    ("summary.json", "not json", "summary.json: cannot read it as JSON"),
    # only the last line of metrics.jsonl may be cut short (a run still writing it); an earlier one is damage
    ("metrics.jsonl", 'xx{\n{"step": 1, "loss": 0.7}\n', "metrics.jsonl, line 1: not a JSON object"),
    ("metrics.jsonl", '{"step": 1}\n[1]\n{"step": 2}\n', "metrics.jsonl, line 2: expected a JSON object, got list"),
    ("metrics.jsonl", '{"step": "one", "loss": 0.7}\n', "metrics.jsonl, line 1, field 'step': expected a number"),
    ("overopt.json", "[1]", "overopt.json: expected a JSON object, got list"),
    ("overopt.json", '{"rows": []}', "overopt.json: no 'n'"),
    ("overopt.json", json.dumps({"n": 2, "prompts": "p", "proxy_scorer": "a", "gold_scorer": "b", "rows": [
        {"model": "start", "step": 0, "kl": 0.0, "sqrt_kl": 0.0, "proxy": 1.0, "gold": 0.5},
        {"model": "step-1", "step": 1, "kl": 0.2, "sqrt_kl": 0.4, "proxy": "1.1", "gold": 0.4}]}),
     "overopt.json: row 2, field 'proxy': expected a finite number, got '1.1'"),
])
def test_a_run_file_that_cannot_be_read_is_one_line_naming_it(tmp_path, capsys, name, text, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.yaml").write_text("method: dpo\nseed: 0\n")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.7}\n')
    (run / name).write_text(text)
    assert cli.main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "delete the cell" not in err, err


@pytest.mark.parametrize(("name", "value", "message"), [
    ("compare.json", {"config": "c.yaml"}, "compare.json, field 'cells': expected a list of cells, got nothing"),
    ("compare.json", {"cells": 5}, "compare.json, field 'cells': expected a list of cells, got int"),
    ("compare.json", {"cells": [{"id": "x"}]}, "compare.json, cell 1: no 'kind'"),
    ("compare.json", {"cells": [7]}, "compare.json, cell 1: expected a JSON object, got int"),
    ("cells/method=dpo,seed=0/result.json", {"metrics": None}, "result.json, field 'metrics': expected a JSON object, "
                                                               "got NoneType"),
    ("cells/method=dpo,seed=0/result.json", {"metrics": {}, "answers": 3}, "result.json, field 'answers': expected "
                                                                          "a file name, got int"),
])
def test_a_comparison_file_of_another_shape_is_one_line_naming_it(tmp_path, capsys, name, value, message):
    """Valid JSON that does not hold what `alignlab compare` writes (a file edited by hand or
    damaged) is a one-line error naming the file and the field, not a KeyError or TypeError."""
    out = make_comparison(tmp_path / "out")
    _write(out / name, value)
    assert cli.main(["report", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err, err


@pytest.mark.parametrize("field", ["eval_metrics", "train_metrics"])
def test_a_summary_of_another_shape_is_one_line_naming_it(tmp_path, capsys, field):
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.yaml").write_text("method: dpo\nseed: 0\n")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.7}\n')
    _write(run / "summary.json", {"steps": 1, "eval_metrics": {}, "train_metrics": {}} | {field: None})
    assert cli.main(["report", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"summary.json, field '{field}': expected a JSON object, got NoneType" in err and "\n" not in err, err


def test_a_folder_beside_the_rounds_is_not_a_round(tmp_path, capsys):
    """Rounds write round-1, round-2, ...; a folder of the user's named round-something (a copy
    kept aside) is not one of them and is left out, not read as round number 'something'."""
    run = tmp_path / "rounds"
    for name, loss in (("round-1", 0.7), ("round-2", 0.6), ("round-backup", 9.0)):
        (run / name / "train").mkdir(parents=True)
        (run / name / "train" / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": loss}) + "\n")
        _write(run / name / "train" / "summary.json", {"steps": 1, "eval_metrics": {}, "train_metrics": {"loss": loss}})
    (run / "rounds.yaml").write_text("method: dpo\nseed: 0\n")
    assert cli.main(["report", str(run)]) == 0
    md = (run / "report.md").read_text()
    # the last round's metrics (round 2: loss 0.6) and every round's steps (1 + 1); the curves
    # hold one record per round, round 1's and round 2's, and none of the copy's (loss 9)
    assert table_rows(md, "metric")["train/loss"]["value"] == "0.6"
    assert "Status: ok; 2 optimizer steps; 2 records in metrics.jsonl." in md, md


def test_a_cell_running_now_is_reported_as_running(tmp_path):
    """kto seed 0's process is alive (this one holds its lock) and its attempt says running: it is
    running. Seed 1's attempt says running too but its process has ended (killed outright): not
    run. Seed 2 failed. 8 cells of 12 finished."""
    import os
    import subprocess
    import sys

    out = make_comparison(tmp_path / "cmp")
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for seed, pid in ((0, os.getpid()), (1, int(ended.stdout))):
        folder = out / "cells" / f"method=kto,seed={seed}"
        (folder / "failed.json").unlink()
        _write(folder / "attempts.json", [{"started": "2026-01-01 00:00:00", "seconds": 1.0, "end": "running"}])
        (folder / ".lock").write_text(f"{pid}\n")
    md = write_report(out)["markdown"].read_text()
    assert "12 cells in 4 rows: 8 finished, 2 failed, 1 running, 1 not run." in md
    assert table_rows(md, "row")["kto"]["seeds"] == "0 of 3 (failed: seed 2) (1 running) (1 not run)"


def test_a_rounds_cell_shows_the_steps_of_every_round(tmp_path):
    """A comparison's rounds cell (method=dpo,seed=0) whose rounds took 3 and 5 steps: its row
    shows 8, not the last round's 5 that its result.json holds."""
    out = make_comparison(tmp_path / "cmp")
    run = out / "cells" / "method=dpo,seed=0" / "run"
    (run / "rounds.yaml").write_text("method: dpo\nrounds: 2\n")
    for r, steps in ((1, 3), (2, 5)):
        _write(run / f"round-{r}" / "train" / "summary.json", {"steps": steps, "eval_metrics": {}, "train_metrics": {}})
    result = json.loads((run.parent / "result.json").read_text())
    _write(run.parent / "result.json", {**result, "steps": 5})
    for other in ("method=dpo,seed=1", "method=dpo,seed=2"):  # the row's other seeds: 8 steps as well
        assert json.loads((out / "cells" / other / "result.json").read_text())["steps"] == 8
    md = write_report(out)["markdown"].read_text()
    assert table_rows(md, "row")["dpo"]["steps"] == "8"


def test_rounds_that_all_finished_without_training_are_reported_as_finished(tmp_path, capsys):
    """Rounds whose samples made no training data write round-N/round.json and no train/ folder:
    with both of 2 rounds done the run finished (0 steps) and the report says why nothing trained;
    with 1 of 2 done it is still running or interrupted."""
    run = tmp_path / "rounds"
    (run / "round-1").mkdir(parents=True)
    _write(run / "round-1" / "round.json", {"round": 1, "trained": False})
    (run / "rounds.yaml").write_text("method: dpo\nseed: 0\nrounds: 2\n")
    assert cli.main(["report", str(run)]) == 0
    assert "The run has not finished: no summary.json yet" in (run / "report.md").read_text()
    (run / "round-2").mkdir()
    _write(run / "round-2" / "round.json", {"round": 2, "trained": False})
    assert cli.main(["report", str(run)]) == 0
    md = (run / "report.md").read_text()
    assert "Status: ok; 0 optimizer steps; 0 records in metrics.jsonl." in md, md
    assert "The run finished without training: no round's samples made training data" in md


def test_a_run_still_writing_its_metrics_is_reported(tmp_path, capsys):
    """A last line cut short is skipped (the run is writing it); a metric that is no number (a
    list) is left out of the curves rather than stopping the report."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.yaml").write_text("method: dpo\nseed: 0\n")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.7, "odd": [1, 2]}\n{"step": 2, "loss": 0.6}\n{"step": 3, "lo')
    assert cli.main(["report", str(run)]) == 0
    md = (run / "report.md").read_text()
    assert "running or interrupted; 2 optimizer steps; 2 records in metrics.jsonl" in md

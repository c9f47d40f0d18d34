"""One cell of a comparison, in a process of its own: ``python -m alignlab.compare.cell CELL_DIR``.

The harness (``compare/run.py``) writes ``CELL_DIR/cell.json`` (the cell's settings, ``config.Cell``)
and starts this with stdout and stderr going to ``CELL_DIR/log.txt``. A ``train`` cell trains
(``alignlab.train``, in ``CELL_DIR/run/``, resumed when an earlier attempt left a run there); a
``base`` cell measures the base model as it is, a ``decode`` cell through a decoding method
(``GoldEvaluator``, so its numbers are those a training run's evaluation reports: gold reward and
win rate against the same samples of the base model). On a task the cell then answers the task's
held-out prompts once each (sampled at temperature 1 with the cell's seed, the native backend:
the same answers as the evaluation's sampled ones), scores them with the gold reward and writes
them to ``CELL_DIR/answers.jsonl``; the report's win-rate matrix compares these.

``CELL_DIR/result.json`` is written last, atomically: its presence means the cell is done. It
holds ``metrics`` (the final evaluation: ``eval/...``; ``train/...`` the last step's training
metrics), ``steps``, ``seconds`` (the wall time of all its attempts, ``attempts.py``), ``attempts``
and ``diagnostics`` (any per-cell numbers, rendered by the report as they come: here the share of
empty answers and of answers cut off at the task's token limit).
A decoding row's metrics sit under ``eval/gold/`` like the others' (``sampled``: the gold reward of
its answers, ``win_rate``, ``length``, ``forward_tokens`` per answer); it has no KL, since its
answers' log-probs are the model's, not the decoding method's.

The cell runs with the intra-op threads in its cell.json (fixed when it first ran), holds
``CELL_DIR/.lock`` while it runs (a second process on the same cell exits at once), and stops on
SIGTERM as on Ctrl-C: a training run after its step, with a checkpoint; anything else at once.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

RESULT = "result.json"
LOCK = ".lock"  # held by the process running the cell
ANSWERS = "answers.jsonl"


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as JSON to a temporary file beside ``path``, then rename it into place."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, allow_nan=True))
    os.replace(tmp, path)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def base_model(settings: dict[str, Any]) -> str:
    """The model a cell starts from: the config's, else its task's shipped SFT model."""
    if settings.get("model"):
        return str(settings["model"])
    from alignlab.testbed.shipped import task_model

    return str(task_model(settings["task"], "sft", log=_log))


class Recorded:
    """A decoding method that keeps the answers of its last call (the evaluation draws them; the
    win-rate matrix needs them too)."""

    def __init__(self, method):
        self.method = method
        self.samples: list = []

    def generate(self, prompts, n, params, start=0):
        self.samples = self.method.generate(prompts, n, params, start=start)
        return self.samples

    @property
    def last_report(self):
        return self.method.last_report


def answer_rows(task: str, prompts: list[str], samples: list) -> list[dict[str, Any]]:
    """One row per prompt: its index, the answer, its gold reward, its tokens (generated, without
    the end-of-turn token), whether it ended on its own, and the tokens the model read and wrote."""
    from alignlab.rewards import load_scorer

    golds = load_scorer(f"task:{task}").score(prompts, [s.text for s in samples])
    return [{"prompt": i, "answer": s.text, "gold": float(g), "tokens": len(s.token_ids) - int(s.finished),
             "finished": bool(s.finished), "forward_tokens": len(s.prompt_ids) + len(s.token_ids)}
            for i, (s, g) in enumerate(zip(samples, golds, strict=True))]


def sample_answers(model, tokenizer, task: str, num_prompts: int, seed: int, batch_size: int) -> list[dict[str, Any]]:
    """The model's answer to each of the task's first ``num_prompts`` held-out prompts (0: all),
    drawn as the gold evaluation draws its sampled answers."""
    from alignlab.generation import SamplingParams, make_generator
    from alignlab.tasks import get_task

    spec = get_task(task)
    prompts = spec.eval_prompts()[:num_prompts or None]
    generator = make_generator(model, tokenizer, "native", batch_size=batch_size)
    params = SamplingParams(max_new_tokens=spec.max_new_tokens, temperature=1.0, seed=seed)
    samples = [group[0] for group in generator.generate(prompts, 1, params, start=0)]
    return answer_rows(task, prompts, samples)


def answer_diagnostics(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Shares of empty answers and of answers cut off at the token limit."""
    n = max(len(rows), 1)
    return {"answers/empty": sum(not r["answer"].strip() for r in rows) / n,
            "answers/cut_off": sum(not r["finished"] for r in rows) / n}


def _write_answers(cell_dir: Path, rows: list[dict[str, Any]]) -> None:
    tmp = cell_dir / (ANSWERS + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, cell_dir / ANSWERS)


def run_train(cell_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Train the cell's config, then answer the task's prompts with the trained model."""
    from alignlab import train
    from alignlab.models import load_model, load_tokenizer

    settings = record["settings"]
    keys = dict(settings["train"])
    keys["model"] = keys.get("model") or base_model(settings)
    if settings.get("feedback"):
        from alignlab.testbed.demo import feedback_file

        keys["data"] = str(feedback_file(Path(record["data_dir"]), settings["feedback"]))
    run_dir = cell_dir / "run"
    rounds = int(keys.get("rounds") or 0)
    started = (run_dir / ("rounds.yaml" if rounds else "run.yaml")).exists()
    keys.update(output_dir=str(run_dir), resume=started, progress=False)
    if keys.get("lora"):
        keys["merge_lora"] = True  # answers are sampled from full weights
    if not rounds and (run_dir / "summary.json").exists() and (run_dir / "model").is_dir():
        from alignlab.training.run import Summary  # trained by an earlier attempt that failed after it

        _log(f"the run in {run_dir} finished earlier; answering with its model")
        summary = Summary(**json.loads((run_dir / "summary.json").read_text()))
    else:
        if started:
            _log(f"resuming the run in {run_dir}")
        summary = train(keys)
    for folder in [run_dir, *sorted(run_dir.glob("round-*/train"))]:
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # the cell is done: the final model is kept
    model_dir = Path(summary.model_dir)
    if (model_dir / "merged").is_dir():
        model_dir = model_dir / "merged"
    metrics = dict(summary.eval_metrics)
    metrics.update({f"train/{k}": v for k, v in summary.train_metrics.items() if k not in ("step", "epoch")})
    result: dict[str, Any] = {"metrics": metrics, "steps": summary.steps, "model": str(model_dir), "diagnostics": {}}
    task = settings.get("task")
    if task:
        tokenizer = load_tokenizer(str(model_dir))
        model = load_model(str(model_dir), dtype=keys.get("dtype", "fp32")).to(_device())
        if rounds and keys.get("round_reference") == "previous":
            # the last round measured itself against its own start: measure against the base model
            metrics.update(_gold(task, tokenizer, model, load_model(keys["model"]).to(_device()), record, keys))
        rows = sample_answers(model, tokenizer, task, settings["eval_prompts"], record["seed"],
                              int(keys.get("eval_batch_size") or 128))
        _write_answers(cell_dir, rows)
        metrics["eval/gold/forward_tokens"] = sum(r["forward_tokens"] for r in rows) / len(rows)
        result["diagnostics"] = answer_diagnostics(rows)
        result["answers"] = ANSWERS
    return result


def _gold(task: str, tokenizer, model, reference, record: dict[str, Any], keys: dict[str, Any]) -> dict[str, float]:
    from alignlab.eval.gold import GoldEvaluator

    evaluator = GoldEvaluator(task, tokenizer, seed=record["seed"], num_prompts=record["settings"]["eval_prompts"],
                              batch_size=int(keys.get("eval_batch_size") or 128))
    return {f"eval/{k}": v for k, v in evaluator(model, reference).items()}


def run_eval(cell_dir: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Measure the base model on the task as it is, or through the cell's decoding method."""
    from alignlab.eval.gold import GoldEvaluator
    from alignlab.models import load_model, load_tokenizer

    settings = record["settings"]
    task, seed = settings["task"], record["seed"]
    path = base_model(settings)
    tokenizer = load_tokenizer(path)
    model = load_model(path, dtype=settings.get("dtype", "fp32")).to(_device())
    decoding, name, recorded = None, "decoded", []
    if settings.get("decoding"):
        from alignlab.decoding.spec import build_method, method_scorer, parse_method

        spec = parse_method(settings["decoding"], field="decoding")
        scorer, name = method_scorer(spec), spec.method

        def decoding(generator, policy):
            recorded.append(Recorded(build_method(spec, policy, tokenizer, generator, scorer)))
            return recorded[-1]

    evaluator = GoldEvaluator(task, tokenizer, seed=seed, num_prompts=settings["eval_prompts"],
                              batch_size=settings["eval_batch_size"], decoding=decoding, decoding_name=name)
    metrics = {f"eval/{k}": v for k, v in evaluator(model, model).items()}
    if decoding is None:
        rows = sample_answers(model, tokenizer, task, settings["eval_prompts"], seed, settings["eval_batch_size"])
        metrics["eval/gold/forward_tokens"] = sum(r["forward_tokens"] for r in rows) / len(rows)
    else:
        # the row is the method's answers: its numbers take the plain columns' names
        prefix = f"eval/gold@{name}/"
        metrics = {"eval/gold/" + k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix)}
        rows = answer_rows(task, list(evaluator.prompts), [group[0] for group in recorded[-1].samples])
    _write_answers(cell_dir, rows)
    return {"metrics": metrics, "steps": 0, "model": path, "answers": ANSWERS,
            "diagnostics": answer_diagnostics(rows)}


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _stop_on_sigterm(signum, _frame) -> None:
    raise KeyboardInterrupt  # outside the training loop (which stops after its step) SIGTERM stops as Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    """Run the cell in ``argv[0]``; its result.json appears only when it succeeded. Every attempt
    is timed in attempts.json; the result's ``seconds`` is their sum, ``attempts`` their number."""
    import signal

    import torch
    from transformers.utils import logging as hf_logging

    from alignlab.compare.attempts import LAUNCHED, Attempt, hold_lock, lock_holder
    from alignlab.errors import Interrupted, UserError

    argv = sys.argv[1:] if argv is None else argv
    cell_dir = Path(argv[0])
    record = json.loads((cell_dir / "cell.json").read_text())
    lock = hold_lock(cell_dir / LOCK)
    if lock is None:
        _log(f"alignlab: error: cell {record['id']} is already running in another process (pid "
             f"{lock_holder(cell_dir / LOCK)}), perhaps left by a comparison that was killed; wait for it or stop it")
        return 2
    if record.get("threads"):  # fixed when the cell first ran: a resumed cell computes the same bits
        torch.set_num_threads(int(record["threads"]))
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    hf_logging.disable_progress_bar()
    _log(f"cell {record['id']} ({record['kind']}), seed {record['seed']}, {torch.get_num_threads()} threads")
    launched = os.environ.get(LAUNCHED)
    with Attempt(cell_dir, launched=float(launched) if launched else None) as attempt:
        try:
            result = (run_train if record["kind"] == "train" else run_eval)(cell_dir, record)
        except UserError as e:  # the user's to fix: one line, as the command line says it
            _log(f"alignlab: error: {e}")
            return 2
        except (Interrupted, KeyboardInterrupt) as e:  # stopped by a signal (after a checkpoint): a rerun resumes
            attempt.end = "interrupted"
            _log(f"alignlab: {e or 'interrupted'}")
            return 130
        attempt.end = "ok"
    seconds, attempts = attempt.total()
    result = {"id": record["id"], "status": "ok", **result, "seconds": round(seconds, 2), "attempts": attempts}
    write_json(cell_dir / RESULT, result)
    _log(f"done in {attempt.seconds:.1f} s" + (f" ({seconds:.1f} s over {attempts} attempts)" if attempts > 1 else ""))
    lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

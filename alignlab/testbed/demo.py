"""``alignlab demo``: the whole loop on a testbed task, with a number that means something.

1. load the task's tiny SFT model, shipped with the package (``testbed/shipped.py``);
2. sample K answers per training prompt from it and score them with the gold reward (an online
   method, GRPO say, skips this: it samples K answers per prompt and scores them while it trains);
3. train the chosen method (DPO by default) on the resulting dataset, measuring gold reward, win
   rate and KL on the held-out prompts at every evaluation;
4. print a before/after table and write a report folder: ``metrics.json``, ``plot.png`` (gold
   reward and KL over the training steps), the trained model in ``model/``, the synthetic data in
   ``feedback/``, and the run's own files (``metrics.jsonl``, ``run.yaml``, ``summary.json``).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from alignlab.cache import machine_signature
from alignlab.data.records import SFTRecord
from alignlab.data.write import write_jsonl
from alignlab.errors import UserError, option
from alignlab.eval.gold import GoldEvaluator
from alignlab.losses import UnknownLossError, get_loss
from alignlab.models import load_model, load_tokenizer
from alignlab.tasks import get_task, task_names
from alignlab.testbed.build import log_to_stderr
from alignlab.testbed.feedback import FeedbackSpec, synthesize
from alignlab.testbed.shipped import model_provenance, task_model
from alignlab.training.metrics import read_metrics

# Learning rates that move each task's tiny model clearly without wrecking it (measured here; a
# larger rate makes DPO push down the rejected answers so hard that the good ones go down too).
TASK_LR = {"arithmetic": 2e-5, "sentiment": 3e-4, "constraints": 3e-4}
# Online methods (GRPO and its variants): 5e-5 raised held-out gold on arithmetic (0.48 -> 0.84) and
# chainsum (0.33 -> 0.78) in one measured run each (seed 0, 512 steps of 4 prompts x 8 samples).
ONLINE_LR = 5e-5

# The feedback file each data shape trains on. SFT learns from the chosen (best) answers.
SHAPE_FILES = {"pair": "pairs.jsonl", "joint": "pairs.jsonl", "sft": "pairs.jsonl", "unpaired": "unpaired.jsonl",
               "ranked": "ranked.jsonl", "negatives": "negatives.jsonl"}
# Training keys of a run on a testbed task that the demo sets (and `alignlab compare` sets where its
# config does not): a warmed-up linear schedule, room for the tasks' prompts and answers, large
# evaluation batches, the final checkpoint only. The learning rate is ``task_lr``'s.
TESTBED_TRAIN_KEYS = {"batch_size": 16, "scheduler": "linear", "warmup_ratio": 0.1, "max_length": 256,
                      "eval_batch_size": 128, "keep_checkpoints": 1}


def task_lr(task: str, method: str) -> float | None:
    """The learning rate measured to help ``method`` on ``task``: ONLINE_LR for an online method,
    else TASK_LR's (None for a task without one)."""
    return ONLINE_LR if get_loss(method).shape == "online" else TASK_LR.get(task)


def online_budget(epochs: float, num_prompts: int, batch_size: int, k: int) -> dict[str, Any]:
    """An online method's steps for the budget of ``epochs`` passes over ``num_prompts`` prompts:
    k samples of each prompt per round, ``batch_size`` samples per step (rounded down to whole
    prompts, at least one), as many steps as it takes to see the prompts ``epochs`` times."""
    per_step = max(batch_size // k, 1)
    return {"batch_size": per_step * k, "epochs": 1.0, "max_steps": math.ceil(epochs * num_prompts / per_step)}


@dataclass
class DemoSettings:
    """Sizes of the demo. The defaults finish within minutes on two CPU cores. Each field's help
    is what ``alignlab demo --help`` prints beside its flag."""

    task: str = field(default="arithmetic", metadata={"help": "testbed task: its tiny SFT model, its prompts and its "
                                                              "gold reward (arithmetic, chainsum, sentiment, constraints)"})
    method: str = field(default="dpo", metadata={"help": "training method (see `alignlab methods`)"})
    seed: int = field(default=0, metadata={"help": "seed of sampling, training and evaluation"})
    num_prompts: int = field(default=512, metadata={"help": "training prompts to sample answers to"})
    k: int | None = field(default=None, metadata={"help": "answers sampled per prompt; none: 4, or the number a method "
                                                          "compares (online-dpo: 2)"})
    label_noise: float = field(default=0.0, metadata={"help": "fraction of pair labels to flip"})
    reward: str = field(default="gold", metadata={"help": "reward that labels the feedback",
                                                  "choices": ("gold", "proxy")})
    epochs: float = field(default=3.0, metadata={"help": "passes over the synthetic data"})
    batch_size: int = field(default=16, metadata={"help": "examples per training step"})
    lr: float | None = field(default=None, metadata={"help": "learning rate; none: the task's own, from TASK_LR "
                                                               "(online methods: ONLINE_LR)"})
    eval_every: int = field(default=16, metadata={"help": "measure the held-out gold reward every N steps"})
    eval_prompts: int = field(default=0, metadata={"help": "held-out prompts to answer at each evaluation (0: all "
                                                           "of the task's)"})
    rounds: int = field(default=1, metadata={"help": "rounds of sampling from the current policy and training on "
                                                     "its scored samples (iterative DPO, RAFT with sft), the prompts "
                                                     "split evenly over them; 1: one round on the SFT model's samples"})
    round_reference: str = field(default="fixed", metadata={
        "help": "with rounds: the reference of every round, fixed (the SFT model) or previous (the previous round's "
                "policy)", "choices": ("fixed", "previous")})
    method_params: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "hyperparameters of the method, e.g. epsilon=0.3 (repeatable)"})

    def __post_init__(self) -> None:
        if self.task not in task_names():
            raise UserError(f"task must be one of {', '.join(task_names())}, got '{self.task}'")
        try:
            spec = get_loss(self.method)
        except UnknownLossError as e:
            raise UserError(f"{e} (see `alignlab methods`)") from None
        fixed = spec.num_generations  # a method that compares a fixed number of answers per prompt
        if self.k is None:
            self.k = fixed or 4
        elif fixed is not None and self.k != fixed:
            raise UserError(f"{option('k', self.k)}: method '{self.method}' compares {fixed} answers per prompt; "
                            f"give {option('k', fixed)} or leave it out")
        if self.lr is None:
            self.lr = task_lr(self.task, self.method)
            if self.lr is None:
                raise UserError(f"the demo has no measured learning rate for task '{self.task}' yet; give one with --lr")
        if not (math.isfinite(self.lr) and self.lr > 0) or not (math.isfinite(self.epochs) and self.epochs > 0):
            raise UserError(f"lr and epochs must be positive numbers, got lr={self.lr}, epochs={self.epochs}")
        for name, value, least in (("batch_size", self.batch_size, 1), ("eval_every", self.eval_every, 0),
                                   ("eval_prompts", self.eval_prompts, 0)):
            if value < least:
                raise UserError(f"{option(name)}: must be >= {least}, got {value}")
        if spec.shape == "online":  # it samples and scores while it trains: no pairs, nothing to flip
            if self.label_noise:
                raise UserError(f"{option('label_noise')}: an online method scores its own samples with the "
                                "reward as it trains; label noise flips the pairs of the offline demo")
            if self.k < 1:
                raise UserError(f"{option('k', self.k)}: must be >= 1")
        else:  # checked now, before minutes of model building, not when the feedback is written
            FeedbackSpec(self.task, self.num_prompts, self.k, self.reward, label_noise=self.label_noise,
                         seed=self.seed)
        if not (0 <= self.seed < 2**63):
            raise UserError(f"seed must be in [0, 2**63), got {self.seed}")
        from alignlab.config import build

        build(spec.params, dict(self.method_params), f"method '{self.method}'")  # bad names/values fail now
        if self.rounds < 1:
            raise UserError(f"{option('rounds')}: must be >= 1, got {self.rounds}")
        if self.rounds > 1 and spec.shape == "online":
            raise UserError(f"{option('rounds')}: an online method samples every step; rounds are for offline methods")
        if self.rounds > 1 and self.label_noise:
            raise UserError(f"{option('rounds')}: rounds label their pairs as they sample them; label noise is for "
                            "the one-round demo")
        if self.rounds > 1 and self.num_prompts < self.rounds:
            raise UserError(f"{option('rounds')}: {self.rounds} rounds need at least as many prompts, got "
                            f"{self.num_prompts}")
        extra = sorted(spec.needs & {"strength", "group"})
        if extra:
            raise UserError(f"the demo's feedback has no {' or '.join(extra)} per pair, which '{self.method}' needs")


def _sft_input(feedback_dir: Path) -> Path:
    """The chosen answers of the pairs, as prompt/completion rows (rejection-sampling SFT)."""
    out = feedback_dir / "best.jsonl"
    pairs = [json.loads(line) for line in (feedback_dir / "pairs.jsonl").read_text().splitlines()]
    write_jsonl(out, [SFTRecord(row["prompt"], row["chosen"]) for row in pairs])
    return out


def feedback_file(feedback_dir: Path, shape: str) -> Path:
    """The file of synthetic feedback (``synthesize``'s, in ``feedback_dir``) that a method of data
    ``shape`` trains on; for SFT, the chosen answers of the pairs, written here on first use."""
    if shape == "sft":
        return feedback_dir / "best.jsonl" if (feedback_dir / "best.jsonl").exists() else _sft_input(feedback_dir)
    return feedback_dir / SHAPE_FILES[shape]


def check_out_dir(out: Path, overwrite: bool) -> None:
    """Refuse a folder that holds a training run that is not a demo, and one that holds an earlier
    demo's report unless ``overwrite``: the demo would replace what is there."""
    if (out / "run.yaml").exists() and not (out / "feedback" / "metadata.json").exists():
        raise UserError(f"'{out}' holds a training run that is not a demo; the demo would overwrite it. "
                        "Choose another report folder")
    if not overwrite and ((out / "metrics.json").exists() or (out / "feedback" / "metadata.json").exists()):
        what = "report" if (out / "metrics.json").exists() else "feedback (from a demo that did not finish)"
        raise UserError(f"'{out}' holds an earlier demo's {what}; the demo would replace it. Choose another report "
                        f"folder, or pass {option('overwrite')} to replace it")


def default_out_dir(settings: DemoSettings) -> str:
    """``runs/demo-TASK-METHOD-sSEED``, with the reward, label noise and rounds when they are not
    the defaults, so that a proxy-labelled or noisy demo does not land in the gold one's folder."""
    name = f"runs/demo-{settings.task}-{settings.method}-s{settings.seed}"
    if settings.reward != "gold":
        name += f"-{settings.reward}"
    if settings.label_noise:
        name += f"-noise{settings.label_noise:g}"
    if settings.rounds > 1:
        name += f"-rounds{settings.rounds}"
    return name


def run_demo(settings: DemoSettings, out_dir: str | Path, cache_dir: str | Path | None = None,
             progress: bool = True, overwrite: bool = False, report_to: list[str] | None = None) -> dict[str, Any]:
    """Run the demo; return (and write to ``out_dir/metrics.json``) its numbers. A folder that
    holds an earlier demo's report is refused unless ``overwrite``. ``report_to`` names metric
    sinks the training run also logs to (as the ``report_to`` config field)."""
    from transformers.utils import logging as hf_logging

    from alignlab import train

    hf_logging.disable_progress_bar()  # weight loading and saving bars would bury the demo's own output
    out = Path(out_dir)
    check_out_dir(out, overwrite)
    t0 = time.perf_counter()
    sft_dir = task_model(settings.task, "sft", cache_dir, log=log_to_stderr, progress=progress)
    t_model = time.perf_counter() - t0

    shape = get_loss(settings.method).shape
    online = shape == "online"
    rounds = settings.rounds > 1  # the policy samples its own data each round (alignlab/rounds.py)
    if online or rounds:  # the method samples and scores while it trains: no feedback file, only what it was told
        feedback, data = {"online": True, "reward": f"task:{settings.task}:{settings.reward}"}, f"task:{settings.task}"
        (out / "feedback").mkdir(parents=True, exist_ok=True)
        (out / "feedback" / "metadata.json").write_text(json.dumps(feedback, indent=1))
    else:
        log_to_stderr(f"sampling {settings.k} answers to each of {settings.num_prompts} prompts and scoring them")
        feedback = synthesize(sft_dir, FeedbackSpec(settings.task, settings.num_prompts, settings.k, settings.reward,
                                                    label_noise=settings.label_noise, seed=settings.seed),
                              out / "feedback", progress=progress)
        data = feedback_file(out / "feedback", shape)
    t_feedback = time.perf_counter() - t0 - t_model

    task = get_task(settings.task)
    before = GoldEvaluator(task, load_tokenizer(str(sft_dir)), seed=settings.seed, num_prompts=settings.eval_prompts,
                           progress=progress)
    sft_model = load_model(str(sft_dir))
    before_metrics = {f"eval/{k}": v for k, v in before(sft_model, sft_model).items()}

    config = {
        **TESTBED_TRAIN_KEYS,
        "method": settings.method, "model": str(sft_dir), "data": str(data), "output_dir": str(out),
        "overwrite": True, "epochs": settings.epochs, "batch_size": settings.batch_size, "lr": settings.lr,
        "eval_every": settings.eval_every,
        "seed": settings.seed, "task": settings.task, "task_eval_prompts": settings.eval_prompts,
        "progress": progress, "cache_dir": str(cache_dir) if cache_dir else None,
        **({"report_to": list(report_to)} if report_to else {}),
        **settings.method_params,
    }
    spec = get_loss(settings.method)
    if online:
        budget = online_budget(settings.epochs, settings.num_prompts, settings.batch_size, settings.k)
        if budget["batch_size"] != settings.batch_size:
            log_to_stderr(f"batch size {settings.batch_size} is not a multiple of --k {settings.k}: each step "
                          f"trains on {budget['batch_size']} answers ({budget['batch_size'] // settings.k} prompts)")
        config.update(data=data, reward=[f"task:{settings.task}:{settings.reward}"], num_generations=settings.k,
                      **budget)
    if rounds:
        # the same prompts and samples per prompt as one round, split evenly over the rounds; each
        # round trains `epochs` passes over its own data, so the steps add up to one round's
        config.update(data=data, reward=[f"task:{settings.task}:{settings.reward}"], num_generations=settings.k,
                      rounds=settings.rounds, round_prompts=settings.num_prompts // settings.rounds,
                      round_reference=settings.round_reference)
    if "sample_max_new_tokens" in spec.defaults() and "sample_max_new_tokens" not in settings.method_params:
        config["sample_max_new_tokens"] = task.max_new_tokens  # samples as long as the task's answers
    summary = train(config)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # the report keeps the final model only
    for folder in sorted(out.glob("round-*/train")):  # and each round's model
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
    t_train = time.perf_counter() - t0 - t_model - t_feedback

    after = {k: v for k, v in summary.eval_metrics.items() if k.startswith("eval/gold")}
    if rounds and settings.round_reference == "previous":  # the run measured the last round against its
        # own reference, the previous round's policy: measure the final model against the SFT model
        after = {f"eval/{k}": v for k, v in before(load_model(summary.model_dir), sft_model).items()}
    history = [{"step": 0, **{k: v for k, v in before_metrics.items() if k.startswith("eval/gold")}}]
    offset = 0  # rounds: each round's steps after the previous rounds'
    for folder in ([out / f"round-{r}" / "train" for r in range(1, settings.rounds + 1)] if rounds else [out]):
        rows = read_metrics(folder / "metrics.jsonl") if (folder / "metrics.jsonl").exists() else []
        history += [{k: (v + offset if k == "step" else v) for k, v in row.items()
                     if k == "step" or k.startswith("eval/gold")} for row in rows if "eval/gold/sampled" in row]
        offset += max((row.get("step", 0) for row in rows), default=0)
    report = {
        "settings": asdict(settings),
        "sft_model": str(sft_dir),
        "model": summary.model_dir,
        "sft_model_provenance": model_provenance(sft_dir),
        "before": before_metrics,
        "after": after,
        "history": history,
        "train": summary.train_metrics,
        "feedback": {k: v for k, v in feedback.items() if k != "flipped_rows"},
        "machine": machine_signature(),
        "seconds": {"model": round(t_model, 1), "feedback": round(t_feedback, 1), "train": round(t_train, 1),
                    "total": round(time.perf_counter() - t0, 1)},
    }
    (out / "metrics.json").write_text(json.dumps(report, indent=1))
    from alignlab.report.plot import plot_history

    plot_history(history, out / "plot.png", title=f"{settings.method} on {settings.task} (seed {settings.seed})")
    return report


ROWS = [("gold reward (sampled)", "eval/gold/sampled"), ("gold reward (greedy)", "eval/gold/greedy"),
        ("win rate vs SFT", "eval/gold/win_rate"), ("KL to SFT (k1, nats)", "eval/gold/kl"),
        ("response length (tokens)", "eval/gold/length")]
# printed under the table: what its KL row is, and why it may read below 0
TABLE_NOTE = ("KL (k1): the sampled estimate, the mean over the held-out answers of log π − log π_SFT summed\n"
              "over their tokens; unbiased, but on few samples of a model close to SFT it can come out a little\n"
              "below 0")


def table(report: dict[str, Any]) -> str:
    """The before/after table printed at the end of the demo."""
    method = report["settings"]["method"].upper() if report["settings"]["method"] != "sft" else "SFT on best"
    after = f"after {method}"
    width = max(14, len(after) + 2)
    lines = [f"{'':26}{'SFT model':>12}{after:>{width}}"]
    for label, key in ROWS:
        before_value, after_value = report["before"].get(key, float("nan")), report["after"].get(key, float("nan"))
        lines.append(f"{label:26}{before_value:>12.3f}{after_value:>{width}.3f}")
    return "\n".join(lines)

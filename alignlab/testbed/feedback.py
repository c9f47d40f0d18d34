"""Synthetic feedback: sample K responses per prompt from a model, score them, write datasets.

A generator (``make_generator``) draws the samples, the task's scorer (``task:NAME:gold|proxy``)
scores them, ``alignlab.data.convert`` pairs them and adds label noise, and
``alignlab.data.write`` writes the files: the same code that converts a user's own data.

The same samples are written in every shape alignlab trains on, as the JSONL files a user would
bring (TRL's standard text format where TRL has one: the prompt, then the answer):

- ``pairs.jsonl``: ``{"prompt", "chosen", "rejected", "score_chosen", "score_rejected"}``, one pair
  per prompt chosen by ``pair_rule`` (``best_worst``: the first best against the first worst
  sample; ``random``: a random pair whose scores differ; ``margin``: a random pair whose scores
  differ by at least ``margin``); a prompt whose samples all score the same gives no pair;
- ``ranked.jsonl``: ``{"prompt", "completions", "scores", "ranks"}``, all K samples (rank 1 is
  the best; equal scores share the lower rank);
- ``unpaired.jsonl``: ``{"prompt", "completion", "label"}`` (TRL's KTO format), thumbs up when
  the score is above the mean score of all samples;
- ``scored.jsonl``: ``{"prompt", "completion", "score"}``, every sample;
- ``negatives.jsonl``: ``{"prompt", "rejected"}``, every thumbs-down sample alone;
- ``metadata.json``: how the files were made, including the flipped pairs.

An empty (or whitespace-only) answer is no valid response in any of these formats, so it is left
out of every file and counted in the metadata (``empty_samples_dropped``). An answer cut off at the
task's ``max_new_tokens`` is kept as it is (training appends EOS to it, as to any response) and
counted (``unfinished_samples_kept``).

Label noise flips exactly ``round(label_noise × pairs)`` pairs, drawn with the run's seed; their
row numbers (0-based lines of ``pairs.jsonl``) are recorded in the metadata. The random pair rules
and the label noise each draw from ``random.Random(f"feedback/{seed}")``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from alignlab.data import convert
from alignlab.data.records import NegativeRecord, PairRecord, ScoredRecord, UnpairedRecord
from alignlab.data.write import record_to_row, write_rows
from alignlab.errors import UserError
from alignlab.generation import SamplingParams, make_generator
from alignlab.models import load_model, load_tokenizer
from alignlab.rewards import load_scorer
from alignlab.tasks import get_task

PAIR_RULES = ("best_worst", "random", "margin")
FILES = ("pairs", "ranked", "unpaired", "scored", "negatives")


@dataclass(frozen=True)
class FeedbackSpec:
    """What feedback to synthesize: which task's prompts, how many answers, scored and paired how.
    Each field's help is what ``alignlab feedback --help`` prints beside its flag."""

    task: str = field(default="arithmetic", metadata={"help": "testbed task whose prompts are answered and whose "
                                                              "reward scores the answers"})
    num_prompts: int = field(default=512, metadata={"help": "number of training prompts"})
    k: int = field(default=4, metadata={"help": "answers sampled per prompt"})
    reward: str = field(default="gold", metadata={"help": "reward that scores the answers: the task's gold reward "
                                                          "or its proxy", "choices": ("gold", "proxy")})
    pair_rule: str = field(default="best_worst", metadata={"help": "which two of a prompt's answers make its pair",
                                                           "choices": PAIR_RULES})
    margin: float = field(default=0.0, metadata={"help": "minimum score gap of a pair under pair_rule margin or random (a "
                                                         "random pair whose scores differ by at least this)"})
    label_noise: float = field(default=0.0, metadata={"help": "fraction of pair labels to flip"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature"})
    seed: int = field(default=0, metadata={"help": "seed of sampling, pairing and label flips"})

    def __post_init__(self) -> None:
        get_task(self.task)
        checks = [
            ("num_prompts", self.num_prompts >= 1, f"num_prompts must be >= 1, got {self.num_prompts}"),
            ("k", self.k >= 2, f"k must be >= 2 (pairs need two samples), got {self.k}"),
            ("reward", self.reward in ("gold", "proxy"), f"reward must be 'gold' or 'proxy', got '{self.reward}'"),
            ("pair_rule", self.pair_rule in PAIR_RULES,
             f"pair_rule must be one of {', '.join(PAIR_RULES)}, got '{self.pair_rule}'"),
            ("margin", self.margin >= 0, f"margin must be >= 0, got {self.margin}"),
            ("margin", self.margin == 0 or self.pair_rule in ("margin", "random"),
             f"margin applies to pair_rule margin or random, not {self.pair_rule}"),
            ("label_noise", 0.0 <= self.label_noise < 0.5, f"label_noise must be in [0, 0.5), got {self.label_noise}"),
            ("temperature", self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            ("seed", self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
        ]
        for name, ok, message in checks:
            if not ok:
                error = UserError(f"feedback: {message}")
                error.field = name  # the field at fault, for a caller that names it its own way
                raise error


def pairs_of(prompts: list[str], texts: list[list[str]], scores: list[list[float]], spec: FeedbackSpec):
    """One pair per prompt by ``spec.pair_rule`` (``convert.ranked_to_pairs``), then label noise
    (``convert.flip_labels``); the pairs and the flipped rows."""
    seed = f"feedback/{spec.seed}"
    ranked = [convert.rank_responses(p, row, sc) for p, row, sc in zip(prompts, texts, scores, strict=True)
              if len(row) >= 2]
    rule, margin = ("best_worst", 0.0) if spec.pair_rule == "best_worst" else ("random", spec.margin)
    pairs = convert.ranked_to_pairs(ranked, rule, margin=margin, seed=seed).records
    noisy = convert.flip_labels(pairs, spec.label_noise, seed=seed)
    return noisy.records, noisy.flipped


def _sample_and_score(model_dir: str | Path, prompts: list[str], spec: FeedbackSpec, batch_size: int,
                      progress: bool) -> tuple[list[list[str]], list[list[float]], int, int]:
    """Sample ``spec.k`` answers to each prompt and score them: (answers, their scores, empty
    answers dropped, unfinished answers kept), the answers of each prompt in the order drawn."""
    from tqdm.auto import tqdm

    task = get_task(spec.task)
    scorer = load_scorer(f"task:{spec.task}:{spec.reward}")
    tok = load_tokenizer(str(model_dir))
    model = load_model(str(model_dir))
    params = SamplingParams(max_new_tokens=task.max_new_tokens, temperature=spec.temperature, seed=spec.seed)
    label = f"sampling {spec.k} answers to {len(prompts)} prompts" if progress else None
    samples = make_generator(model, tok, batch_size=batch_size, progress=label).generate(prompts, spec.k, params)
    # An empty answer cannot be a response in any dataset format: it is dropped and counted.
    texts = [[s.text for s in row if s.text.strip()] for row in samples]
    empty = sum(len(row) for row in samples) - sum(len(row) for row in texts)
    unfinished = sum(not s.finished for row in samples for s in row if s.text.strip())
    scoring = tqdm(zip(prompts, texts, strict=True), total=len(prompts), desc=f"scoring ({spec.reward} reward)",
                   unit="prompt", leave=False, disable=not progress)
    scores = [scorer.score([p] * len(row), row) for p, row in scoring]
    return texts, scores, empty, unfinished


def held_out_pairs(model_dir: str | Path, spec: FeedbackSpec, batch_size: int = 256,
                   progress: bool = False) -> list[PairRecord]:
    """Pairs on the task's held-out evaluation prompts (never a training prompt), made as
    ``synthesize`` makes its training pairs: ``spec.k`` answers per prompt from ``model_dir``, scored
    by ``spec.reward``, paired by ``spec.pair_rule``, labels flipped at ``spec.label_noise``; a
    prompt whose answers all score the same gives no pair. ``spec.num_prompts`` is not used: every
    evaluation prompt is answered. Each pair's ``row`` is its prompt's place (from 1) in the set."""
    prompts = get_task(spec.task).eval_prompts()
    texts, scores, _, _ = _sample_and_score(model_dir, prompts, spec, batch_size, progress)
    places = {p: i + 1 for i, p in enumerate(prompts)}
    pairs, _ = pairs_of(prompts, texts, scores, spec)
    return [replace(p, source=f"task:{spec.task} (held-out prompts)", row=places[p.prompt]) for p in pairs]


def synthesize(model_dir: str | Path, spec: FeedbackSpec, out_dir: str | Path, batch_size: int = 256,
               progress: bool = False) -> dict:
    """Sample, score and write every dataset shape under ``out_dir``; return the metadata.
    ``progress`` shows a bar while sampling and one while scoring."""
    prompts = get_task(spec.task).train_prompts(spec.num_prompts, spec.seed)
    texts, scores, empty, unfinished = _sample_and_score(model_dir, prompts, spec, batch_size, progress)
    flat = [s for row in scores for s in row]
    threshold = sum(flat) / len(flat) if flat else 0.0
    pairs, flipped = pairs_of(prompts, texts, scores, spec)

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create feedback directory '{out}': {e.strerror}") from None
    each = [(p, t, s) for p, row, sc in zip(prompts, texts, scores, strict=True) for t, s in zip(row, sc, strict=True)]
    records = {
        "pairs": pairs,
        "unpaired": [UnpairedRecord(p, t, s > threshold) for p, t, s in each],
        "scored": [ScoredRecord(p, t, s) for p, t, s in each],
        "negatives": [NegativeRecord(p, t) for p, t, s in each if s <= threshold],
    }
    rows = {name: [record_to_row(r) for r in rs] for name, rs in records.items()}
    # The ranked file keeps each prompt's samples in the order drawn, with their competition ranks.
    rows["ranked"] = [{"prompt": p, "completions": list(row), "scores": sc, "ranks": convert.competition_ranks(sc)}
                      for p, row, sc in zip(prompts, texts, scores, strict=True) if len(row) >= 2]
    for name in FILES:
        write_rows(out / f"{name}.jsonl", rows[name])
    meta = {
        "spec": asdict(spec),
        "model": str(model_dir),
        "rows": {name: len(rows[name]) for name in FILES},
        "prompts_without_pair": len(prompts) - len(pairs),
        "empty_samples_dropped": empty,
        "unfinished_samples_kept": unfinished,
        "mean_score": threshold,
        "label_threshold": threshold,
        "flipped_pairs": len(flipped),
        "flipped_rows": flipped,
        "files": {name: f"{name}.jsonl" for name in FILES},
    }
    (out / "metadata.json").write_text(json.dumps(meta, indent=1))
    return meta

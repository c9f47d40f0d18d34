"""Rounds: the policy samples, a scorer ranks the samples, an offline method learns from the ranking,
and the next round starts from the trained policy.

A run with ``rounds: N`` (``alignlab iterate CONFIG``, or ``alignlab train`` with ``rounds``) does,
for round r = 1..N, under ``output_dir/round-r/``:
1. ``prompts.jsonl``: the round's prompts, ``round_prompts`` new ones per round (a prompt file's
   prompts split evenly over the rounds by default; a testbed task's training prompts, 256 per
   round by default), in order, wrapping around a prompt file that runs out;
2. ``samples.jsonl``: ``num_generations`` samples of each from the current policy, drawn by
   ``alignlab sample``'s machinery (``sample_cli.run_sample``) with the rollout section's sampling
   settings and a seed that is a function of (seed, round);
3. ``data.jsonl``: the samples scored by ``reward`` (one scorer spec or a weighted list, as online
   methods take it), ranked per prompt and converted to the method's data shape with the existing
   converters: SFT methods get each prompt's ``keep_top`` best samples (scored at least
   ``min_score``), pair methods the pairs of ``pair_rule`` (``pair_margin``), unpaired methods
   (KTO...) those pairs as a thumbs up and a thumbs down, ranked methods the ranked lists;
4. ``train/``: an ordinary training run (``training.run.train``) of the method on that data from
   the current policy, for the round's budget (``epochs`` or ``max_steps`` of the config, per
   round), with the reference fixed at the starting model (``round_reference: fixed``, the default)
   or the round's starting policy (``previous``);
5. ``round.json``: what the round did (prompts, samples, mean score per scorer term, data made and
   dropped, the training's final metrics, the model it produced), written last.
``rounds.jsonl`` beside the rounds gathers every finished round's record. With metric sinks
(``report_to``), each round's training logs as a run of its own: TensorBoard under
``output_dir/tensorboard/round-r`` (or ``logging_dir/round-r``), W&B and trackio as
``NAME-round-r``, all rounds in one group (``run_group``, default ``run_name`` or the folder's name).

In a scorer spec, ``{policy}`` is the round's starting policy, ``{start}`` the starting model and
``{reference}`` the run's reference (``reference_model``, else the starting model):
``judge:{policy}`` is the policy judging its own samples (self-rewarding),
``implicit:policy={policy},reference={reference}`` its implicit DPO reward. On a testbed task (``data:
task:NAME`` or the ``task`` evaluation) scored by anything but the task's gold reward, each round
also reports how its scores agree with gold: ``gold_agreement``, over every two samples of a
prompt that gold tells apart, the share the scores order alike (a score tie counts half), and for
pairs ``pairs_gold_correct``, the share whose chosen answer gold prefers.

Resume: every step is kept on disk as it finishes. With ``resume`` a run skips the rounds that
have a ``round.json``, and within the round it stopped in, sampling resumes where its file ends
(``alignlab sample``'s resume: the same samples as an uninterrupted run with the native backend),
scoring and conversion are redone from the samples if the round's training had not started, and
otherwise its ``scored.json`` and ``data.jsonl`` are kept (a scorer asked again, such as a judge
behind an endpoint, may answer otherwise), and training resumes from the round's newest checkpoint
(exact with ``save_every``). So a run killed anywhere ends with the weights of an uninterrupted
one, with a scorer that gives the same scores for the same samples.

The recipes (``recipe``): ``raft``, rejection-sampling fine-tuning (Dong et al. 2023, RAFT: Reward
rAnked FineTuning): SFT on each prompt's best sample, no reference; with one round it is best-of-n
distillation. ``iterative-dpo`` (Xiong et al. 2024, Iterative Preference Learning from Human
Feedback; Dong et al. 2024, RLHF Workflow): DPO (or any pair method) on each prompt's best and worst
samples, the reference fixed at the starting model. ``self-rewarding`` (Yuan et al. 2024,
Self-Rewarding Language Models): the same with the policy as its own judge (reward
``judge:{policy}``, a pairwise judge asked in both orders against an empty answer, unless the
config gives another) and each round's reference the previous round's policy. ``osp`` (Online
Self-Preferring Language Models): ``soft-preference`` on the pairs, each weighted by its strength,
the scorer's probability that the chosen answer is better (a pairwise judge's verdicts in both
orders; σ of the score difference otherwise), not a hard label. ``spa`` (Kim et al. 2025, Spread
Preference Annotation): two samples per prompt labelled by the policy's implicit reward
``implicit:policy={policy},reference={reference}`` (start from a DPO model with its SFT model as
``reference_model``: against itself the implicit reward is 0), trained with ``soft-preference``
after the paper's label refinement (``_refined``: the least confident pairs smoothed).

Rounds run in one process: sampling is not split over processes, and each round's training is a
single-process run. A config that names rounds under torchrun is refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from alignlab.config import TrainConfig, config_differences, make_config
from alignlab.data import convert
from alignlab.data.records import PairRecord, PromptRecord, RankedRecord, Text
from alignlab.data.rows.fields import to_text
from alignlab.data.write import write_jsonl, write_rows
from alignlab.errors import ConfigError, UserError, option
from alignlab.generation.base import SamplingParams
from alignlab.rewards.base import reward_prompt, win_points
from alignlab.training.online import round_seed
from alignlab.training.online_run import data_task, max_new_tokens
from alignlab.training.rollout import load_reward_terms, score_samples
from alignlab.training.run import Summary, check_model_outside
from alignlab.training.run import train as train_once
from alignlab.training.sinks import TENSORBOARD_FOLDER, run_name

TASK_ROUND_PROMPTS = 256  # a testbed task's prompts per round when the config gives no round_prompts
# Samples per chunk of a round's sampling (the unit that is scored and written, so a killed round
# resumes from its last chunk) when the config gives no generation_batch_size.
ROUND_CHUNK = 64
CONFIG_FILE = "rounds.yaml"
DONE_FILE = "round.json"
SCORED_FILE = "scored.json"  # the round's scores and data counts, written before its training starts


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_rounds(cfg: TrainConfig) -> Summary:
    """Run ``cfg.iterate.rounds`` rounds (see the module docstring); returns the last round's
    training summary, with the run folder as ``output_dir`` and ``steps`` the sum over the rounds."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("rounds: rounds run in one process (their sampling is not split over processes); "
                          "launch without torchrun")
    out = Path(cfg.output_dir)
    # everything that can be checked before a model loads is, before the folder is claimed
    specs = _reward_specs(cfg)
    _check_specs(specs, max_new_tokens(cfg))
    fixed = _fixed_scorers(specs, max_new_tokens(cfg))
    prompts = [r.prompt for r in _scorable(cfg, _with_room(cfg, _all_prompts(cfg)), fixed)]
    per_round = _per_round(cfg, len(prompts))
    gold = _gold(cfg, specs)
    _claim(cfg, out)
    policy, summary, steps = cfg.model, None, 0
    for r in range(1, cfg.iterate.rounds + 1):
        folder = out / f"round-{r}"
        done = folder / DONE_FILE
        if done.exists():
            record = json.loads(done.read_text())
            # a round that trained left its model in its folder, read from where the folder is now
            policy = str(folder / "train" / "model") if record.get("trained") else policy
            _log(f"round {r}/{cfg.iterate.rounds}: done earlier ({policy})")
            summary = Summary(**record["summary"]) if record.get("summary") else summary
            steps += int(record["summary"]["steps"]) if record.get("summary") else 0
            continue
        scored = folder / SCORED_FILE
        if (folder / "train" / "run.yaml").exists() and scored.exists():
            # the round's training had started: keep the data it trains on (a scorer asked again,
            # such as a judge behind an endpoint, may not repeat itself)
            record = json.loads(scored.read_text())
            data = folder / "data.jsonl"
        else:
            _log(f"round {r}/{cfg.iterate.rounds}: sampling {cfg.rollout.num_generations} answers to each of "
                 f"{per_round} prompts from {policy}")
            mine = [prompts[(i + (r - 1) * per_round) % len(prompts)] for i in range(per_round)]
            samples = _sample(cfg, r, policy, mine, folder)
            rows = [json.loads(line) for line in samples.read_text(encoding="utf-8").splitlines() if line.strip()]
            terms = load_reward_terms(specs, cfg.rollout.reward_weights,
                                      partial(_resolve, policy=policy, start=cfg.model,
                                              reference=cfg.reference_model or cfg.model),
                                      max_new_tokens=max_new_tokens(cfg), loaded=fixed)
            ranked, scores = _score(terms, rows, samples)
            data, made, records = _convert(cfg, ranked, folder / "data.jsonl", terms)
            if gold is not None:
                scores.update(_agreement(gold, ranked, records))
            record = {"round": r, "start_model": policy, "prompts": per_round,
                      "samples": sum(len(row["samples"]) for row in rows), **scores, "data": made}
            _write_json(scored, record)
        made = record["data"]
        if made["examples"] == 0:
            _log(f"round {r}: the samples made no training data ({made['dropped']}); the policy stays as it is")
            record.update(model=policy, trained=False, summary=None)
        else:
            summary = train_once(_round_config(cfg, r, policy, data, folder / "train"))
            policy, steps = summary.model_dir, steps + summary.steps
            record.update(model=policy, trained=True, summary=dataclasses.asdict(summary))
        _write_json(done, record)
        _gather(out, r)
    if summary is None:  # no round made data (a judge that never tells two answers apart): nothing trained
        _log(f"rounds: none of the {cfg.iterate.rounds} rounds made training data (see {out / 'rounds.jsonl'}); "
             f"the policy is the starting model")
        return Summary(output_dir=str(out), model_dir=policy, steps=0)
    return dataclasses.replace(summary, output_dir=str(out), model_dir=policy, steps=steps)


# -- the run folder ---------------------------------------------------------------------------------


def _claim(cfg: TrainConfig, out: Path) -> None:
    """Refuse to mix two runs in one folder (rounds, or rounds and a training run), as ``alignlab
    train`` does; ``overwrite`` clears it (never the model the rounds start from), ``resume``
    continues it (with the same config)."""
    saved = out / CONFIG_FILE
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir: '{out}' is a file")
    if (out / "run.yaml").exists():
        raise ConfigError(f"output_dir: '{out}' holds a training run (run.yaml); give rounds a folder of their own")
    if saved.exists():
        if cfg.checkpoint.resume:
            differ = config_differences(yaml.safe_load(saved.read_text()) or {}, _recorded(cfg))
            if differ:
                raise ConfigError(f"resume: '{out}' holds a rounds run with other settings (differs in "
                                  f"{', '.join(differ)}); resume with the same config or use another output_dir")
        elif cfg.checkpoint.overwrite:
            check_model_outside(cfg, out)
            for child in out.glob("round-*"):  # only the rounds' own folders: round-N
                if child.is_dir() and re.fullmatch(r"round-[1-9][0-9]*", child.name):
                    shutil.rmtree(child)
            if not cfg.tracking.logging_dir:  # the rounds' TensorBoard folder, where it is theirs
                shutil.rmtree(out / TENSORBOARD_FOLDER, ignore_errors=True)
            (out / "rounds.jsonl").unlink(missing_ok=True)
        else:
            raise ConfigError(f"output_dir: '{out}' already holds rounds; pass {option('resume')} to continue them "
                              f"or {option('overwrite')} to start afresh")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / CONFIG_FILE).write_text(yaml.safe_dump(_recorded(cfg), sort_keys=False))
    except OSError as e:
        raise ConfigError(f"output_dir: cannot write to '{out}': {e.strerror or e}") from None


def _recorded(cfg: TrainConfig) -> dict[str, Any]:
    """The config as the run folder records it: without the switches that only say how to start."""
    d = cfg.to_dict()
    d["checkpoint"] = {k: v for k, v in d["checkpoint"].items() if k not in ("resume", "overwrite")}
    d.pop("progress", None)
    return d


def _gather(out: Path, last: int) -> None:
    """``rounds.jsonl``: one line per finished round up to ``last`` (from their ``round.json``),
    with the training's final evaluation and without the rest of its summary; rewritten whole,
    so a run stopped between the two files still lists every finished round when it resumes."""
    lines = []
    for r in range(1, last + 1):
        done = out / f"round-{r}" / DONE_FILE
        if done.exists():
            record = json.loads(done.read_text())
            summary = record.pop("summary", None) or {}
            lines.append(json.dumps(record | {"eval": summary.get("eval_metrics", {})}) + "\n")
    tmp = out / "rounds.jsonl.tmp"
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(out / "rounds.jsonl")


def _write_json(path: Path, value: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    tmp.replace(path)


# -- one round ------------------------------------------------------------------------------------


def _reward_specs(cfg: TrainConfig) -> list[str]:
    if cfg.rollout.reward:
        return list(cfg.rollout.reward)
    task = data_task(cfg)
    if task is None:
        raise ConfigError("reward: rounds score their samples with a reward (scorer specs), e.g. --reward "
                          "task:arithmetic; none was given")
    spec = f"task:{task.name}:gold"
    _log(f"reward: none given; using the task's gold reward ({spec})")
    return [spec]


def _check_specs(specs: Sequence[str], limit: int) -> None:
    """Each reward spec's kind is one ``load_scorer`` knows (or a directory), before any sampling:
    a reward text that splits into something else is caught here, not after a round. An
    ``overlong`` spec, which loads nothing, is loaded whole (its ``max`` by default ``limit``, the
    rounds' max_new_tokens)."""
    from alignlab.rewards import SPECS, load_scorer

    for spec in specs:
        kind = spec.split(":", 1)[0]
        if kind not in SPECS and not spec.startswith("{") and not Path(spec).expanduser().is_dir():
            raise ConfigError(f"reward: '{spec}' is no scorer spec (kinds: {', '.join(SPECS)}); a spec that holds "
                              "a comma goes in a JSON list, e.g. --reward '[\"judge:{policy},mode=pointwise\"]'")
        if kind == "overlong":
            try:
                load_scorer(spec, sampled=True, max_new_tokens=limit)
            except UserError as e:
                raise ConfigError(f"reward: {e}") from None


def _resolve(spec: str, policy: str, start: str, reference: str) -> str:
    """A scorer spec with ``{policy}`` as the round's policy (the self-rewarding judge, an implicit
    reward of the current policy), ``{start}`` as the starting model and ``{reference}`` as the
    run's reference (``reference_model``, else the starting model)."""
    return spec.replace("{policy}", policy).replace("{start}", start).replace("{reference}", reference)


def _gold(cfg: TrainConfig, specs: Sequence[str]):
    """The testbed task's gold reward when the rounds run on a task's prompts (``data: task:NAME``)
    and score with something else: each round then reports how well its scores agree with gold."""
    task = data_task(cfg)
    if task is None or list(specs) in ([f"task:{task.name}:gold"], [f"task:{task.name}"]):
        return None  # prompts of a file: the task's gold reward need not know them
    name = task.name
    from alignlab.rewards import load_scorer

    return load_scorer(f"task:{name}:gold")


def _agreement(gold, ranked: list[RankedRecord], made: list) -> dict[str, float | None]:
    """How the round's scores agree with the task's gold reward: over every two samples of a
    prompt that gold tells apart, the share the scores order the same way (a tie in the scores
    counts half: ``gold_agreement``); and for pair data, the share of pairs whose chosen answer
    has the higher gold reward (``pairs_gold_correct``; a gold tie counts half)."""
    agree = total = 0.0
    for rec in ranked:
        texts = [_text(c) for c in rec.completions]
        g = gold.score([reward_prompt(rec.prompt)] * len(texts), texts)
        for i in range(len(texts)):
            for j in range(i + 1, len(texts)):
                if g[i] != g[j]:
                    total += 1
                    same = (rec.scores[i] - rec.scores[j]) * (g[i] - g[j])
                    agree += 1.0 if same > 0 else 0.5 if same == 0 else 0.0
    out: dict[str, float | None] = {"gold_agreement": agree / total if total else None}
    pairs = [r for r in made if isinstance(r, PairRecord)]
    if pairs:
        prompts = [reward_prompt(r.prompt) for r in pairs]
        gc = gold.score(prompts, [_text(r.chosen) for r in pairs])
        gr = gold.score(prompts, [_text(r.rejected) for r in pairs])
        out["pairs_gold_correct"] = sum(win_points(gc, gr)) / len(pairs)
    return out


def _all_prompts(cfg: TrainConfig) -> list[PromptRecord]:
    """Every prompt the rounds draw from, in order, with its data row: a task's training prompts
    (as many as the rounds take), or a prompt file's (its rows without a prompt left out with
    ``skip_invalid``)."""
    task = data_task(cfg)
    if task is not None:
        n = (cfg.iterate.round_prompts or TASK_ROUND_PROMPTS) * cfg.iterate.rounds
        return [PromptRecord(p, source=cfg.data, row=i) for i, p in enumerate(task.train_prompts(n, cfg.seed), 1)]
    from alignlab.data.prompts import load_prompts, skipped_prompts

    skipped: list | None = [] if cfg.dataset.skip_invalid else None
    records = load_prompts(cfg.data, prompt_column=cfg.rollout.prompt_column, split=cfg.dataset.data_split,
                           skipped=skipped)
    if skipped:
        _log(skipped_prompts(cfg.data, skipped))
    if not records:
        raise UserError(f"data: {cfg.data} holds no prompts")
    return records


def _fixed_scorers(specs: Sequence[str], limit: int) -> dict[str, Any]:
    """The scorers of the reward specs that name no round's model (no ``{policy}``, ``{start}`` or
    ``{reference}``), loaded once: every round scores with them, and the prompts are checked
    against them before the first round."""
    from alignlab.rewards import load_scorer

    return {spec: load_scorer(spec, sampled=True, max_new_tokens=limit) for spec in dict.fromkeys(specs)
            if _resolve(spec, policy="", start="", reference="") == spec}


def _scorable(cfg: TrainConfig, prompts: list[PromptRecord], fixed: dict[str, Any]) -> list[PromptRecord]:
    """The prompts each fixed scorer can score (``check_rewards``: a task's reward on a prompt of
    another kind, BLEU without references for it), before anything samples; the others are an
    error naming their rows, or left out with ``skip_invalid``."""
    from alignlab.training.online_run import check_rewards
    from alignlab.training.rollout import RewardTerm

    return check_rewards(cfg, prompts, [RewardTerm(spec, scorer) for spec, scorer in fixed.items()], _log)


def _with_room(cfg: TrainConfig, prompts: list[PromptRecord]) -> list[PromptRecord]:
    """The prompts that leave room for max_new_tokens in the starting model's context, as each
    round's sampling needs (every round's policy has the starting model's tokenizer and
    positions), checked before the first round with the data's rows named; the others are an
    error, or left out with ``skip_invalid`` (counted and printed)."""
    from transformers import AutoConfig

    from alignlab.generation.native import context_length
    from alignlab.generation.prompts import prompt_ids
    from alignlab.models import load_tokenizer
    from alignlab.training.online_run import with_room

    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    config = AutoConfig.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
    limit = context_length(config, tokenizer)
    if limit is None:
        return prompts
    context, source = limit
    return with_room(cfg, prompts, partial(prompt_ids, tokenizer), max_new_tokens(cfg), context,
                     f"the model's context of {context} tokens ({source})", _log)


def _per_round(cfg: TrainConfig, available: int) -> int:
    if cfg.iterate.round_prompts:
        return cfg.iterate.round_prompts
    per_round = available // cfg.iterate.rounds
    if per_round < 1:
        raise ConfigError(f"round_prompts: {cfg.data} holds {available} prompts, fewer than the "
                          f"{cfg.iterate.rounds} rounds; give round_prompts (prompts are reused when they run out)")
    return per_round


def _sample(cfg: TrainConfig, r: int, policy: str, prompts: Sequence[Text], folder: Path) -> Path:
    """The round's samples (``samples.jsonl``), resumed where an interrupted round left them."""
    from alignlab.sample_cli import SampleJob, plain, run_sample

    folder.mkdir(parents=True, exist_ok=True)
    prompt_file = folder / "prompts.jsonl"
    if not prompt_file.exists():
        write_rows(prompt_file, [{"prompt": plain(p)} for p in prompts])
    rollout = cfg.rollout
    params = SamplingParams(max_new_tokens=max_new_tokens(cfg), temperature=rollout.temperature, top_p=rollout.top_p,
                            top_k=rollout.top_k, seed=round_seed(cfg.seed, r))
    job = SampleJob(model=policy, params=params, n=rollout.num_generations, prompts=str(prompt_file),
                    backend=rollout.generation_backend,
                    batch_size=max(1, (rollout.generation_batch_size or ROUND_CHUNK) // rollout.num_generations),
                    dtype="fp32" if cfg.dtype == "bf16" else cfg.dtype)
    out = folder / "samples.jsonl"
    run_sample(job, out, trust_remote_code=cfg.trust_remote_code, progress=cfg.progress)
    return out


def _text(completion: Text) -> str:
    """A response as a scorer reads it: the text, or the content of its (assistant) message."""
    return completion if isinstance(completion, str) else completion[-1].content


def _score(terms, rows: list[dict], source: Path) -> tuple[list[RankedRecord], dict[str, Any]]:
    """Each prompt's non-empty samples scored and ranked best first; the mean score per term.
    A sample's token count is the one the sampler wrote (``num_tokens``: completions are the
    samples whose text is not blank, in order)."""
    prompts, responses, where, owner, counts = [], [], [], [], []
    for i, row in enumerate(rows):
        missing = next((k for k, s in enumerate(row["samples"]) if "num_tokens" not in s), None)
        if missing is not None:
            raise UserError(f"{source} row {i + 1}: sample {missing + 1} has no num_tokens (the tokens sampled, "
                            "which the reward's scorers are given); sample again with alignlab sample")
        sampled = [s["num_tokens"] for s in row["samples"] if s["text"].strip()]
        for j, c in enumerate(row["completions"]):
            prompts.append(to_text(row["prompt"], "prompt"))
            responses.append(_text(to_text(c, "completions")))
            where.append(f"{source} row {i + 1}, response {j + 1}")
            owner.append(i)
            counts.append(sampled[j])
    totals, parts = score_samples(terms, prompts, responses, where, counts) if responses else (None, {})
    scores: list[list[float]] = [[] for _ in rows]
    for k, i in enumerate(owner):
        scores[i].append(float(totals[k]))
    ranked = []
    for i, row in enumerate(rows):
        completions = [to_text(c, "completions") for c in row["completions"]]
        ranked.append(convert.rank_responses(to_text(row["prompt"], "prompt"), completions, scores[i],
                                             source=str(source), row=i + 1))
    n = max(len(responses), 1)
    stats = {"reward": float(totals.sum()) / n if responses else None,
             **{f"reward/{name}": float(v.sum()) / n for name, v in parts.items()},
             "empty_samples": sum(len(row["samples"]) - len(row["completions"]) for row in rows)}
    return ranked, stats


def _convert(cfg: TrainConfig, ranked: list[RankedRecord], path: Path, terms) -> tuple[Path, dict[str, Any], list]:
    """The ranked samples as the method's data (``data.jsonl``): the file, what was made and
    dropped, and the records written. A
    method that weighs each pair by a preference strength (``soft-preference``: OSP) gets the
    scorer's probability that the chosen answer is better (``_strengths``)."""
    it = cfg.iterate
    shape = cfg.spec.shape
    if shape == "sft":
        made = convert.ranked_to_sft(ranked, it.keep_top, it.min_score)
    elif shape == "ranked":
        made: convert.Converted = convert.Converted([r for r in ranked if len(r.completions) >= 2 and r.scores[0] > r.scores[-1]])
        made.drop("prompts with fewer than two differently scored samples", len(ranked) - len(made.records))
    else:
        made = convert.ranked_to_pairs(ranked, it.pair_rule, margin=it.pair_margin, seed=cfg.seed)
        if shape == "unpaired":
            pairs = made
            made = convert.pairs_to_unpaired(pairs.records)
            made.dropped = pairs.dropped
        elif cfg.iterate.recipe == "spa":
            made.records = _refined(made.records, it.refine_fraction, it.refine_smoothing)
        elif "strength" in cfg.spec.needs:
            made.records = _strengths(made.records, terms)
    write_jsonl(path, made.records)
    return path, {"examples": len(made.records), "dropped": {k: v for k, v in made.dropped.items() if k}}, made.records


def _strengths(pairs: list, terms) -> list:
    """Each pair with its strength p = P(chosen ≻ rejected): the scorer's own ``compare`` when the
    reward is one scorer of weight 1 that compares otherwise than by its scores (a pairwise judge's
    swapped verdicts), else σ of the reward difference the pair was ranked by. A pair the comparison turns
    round (p < 0.5, a judge that disagrees with its own scores) is swapped, so p is in [0.5, 1]."""
    if not pairs:
        return pairs
    if len(terms) == 1 and terms[0].weight == 1.0 and not terms[0].scorer.compares_by_score:
        from alignlab.rewards.guard import guard

        prompts = [reward_prompt(p.prompt) for p in pairs]
        # a judge that fails, or answers other than a number per pair, is one line naming the pair
        judge = guard(terms[0].scorer, f"reward '{terms[0].name}' (comparing the round's pairs)")
        probs = judge.compare(prompts, [_text(p.chosen) for p in pairs], [_text(p.rejected) for p in pairs])
        outside = next((i for i, x in enumerate(probs) if not 0.0 <= x <= 1.0), None)
        if outside is not None:
            raise UserError(f"reward '{terms[0].name}': its comparison of the round's pair {outside + 1} is "
                            f"{probs[outside]}, not a probability in [0, 1]")
    else:  # σ of the (weighted) reward difference the pair was made from
        probs = [1.0 / (1.0 + math.exp(-(p.score_chosen - p.score_rejected))) for p in pairs]
    out = []
    for pair, p in zip(pairs, probs, strict=True):
        if p < 0.5:
            pair = dataclasses.replace(pair, chosen=pair.rejected, rejected=pair.chosen,
                                       score_chosen=pair.score_rejected, score_rejected=pair.score_chosen)
            p = 1.0 - p
        out.append(dataclasses.replace(pair, strength=float(p)))
    return out


def _refined(pairs: list, fraction: float, smoothing: float) -> list:
    """SPA's label refinement: the pairs whose labels the scores back least (the smallest score
    margins: with the implicit reward, the lowest confidence σ(r̂_w − r̂_l)) get strength
    1 − ``smoothing`` (label smoothing), the others 1. ``fraction`` of the pairs, rounded up, the
    least confident first (ties: the earlier pair first). The paper computes the confidence with
    extrapolated log-probs (1 + λ)ℓ_θ − λℓ_ref; at the sequence level that scales every margin by
    1 + λ and leaves the order, so the pairs it picks are these."""
    if not pairs:
        return pairs
    margins = [p.score_chosen - p.score_rejected for p in pairs]
    low = set(sorted(range(len(pairs)), key=lambda i: (margins[i], i))[:math.ceil(fraction * len(pairs))])
    return [dataclasses.replace(p, strength=1.0 - smoothing if i in low else 1.0) for i, p in enumerate(pairs)]


def _round_config(cfg: TrainConfig, r: int, policy: str, data: Path, out: Path) -> TrainConfig:
    """The round's training run: the method on the round's data from ``policy``, resumed when an
    interrupted run of it is there."""
    d = cfg.to_dict()
    d.update(model=policy, data=str(data), output_dir=str(out))
    d["iterate"] = {"rounds": 0}
    # the round's data.jsonl has the standard keys and no splits, whatever the prompts were read from
    d["dataset"] = {**d["dataset"], "data_split": None, "columns": {}}
    d["rollout"] = {**d["rollout"], "reward": [], "reward_weights": None}
    if cfg.reference_model is None and cfg.iterate.round_reference == "fixed" and r > 1:
        d["reference_model"] = cfg.model
    started = (out / "run.yaml").exists()
    d["checkpoint"] = {**d["checkpoint"], "resume": started, "overwrite": False}
    # metric sinks: each round's training is a run of its own, in one TensorBoard folder and one
    # W&B and trackio group for all rounds
    name = run_name(cfg)
    logs = Path(cfg.tracking.logging_dir) if cfg.tracking.logging_dir else Path(cfg.output_dir) / TENSORBOARD_FOLDER
    d["tracking"] = {**d["tracking"], "logging_dir": str(logs / f"round-{r}"), "run_name": f"{name}-round-{r}",
                     "run_group": cfg.tracking.run_group or name}
    return make_config(d)


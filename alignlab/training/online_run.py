"""What an online run loads before its first step: its prompts, its reward and its generator.

``data`` is a prompt file (any data ``alignlab sample`` reads prompts from) or ``task:NAME``, a
testbed task's training prompts. A prompt is text or a conversation; the generator renders a
conversation with the tokenizer's chat template and the assistant turn opened, as ``alignlab
sample`` does (``generation/prompts.py``), and the reward reads its last user message
(``rollout.reward_prompt``). Every prompt is checked once, at load time: a conversation when the
tokenizer has no chat template, a conversation without a user message (or with an empty last
one, or that ends with an assistant message), a prompt that leaves no room for
``max_new_tokens`` within ``max_length`` or the model's context and a prompt a reward cannot score
(``Scorer.prompt_problem``) are errors naming the row, never cut or met silently. The reward is
``rollout.reward`` (scorer specs), or a task's gold when the data is a task and no reward is
given (said in the log).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch

from alignlab.data.prompts import load_prompts, skipped_prompts
from alignlab.data.records import PromptRecord, is_conversation
from alignlab.errors import ConfigError, DataError, RowIssue
from alignlab.generation.base import SamplingParams
from alignlab.generation.factory import make_generator
from alignlab.generation.native import context_length
from alignlab.losses.policy_gradient import policy_gradient_loss, zero_advantage_is_free
from alignlab.rewards.base import reward_prompt
from alignlab.training.distributed import Dist
from alignlab.training.online import AdvantageRule, OnlineSource, round_size
from alignlab.training.rollout import load_reward_terms

DEFAULT_MAX_NEW_TOKENS = 256
TASK_PREFIX = "task:"


def data_task(cfg):
    """The testbed task whose training prompts ``data`` names (``task:NAME``), else None."""
    from alignlab.tasks import get_task

    return get_task(cfg.data[len(TASK_PREFIX):]) if cfg.data.startswith(TASK_PREFIX) else None


def max_new_tokens(cfg) -> int:
    task = data_task(cfg)
    return cfg.rollout.max_new_tokens or (task.max_new_tokens if task else DEFAULT_MAX_NEW_TOKENS)


def load_online_prompts(cfg, per_round: int, tokenizer, log: Callable[[str], None]) -> list[PromptRecord]:
    """The prompts with their source and row: a task's training prompts (enough for one fresh prompt per slot of
    the run when ``max_steps`` is set, else 1024), or a file's prompts (rows 1-based), text or
    conversations (see the module docstring for what is checked); with ``skip_invalid`` the bad
    rows are left out, counted and logged."""
    task = data_task(cfg)
    if task is not None and cfg.rollout.prompt_column:
        raise ConfigError(f"prompt_column: data '{cfg.data}' is a testbed task's prompts, which have no columns; "
                          "prompt_column names the column of a prompt file")
    if task is not None:
        rounds = math.ceil(cfg.optim.max_steps / cfg.rollout.updates_per_rollout) if cfg.optim.max_steps else 0
        n = per_round * rounds if rounds else 1024
        return [PromptRecord(p, source=cfg.data, row=i) for i, p in enumerate(task.train_prompts(n, cfg.seed), 1)]
    skipped: list[RowIssue] | None = [] if cfg.dataset.skip_invalid else None
    records = load_prompts(cfg.data, prompt_column=cfg.rollout.prompt_column, split=cfg.dataset.data_split,
                           skipped=skipped)
    templated = getattr(tokenizer, "chat_template", None) is not None
    bad = list(skipped or [])
    for r in records:
        if not is_conversation(r.prompt):
            continue
        if not templated:
            bad.append(RowIssue(r.source, r.row, "prompt", f"a conversation prompt is rendered with the tokenizer's "
                                f"chat template, and the tokenizer of {cfg.model} has none"))
            continue
        if r.prompt[-1].role == "assistant":
            bad.append(RowIssue(r.source, r.row, "prompt", "the conversation ends with an assistant message; an "
                                "online prompt waits for the assistant's answer"))
            continue
        try:
            question = reward_prompt(r.prompt)
        except ValueError as e:
            bad.append(RowIssue(r.source, r.row, "prompt", str(e)))
            continue
        if not question.strip():
            bad.append(RowIssue(r.source, r.row, "prompt", "the conversation's last user message is empty, so a "
                                "reward has no question to read"))
    return kept(cfg, records, bad, log,
                "give text prompts, or a model whose tokenizer has a chat template" if not templated
                else "every conversation prompt needs a user message and ends before the answer")


def kept(cfg, prompts: list[PromptRecord], bad: list[RowIssue], log: Callable[[str], None], hint: str
         ) -> list[PromptRecord]:
    """``prompts`` without the rows ``bad`` names (by source and row: a dataset directory's files
    each number their rows from 1), where the run skips invalid rows (``skip_invalid``: counted and
    printed, as for fixed data); else the bad rows are one error."""
    if not bad:
        return prompts
    if not cfg.dataset.skip_invalid:
        raise DataError(bad, hint=hint)
    rows = {(issue.source, issue.row) for issue in bad}
    left = [r for r in prompts if (r.source, r.row) not in rows]
    log(skipped_prompts(cfg.data, bad))
    if not left:
        raise DataError(bad, hint=f"every prompt row is invalid; {hint}")
    return left


def check_room(cfg, prompts: list[PromptRecord], generator, model, new_tokens: int,
               log: Callable[[str], None], tokenizer=None) -> list[PromptRecord]:
    """Every prompt must leave room for ``new_tokens`` within ``max_length`` and the model's
    context, whichever is shorter: a completion stops at ``new_tokens``, so no sample is then
    longer than ``max_length``, as for fixed data. The context is the one ``alignlab sample`` and
    rounds read (``native.context_length``: the config's positions and the ``tokenizer``'s
    model_max_length, the smaller). Returns the prompts (without those that do not fit, where the
    run skips invalid rows)."""
    limit, where, fix = cfg.dataset.max_length, f"max_length ({cfg.dataset.max_length} tokens)", "max_length"
    context = context_length(model.config, tokenizer)
    if context is not None and context[0] < limit:
        limit, where, fix = context[0], f"the model's context of {context[0]} tokens ({context[1]})", None
    if new_tokens >= limit:
        raise ConfigError(f"max_new_tokens: {new_tokens} leaves no room for a prompt in {where}; give at most "
                          f"{limit - 1}" + (f" or raise {fix}" if fix else ""))
    return with_room(cfg, prompts, generator.prompt_ids, new_tokens, limit, where, log, fix)


def with_room(cfg, prompts: list[PromptRecord], prompt_ids: Callable, new_tokens: int, limit: int, where: str,
              log: Callable[[str], None], fix: str | None = None) -> list[PromptRecord]:
    """The prompts whose tokens (``prompt_ids``) and ``new_tokens`` fit ``limit`` (``where``, as
    messages name it; ``fix``, a key to raise besides); the others are one error naming their rows,
    or left out where the run skips invalid rows (``kept``). Online runs and rounds check with it."""
    bad = []
    for r in prompts:
        n = len(prompt_ids(r.prompt))
        if n + new_tokens > limit:
            bad.append(RowIssue(r.source, r.row, "prompt", f"{n} tokens + max_new_tokens {new_tokens} exceed {where}"))
    hint = f"shorten the prompt{'s' if len(bad) > 1 else ''}" + (f", raise {fix}" if fix else "")
    return kept(cfg, prompts, bad, log, f"{hint} or lower max_new_tokens")


def check_rewards(cfg, prompts: list[PromptRecord], terms, log: Callable[[str], None]) -> list[PromptRecord]:
    """Every prompt must be one each reward can score (``Scorer.prompt_problem``): a prompt
    without BLEU references or of another task is reported now, not when a round draws it.
    Returns the prompts (as ``check_room``)."""
    bad = []
    for r in prompts:
        text = reward_prompt(r.prompt)
        for term in terms:
            problem = term.scorer.prompt_problem(text)
            if problem is not None:
                bad.append(RowIssue(r.source, r.row, "prompt", f"reward '{term.name}': {problem}"))
    return kept(cfg, prompts, bad, log, "every prompt needs what its reward reads")


def generator_options(cfg) -> dict:
    """The run's generator options: the batch size (where the run sets one; else the backend's
    default), and for "ray" its workers and cluster."""
    rollout = cfg.rollout
    size = rollout.generation_batch_size
    options = {} if size is None else {"batch_size": size}
    if rollout.generation_backend == "ray":
        options.update(workers=rollout.ray_workers, address=rollout.ray_address, inner=rollout.ray_backend)
    return options


def run_generator(cfg, dist: Dist, policy: torch.nn.Module, tokenizer, log: Callable[[str], None]):
    """The run's generator. Ray workers on a run of several processes are started once, by the
    first process, which samples every process's prompts (``first_process_generation.py``)."""
    backend = cfg.rollout.generation_backend
    if backend != "ray" or dist.world_size == 1:
        return make_generator(policy, tokenizer, backend, **generator_options(cfg))
    from alignlab.training.first_process_generation import FirstProcessGenerator

    inner = make_generator(policy, tokenizer, backend, **generator_options(cfg)) if dist.is_main else None
    log(f"generation: the first process samples the prompts of all {dist.world_size} processes on "
        f"{cfg.rollout.ray_workers} Ray workers")
    return FirstProcessGenerator(inner, dist, tokenizer)


def online_source(cfg, dist: Dist, tokenizer, policy: torch.nn.Module, reference: Callable | None,
                  log: Callable[[str], None], autocast: Callable = contextlib.nullcontext) -> OnlineSource:
    """The run's step source, with its prompts loaded and checked; ``autocast``: the training pass's
    precision context."""
    rollout, spec, params = cfg.rollout, cfg.spec, cfg.method_params
    specs = rollout.reward
    if not specs:
        task = data_task(cfg)
        if task is None:
            raise ConfigError("reward: an online method needs a reward (scorer specs), e.g. --reward task:arithmetic")
        specs = [f"task:{task.name}:gold"]
        log(f"reward: none given; using the task's gold reward ({specs[0]})")
    terms = load_reward_terms(specs, rollout.reward_weights, tokenizer=tokenizer, max_new_tokens=max_new_tokens(cfg))
    _, per_round = round_size(cfg, dist)
    prompts = load_online_prompts(cfg, per_round, tokenizer, log)
    prompts = check_rewards(cfg, prompts, terms, log)
    new_tokens = max_new_tokens(cfg)
    generator = run_generator(cfg, dist, policy, tokenizer, log)
    prompts = check_room(cfg, prompts, generator, policy, new_tokens, log, tokenizer)
    sampling = SamplingParams(max_new_tokens=new_tokens, temperature=rollout.temperature, top_p=rollout.top_p,
                              top_k=rollout.top_k, seed=cfg.seed)
    # the policy's log-probs at the start of the round: the old policy of μ > 1 updates, the
    # sampler correction's, the sampling policy's side of a KL penalty in the reward, and OTB's π_t
    needs_old = (rollout.updates_per_rollout > 1 or getattr(params, "is_mode", "off") != "off"
                 or getattr(params, "kl_coef", 0.0) > 0 or spec.sum_pi_squared)
    skip_idle = rollout.skip_zero_advantage and spec.fn is policy_gradient_loss and zero_advantage_is_free(params)
    rule = AdvantageRule.of(spec, params, [t.weight for t in terms])
    # a folder of prompt files numbers each file's rows from 1: its prompts are named with their file
    named = [(r.row, r.prompt, f"prompt row {r.row}" if r.source == cfg.data else f"prompt {r.source}, row {r.row}",
              r.source) for r in prompts]
    return OnlineSource(cfg, dist, named, policy, generator, terms, rule, sampling,
                        pad_id=tokenizer.pad_token_id, reference=reference, needs_old=needs_old, skip_idle=skip_idle,
                        autocast=autocast)

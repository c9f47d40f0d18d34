"""The online step source: each round, prompts are sampled by the policy, scored, and trained on.

Round ``r`` serves optimizer steps ``r·μ .. r·μ + μ - 1`` (μ = ``updates_per_rollout``), each step
over the whole round. A round:
1. takes ``P`` prompts (the global batch of completions divided by G, the samples per prompt), in
   an order that is a function of the round alone (``order.py``, as offline data);
2. gives this process the contiguous ``P / world`` of them and samples G completions of each with
   the run's generator, after pushing the policy's current weights into it (``update_weights``).
   The sampling seed is a function of (run seed, round), and the prompts are numbered within the
   round, so a backend with per-sample streams (``native``) draws the same completions however
   the round is split over processes;
3. scores every completion with the run's reward (``rollout.score_samples``);
4. when the method needs them, computes the policy's log-probs at the start of the round (μ > 1,
   the sampler correction, a KL term in the reward), the reference's (a KL term) and the critic's
   values (PPO), without gradients;
5. computes advantages with the method's rule (``AdvantageRule``): a sequence rule from the whole
   round's rewards, gathered from every process, so that a statistic of the batch (the batch std)
   is the whole batch's; a token rule on this process's completions, then whitened with the
   statistics of every process's tokens (gathered in rank order, so 1 process or 2 whiten alike).
   ReMax's rule also gets the reward of a greedy answer to each prompt, sampled and scored here;
   OPO's the length of every completion.
With ``dynamic_sampling`` (DAPO), steps 1-3 repeat for further batches of prompts until groups whose
advantages are not all 0 fill the round (``_draw_with_spread``). This process's completions then form its
micro-batches, prompt-major. Because everything a round
draws is a function of (seed, round, the weights at its start), a run resumed at a round boundary
redraws the same round; a checkpoint written inside a round (μ > 1) holds the round itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from alignlab.errors import ConfigError
from alignlab.generation.base import Generator, SamplingParams
from alignlab.logprobs import left_align, sequence_logps
from alignlab.losses.advantages import gdpo_advantages, whiten, whiten_stats
from alignlab.losses.online import RoundTokens
from alignlab.training.critic import token_values
from alignlab.training.distributed import Dist, sum_over_processes
from alignlab.training.order import epoch_order, global_batch_indices, steps_per_epoch
from alignlab.training.rollout import (
    PackingCost,
    RewardError,
    RewardTerm,
    RolloutExample,
    check_range,
    check_statistics,
    collate_rollout,
    score_samples,
    token_tensor,
)
from alignlab.training.source import Step, data_digest, mismatched


@dataclass(frozen=True)
class AdvantageRule:
    """How a method turns a round into advantages (``losses/online.py``): ``sequence(rewards_PG,
    greedy_P, lengths_PG, components_PGK)`` -> advantages_PG over the whole round (lengths: each
    completion's tokens; components: each reward term's raw value, in the run's order of terms),
    or ``token(RoundTokens)`` -> (advantages_BT, returns_BT) over this process's
    completions, whitened over the round when ``whiten``.
    ``greedy_baseline``: also sample and score one greedy answer per prompt; ``values``: the
    critic's values at the start of the round (PPO)."""

    sequence: Callable | None = None
    token: Callable | None = None
    whiten: bool = False
    greedy_baseline: bool = False
    values: bool = False

    @classmethod
    def of(cls, spec, params, weights: Sequence[float] = ()) -> AdvantageRule:
        """``weights``: the reward terms' weights (GDPO weighs each term's normalised values)."""
        if spec.token_advantages is not None:
            return cls(token=lambda r: spec.token_advantages(r, params), whiten=bool(getattr(params, "whiten", False)),
                       values=spec.value_model)
        if getattr(params, "multi_objective_aggregation", None) == "normalize_then_sum":
            return cls(sequence=lambda rewards, greedy, lengths, parts: gdpo_advantages(parts, list(weights)),
                       greedy_baseline=spec.greedy_baseline)
        if spec.lengths:
            return cls(sequence=lambda rewards, greedy, lengths, parts: spec.advantages(rewards, params, greedy, lengths),
                       greedy_baseline=spec.greedy_baseline)
        return cls(sequence=lambda rewards, greedy, lengths, parts: spec.advantages(rewards, params, greedy),
                   greedy_baseline=spec.greedy_baseline)


def _is_idle(advantages: Sequence[float]) -> bool:
    """A completion whose advantage is 0 at every token."""
    return all(a == 0 for a in advantages)


def _split_idle(chunk: list, idle: Sequence[bool]) -> tuple[list, list]:
    """A micro-batch's completions split into those to compute and the idle ones (advantage 0)."""
    return ([e for e, i in zip(chunk, idle, strict=True) if not i],
            [e for e, i in zip(chunk, idle, strict=True) if i])


def _components(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Each completion's reward terms' values (N, K), the terms in the run's order."""
    return torch.stack(list(parts.values()), -1)


@dataclass
class _Group:
    """One prompt's group that dynamic sampling drew: the prompt's (data file, row) and text, its G samples,
    their rewards and each reward term's values (as lists: this crosses processes); ``tensors``:
    the rewards (G,), the completions' lengths in tokens (G,) and the terms' values (G, K), the
    terms in the run's order, made once."""

    row: tuple[str, int]
    text: str
    samples: list
    rewards: list[float]
    parts: dict[str, list[float]]

    @functools.cached_property
    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (torch.tensor(self.rewards, dtype=torch.float64),
                torch.tensor([float(len(s.token_ids)) for s in self.samples], dtype=torch.float64),
                torch.tensor(list(self.parts.values()), dtype=torch.float64).T)


def round_seed(seed: int, round_: int) -> int:
    """The sampling seed of a round: distinct per (seed, round), in [0, 2**63)."""
    return (seed * 1_000_003 + 7919 * (round_ + 1)) % (2**63)


def token_logps(model: torch.nn.Module, examples: Sequence[RolloutExample], pad_id: int, batch_size: int,
                device, pack: bool | PackingCost = False) -> list[tuple[float, ...]]:
    """Teacher-forced log-probs of each completion token under ``model`` (no gradients)."""
    def logps(batch):
        lp = sequence_logps(model, batch)
        return (left_align(lp.token_logps_BT, lp.mask_BT),)

    return _per_token(logps, 1, examples, pad_id, batch_size, device, pack)[0]


def token_logps_and_sum_pi_sq(model: torch.nn.Module, examples: Sequence[RolloutExample], pad_id: int,
                              batch_size: int, device, pack: bool | PackingCost = False
                              ) -> tuple[list[tuple[float, ...]], list[tuple[float, ...]]]:
    """``token_logps`` and, from the same pass, each completion token's Σ_v π_v² (the squared mass
    of the distribution it was drawn from) under ``model``."""
    def both(batch):
        lp = sequence_logps(model, batch, sqmass=True)
        return left_align(lp.token_logps_BT, lp.mask_BT), left_align(lp.sqmass_BT.exp(), lp.mask_BT)

    logps, sum_pi_sq = _per_token(both, 2, examples, pad_id, batch_size, device, pack)
    return logps, sum_pi_sq


def _per_token(fn: Callable, outputs: int, examples: Sequence[RolloutExample], pad_id: int, batch_size: int,
               device, pack: bool | PackingCost = False) -> list[list[tuple[float, ...]]]:
    """``fn(batch)`` -> a tuple of ``outputs`` (B, L) left-aligned per-token values; for each, every
    example's, without gradients (batches packed by group as ``pack`` says: ``collate_rollout``)."""
    out: list[list[tuple[float, ...]]] = [[] for _ in range(outputs)]
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            part = examples[start:start + batch_size]
            for values, aligned in zip(out, fn(collate_rollout(part, pad_id, pack).to(device)), strict=True):
                aligned = aligned.double().cpu()
                values.extend(tuple(aligned[b, :len(e.completion_ids)].tolist()) for b, e in enumerate(part))
    return out


def round_size(cfg, dist: Dist) -> tuple[int, int]:
    """(completions, prompts) of one round over every process: ``batch_size × grad_accum ×
    processes`` completions, G per prompt; a ConfigError unless each process gets whole groups,
    and, for a method that compares a fixed number of samples (``LossSpec.num_generations``:
    online DPO's pair), unless G is that number and each micro-batch holds whole groups."""
    completions = cfg.optim.batch_size * cfg.optim.grad_accum * dist.world_size
    G = cfg.rollout.num_generations
    fixed = cfg.spec.num_generations
    if fixed is not None and G != fixed:
        raise ConfigError(f"num_generations: method '{cfg.method}' compares {fixed} samples per prompt; set "
                          f"num_generations to {fixed}, got {G}")
    if fixed is not None and cfg.optim.batch_size % fixed:
        raise ConfigError(f"batch_size: method '{cfg.method}' trains on each prompt's {fixed} samples together, "
                          f"so a micro-batch holds whole groups: batch_size must be a multiple of {fixed}, "
                          f"got {cfg.optim.batch_size}")
    if completions % (G * dist.world_size):
        raise ConfigError(f"batch_size: a step's {completions} completions (batch_size × grad_accum × "
                          f"{dist.world_size} processes) must be a multiple of num_generations ({G}) × "
                          f"processes ({dist.world_size}), so each process samples whole groups")
    return completions, completions // G


@dataclass
class _Drawn:
    """What a round drew: this process's prompts ((data file, row), texts), its completions (prompt-major,
    G each) with their rewards and each reward term's values, the whole round's rewards (prompts ×
    G, every process's in rank order) and the lengths of their completions in tokens, ReMax's
    greedy rewards of every prompt (or None), the seconds spent sampling and scoring, and metrics
    of the drawing itself."""

    rows: list[tuple[str, int]]
    texts: list
    flat: list
    rewards: torch.Tensor
    parts: dict[str, torch.Tensor]
    everyone: torch.Tensor
    lengths: torch.Tensor
    greedy_all: torch.Tensor | None
    gen_s: float
    reward_s: float
    metrics: dict[str, float]
    order: list[int] = dataclasses.field(default_factory=list)  # the prompts (indices) of every process
    generated: float | None = None  # tokens generated by every process, where more were drawn than kept
    components: torch.Tensor | None = None  # every process's reward terms' values, (prompts, G, terms)


def batch_seed(seed: int, batch: int) -> int:
    """The seed of a round's ``batch``-th batch of prompts (dynamic sampling draws more than one):
    the run's seed for the first, so that a run without dynamic sampling is unchanged."""
    return seed if batch == 0 else (seed + 1_000_003 * batch) % (2**63)


class OnlineSource:
    """Prompts → generator → reward → examples, one round per ``updates_per_rollout`` steps."""

    def __init__(self, cfg, dist: Dist, prompts: Sequence[tuple[int, str, str, str]], policy: torch.nn.Module,
                 generator: Generator, reward: Sequence[RewardTerm], advantages: AdvantageRule, params: SamplingParams,
                 *, pad_id: int, reference: Callable | None = None, needs_old: bool = False, skip_idle: bool = False,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext):
        """``prompts``: (data row, text, how messages name the prompt, data file) of the run's prompt set;
        ``policy``: the unwrapped module
        being trained; ``reference``: a context-manager factory yielding the reference module
        (only when the method has a KL term); ``needs_old``: compute the policy's log-probs at the
        start of each round (otherwise the loss takes its ratio against the current log-probs);
        ``skip_idle``: leave completions whose advantage is 0 out of the micro-batches (``idle``),
        which the caller allows only where their loss is exactly 0 (``zero_advantage_is_free``);
        ``autocast``: the training pass's precision context (bf16 mixed precision), in which the
        round's own passes run too."""
        rollout = cfg.rollout
        self.cfg, self.dist, self.prompts, self.policy = cfg, dist, list(prompts), policy
        self._digest: str | None = None
        self.generator, self.reward, self.advantages, self.params = generator, list(reward), advantages, params
        self.pad_id, self.reference, self.needs_old, self.autocast = pad_id, reference, needs_old, autocast
        self.skip_idle = skip_idle and advantages.sequence is not None
        # the loss reads a round's advantages in the policy's precision (its log-probs')
        self._dtype = next((p.dtype for p in policy.parameters() if p.is_floating_point()), torch.float32)
        self._idle: list[list[bool]] | None = None  # per process, per completion: advantage 0
        # packed by group where that costs the policy no more than padded rows (``PackingCost``)
        self.pack = (PackingCost.of(policy) or True) if cfg.dataset.packing else False
        self.G, self.updates = rollout.num_generations, rollout.updates_per_rollout
        self.dynamic, self.max_batches = rollout.dynamic_sampling, rollout.max_sampling_batches
        self.completions, self.per_round = round_size(cfg, dist)
        self.rounds_per_epoch = steps_per_epoch(len(self.prompts), self.per_round)
        if cfg.optim.max_steps > 0:
            self.total_steps = cfg.optim.max_steps
        else:
            self.total_steps = max(1, round(cfg.optim.epochs * self.rounds_per_epoch)) * self.updates
        self._round: int | None = None
        self._examples: list[RolloutExample] = []  # this process's, prompt-major
        self._everyone: list[list[dict]] | None = None  # every process's (μ > 1: what a checkpoint holds)
        self._metrics: dict[str, float] = {}

    # -- the StepSource protocol --------------------------------------------------------------------

    def notes(self) -> list[str]:
        return [f"online: {self.per_round} prompts × {self.G} samples per round, {self.updates} update"
                f"{'s' if self.updates > 1 else ''} per round, {len(self.prompts)} prompts"]

    def step(self, step: int) -> Step:
        round_ = step // self.updates
        fresh = self._round != round_
        if fresh:
            self._collect(round_)
        bs, device = self.cfg.optim.batch_size, self.dist.device
        micro = []
        for m in range(self.cfg.optim.grad_accum):
            chunk = self._examples[m * bs:(m + 1) * bs]
            if self._idle is None:
                micro.append(collate_rollout(chunk, self.pad_id, self.pack).to(device))
                continue
            work, idle = _split_idle(chunk, self._idle[self.dist.rank][m * bs:(m + 1) * bs])
            placeholder = not work
            if placeholder:  # nothing to compute: one completion stands in (loss 0, metrics not counted)
                work, idle = idle[:1], idle[1:]
            batch = collate_rollout(work, self.pad_id, self.pack).to(device)
            batch.idle, batch.placeholder = idle, placeholder
            micro.append(batch)
        rows = sorted({(e.source, e.row) for e in self._examples})
        metrics = dict(self._metrics) if fresh else {"generation_s": 0.0, "reward_s": 0.0}
        if not fresh and self._everyone is not None:  # a later step of the round (μ > 1) logs its reward too
            metrics["reward"] = self._round_reward()
        size = self.completions
        if self._idle is not None:  # per-example metrics are over the completions with an advantage
            size = sum(not i for flags in self._idle for i in flags)
            metrics["skipped_zero_advantage"] = 1.0 - size / self.completions
        return Step(micro, size, rows, metrics)

    def _round_reward(self) -> float:
        """The mean reward of the round's completions, every process's (what its first step logs),
        from the round a later step of it (μ > 1) holds, resumed or not: the forward's per-example
        reward covers only the completions it computed (``skip_zero_advantage``)."""
        rewards = [d["reward"] for mine in self._everyone for d in mine]
        return sum(rewards) / max(len(rewards), 1)

    def position(self, done: int) -> dict[str, float]:
        return {"epoch": done / (self.updates * self.rounds_per_epoch)}

    def state_dict(self, done: int) -> dict[str, Any]:
        state = {"round": done // self.updates, "prompts": len(self.prompts), "per_round": self.per_round,
                 "num_generations": self.G, "updates_per_rollout": self.updates, "data_digest": self._data_digest()}
        if done % self.updates and self._everyone is not None:  # inside a round: keep the round
            state["rollout"] = self._everyone
        return state

    def mismatches(self, saved: dict[str, Any]) -> list[tuple[str, Any, Any]]:
        return mismatched(saved, {"prompts": len(self.prompts), "per_round": self.per_round, "num_generations": self.G,
                                  "updates_per_rollout": self.updates}, self._data_digest)

    def _data_digest(self) -> str:
        """The prompts' digest (their rows and texts, as the round reads them; see ``data_digest``)."""
        if self._digest is None:
            self._digest = data_digest((row, prompt) for row, prompt, *_ in self.prompts)
        return self._digest

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        if "rollout" in saved:
            self._everyone = saved["rollout"]
            self._examples = [RolloutExample.from_state(d) for d in self._everyone[self.dist.rank]]
            self._round = saved["round"]
            self._metrics = {}
            if self.skip_idle:
                self._idle = [[_is_idle(d["advantages"]) for d in mine] for mine in self._everyone]

    # -- a round ---------------------------------------------------------------------------------------

    def _collect(self, round_: int) -> None:
        dist, G = self.dist, self.G
        # nothing of the round before outlives a round that fails (a reward fault skipped under
        # skip_nonfinite): a checkpoint inside it must not hold the round before as this one's
        self._round, self._examples, self._everyone, self._idle = None, [], None, None
        share = self.per_round // dist.world_size
        t0 = time.perf_counter()  # generation_s counts the push of the weights (to Ray or vLLM workers) too
        self.generator.update_weights(self.policy)
        pushed = time.perf_counter() - t0
        drawn = self._draw_with_spread(round_) if self.dynamic else self._draw(round_, 0)
        rows, flat, rewards, parts = drawn.rows, drawn.flat, drawn.rewards, drawn.parts
        rule = self.advantages
        self._examples = [
            RolloutExample(row=rows[k // G][1], source=rows[k // G][0], prompt_ids=s.prompt_ids,
                           completion_ids=s.token_ids, finished=s.finished, reward=float(rewards[k]), advantages=(), sampler_logps=s.logprobs,
                           components={name: float(v[k]) for name, v in parts.items()})
            for k, s in enumerate(flat)]
        examples = self._examples
        with self.autocast():  # the training pass's precision: a round's first update is then on-policy
            self._round_passes(examples, rule)
        if rule.sequence is not None:
            whole = rule.sequence(drawn.everyone, drawn.greedy_all, drawn.lengths, drawn.components)
            check_range(float(whole.abs().max()) if whole.numel() else 0.0, self._dtype, "advantages")
            advantages = whole[dist.rank * share:(dist.rank + 1) * share].reshape(-1)
            for e, a in zip(examples, advantages.tolist(), strict=True):
                e.advantages = (a,) * len(e.completion_ids)
            if self.skip_idle:  # every process's flags, from the round's advantages every process has
                self._idle = (whole == 0).reshape(dist.world_size, -1).tolist()
        else:
            self._token_advantages(rule, rewards.view(len(rows), G))
        self._round = round_
        self._everyone = dist.gather([e.to_state() for e in examples]) if self.updates > 1 else None
        self._metrics = self._round_metrics(rewards, parts, flat, pushed + drawn.gen_s, drawn.reward_s,
                                            drawn.generated)
        self._metrics.update(drawn.metrics)
        if drawn.greedy_all is not None:  # every process's, already gathered
            self._metrics["reward/greedy"] = float(drawn.greedy_all.mean())

    def _round_passes(self, examples: list[RolloutExample], rule: AdvantageRule) -> None:
        """What the round's loss needs of the models at its start, each completion token's: the
        policy's log-probs (and Σπ², OTB), the reference's, the critic's values."""
        batch_rows, device = self.cfg.optim.batch_size, self.dist.device
        if self.needs_old:
            if self.cfg.spec.sum_pi_squared:
                old, sum_pi_sq = token_logps_and_sum_pi_sq(self.policy, examples, self.pad_id, batch_rows, device,
                                                           self.pack)
                for e, sq in zip(examples, sum_pi_sq, strict=True):
                    e.sum_pi_sq = sq
            else:
                old = token_logps(self.policy, examples, self.pad_id, batch_rows, device, self.pack)
            for e, lp in zip(examples, old, strict=True):
                e.old_logps = lp
        if self.reference is not None:
            with self.reference() as ref:
                reference = token_logps(ref, examples, self.pad_id, batch_rows, device, self.pack)
                for e, lp in zip(examples, reference, strict=True):
                    e.ref_logps = lp
        if rule.values:
            values = _per_token(lambda b: (token_values(self.policy, b),), 1, examples, self.pad_id, batch_rows,
                                device, self.pack)[0]
            for e, v in zip(examples, values, strict=True):
                e.old_values = v

    def _batch_order(self, round_: int, batch: int, drawn: Sequence[int] = ()) -> list[int]:
        """The prompts (indices, every process's in rank order) of batch ``batch`` of the round: 0
        is the round's own, as without dynamic sampling; a further one (dynamic sampling) takes
        the prompts the round has not ``drawn`` yet, in a permutation seeded by (``batch_seed``,
        round), as DAPO's next batches of the data loader hold other prompts; only when fewer
        than a batch remain does it go on with those drawn before, in the same permutation."""
        n, P = len(self.prompts), self.per_round
        if batch == 0:
            return global_batch_indices(n, P, self.cfg.seed, round_)
        seen = set(drawn)
        perm = epoch_order(n, batch_seed(self.cfg.seed, batch), round_)
        pool = [i for i in perm if i not in seen] + [i for i in perm if i in seen]
        return (pool * math.ceil(P / n))[:P]

    def _draw(self, round_: int, batch: int, drawn: Sequence[int] = ()) -> _Drawn:
        """Batch ``batch`` of prompts of the round (``_batch_order``; more than one only under
        ``dynamic_sampling``), this process's share sampled G times and scored, and every
        process's rewards: one exchange, so that every process stops (or skips) together on a
        reward fault, and otherwise has the whole batch's rewards (a statistic of the batch is the
        batch's)."""
        dist, G = self.dist, self.G
        seed = batch_seed(self.cfg.seed, batch)
        order = self._batch_order(round_, batch, drawn)
        share = self.per_round // dist.world_size
        mine = order[dist.rank * share:(dist.rank + 1) * share]
        rows = [(self.prompts[i][3], self.prompts[i][0]) for i in mine]
        texts = [self.prompts[i][1] for i in mine]
        named = [self.prompts[i][2] for i in mine]
        t0 = time.perf_counter()
        params = dataclasses.replace(self.params, seed=round_seed(seed, round_))
        samples = self.generator.generate(texts, G, params, start=dist.rank * share)
        greedy = None
        if self.advantages.greedy_baseline:  # ReMax: one greedy answer per prompt
            greedy = self.generator.generate(texts, 1, dataclasses.replace(params, temperature=0.0),
                                             start=dist.rank * share)
        t1 = time.perf_counter()
        where = [f"{name}, sample {j + 1}" for name in named for j in range(G)]
        flat = [s for group in samples for s in group]
        try:
            rewards, parts = score_samples(self.reward, [t for t in texts for _ in range(G)], [s.text for s in flat],
                                           where, [len(s.token_ids) for s in flat])
            check_statistics(rewards, where)
            greedy_rewards = None
            if greedy is not None:
                greedy_rewards, _ = score_samples(self.reward, texts, [g[0].text for g in greedy],
                                                  [f"{name}, greedy answer" for name in named],
                                                  [len(g[0].token_ids) for g in greedy])
            lengths = torch.tensor([float(len(s.token_ids)) for s in flat], dtype=torch.float64)
            comps = _components(parts).view(len(mine), G, len(parts))
            mine_out: tuple = (None, rewards.view(len(mine), G), lengths.view(len(mine), G), greedy_rewards, comps)
        except RewardError as exc:
            mine_out = (str(exc), None, None, None, None)
        gathered = dist.gather(mine_out)
        faults = [f[0] for f in gathered if f[0]]
        if faults:
            raise RewardError(faults[0])
        greedy_all = torch.cat([g[3] for g in gathered]) if greedy is not None else None
        return _Drawn(rows, texts, flat, rewards, parts, torch.cat([g[1] for g in gathered]),
                      torch.cat([g[2] for g in gathered]), greedy_all, t1 - t0, time.perf_counter() - t1, {},
                      order, components=torch.cat([g[4] for g in gathered]))

    def _draw_with_spread(self, round_: int) -> _Drawn:
        """DAPO's dynamic sampling (Yu et al. 2025, "filter groups"): batches of the round's prompts
        are drawn (``_draw``; each of prompts the round has not drawn yet while the prompt set
        lasts, ``_batch_order``) until the groups with spread (``_has_spread``: the method's
        advantage is not 0 everywhere in the group) fill the round, or ``max_sampling_batches``
        were drawn; a round still short is completed with groups without spread, first drawn first
        (they train with advantage 0). Groups keep the order they were drawn in (batch, then
        process, then prompt) and the round's groups are dealt to the processes in that order, so
        1 process or several, and any split of the step, train on the same groups. Every process
        receives every group drawn (one exchange per batch)."""
        dist, G, P = self.dist, self.G, self.per_round
        spread: list[_Group] = []
        flat_groups: list[_Group] = []
        gen_s = reward_s = 0.0
        drawn_groups, reward_sum, generated = 0, 0.0, 0
        drawn: list[int] = []
        for batch in range(self.max_batches):
            d = self._draw(round_, batch, drawn)
            drawn += d.order
            gen_s, reward_s = gen_s + d.gen_s, reward_s + d.reward_s
            mine = [_Group(d.rows[g], d.texts[g], d.flat[g * G:(g + 1) * G], d.rewards[g * G:(g + 1) * G].tolist(),
                           {name: v[g * G:(g + 1) * G].tolist() for name, v in d.parts.items()})
                    for g in range(len(d.rows))]
            for group in (g for part in dist.gather(mine) for g in part):
                (spread if self._has_spread(*group.tensors) else flat_groups).append(group)
                drawn_groups += 1
                reward_sum += sum(group.rewards)
                generated += sum(len(s.token_ids) for s in group.samples)
            if len(spread) >= P:
                break
        chosen = spread[:P] + flat_groups[:max(0, P - len(spread))]
        share = P // dist.world_size
        mine = chosen[dist.rank * share:(dist.rank + 1) * share]
        rewards = torch.tensor([r for g in mine for r in g.rewards], dtype=torch.float64)
        parts = {name: torch.tensor([r for g in mine for r in g.parts[name]], dtype=torch.float64)
                 for name in (mine[0].parts if mine else {})}
        metrics = {"dynamic_sampling/batches": float(batch + 1),
                   "dynamic_sampling/with_spread": min(len(spread), P) / P,
                   "reward/sampled": reward_sum / max(drawn_groups * G, 1)}
        everyone, lengths, components = (torch.stack([g.tensors[k] for g in chosen]) if chosen else None
                                         for k in range(3))
        return _Drawn([g.row for g in mine], [g.text for g in mine], [s for g in mine for s in g.samples], rewards, parts,
                      everyone, lengths, None, gen_s, reward_s, metrics, drawn, float(generated), components)

    def _has_spread(self, rewards_G: torch.Tensor, lengths_G: torch.Tensor, components_GK: torch.Tensor) -> bool:
        """Whether the method's advantage of one group is not 0 everywhere: for the GRPO family,
        RLOO and OPO, whether its rewards differ (DAPO's criterion); for pass@k, whether its best
        reward is its own (a tie at the top gives every sample 0). Dynamic sampling is allowed only
        for sequence rules of such a group statistic (``group_baseline``), whose zeros a group
        decides alone (GRPO's batch std scales every group alike)."""
        whole = self.advantages.sequence(rewards_G[None], None, lengths_G[None], components_GK[None])
        return bool((whole != 0).any())

    def _token_advantages(self, rule: AdvantageRule, scores_PG: torch.Tensor) -> None:
        """A token rule on this process's completions; advantages whitened over the whole round."""
        examples = self._examples
        width = max((len(e.completion_ids) for e in examples), default=0)
        mask = token_tensor([[1.0] * len(e.completion_ids) for e in examples], width).bool()

        def tokens(name: str) -> torch.Tensor | None:
            """The examples' per-token values of ``name``; None where some completion lacks them
            (None, or the sampler's log-probs left empty by a backend that reports none)."""
            rows = [getattr(e, name) for e in examples]
            if any(r is None or (not r and e.completion_ids) for r, e in zip(rows, examples, strict=True)):
                return None
            for r, e in zip(rows, examples, strict=True):
                if len(r) != len(e.completion_ids):
                    raise ValueError(f"{name}: {len(r)} values for a completion of {len(e.completion_ids)} tokens "
                                     f"({e.source}, row {e.row})")
            return token_tensor(rows, width, dtype=torch.float64)

        advantages, returns = rule.token(RoundTokens(scores_PG, mask, tokens("old_logps"), tokens("ref_logps"),
                                                     tokens("old_values"), tokens("sum_pi_sq"),
                                                     tokens("sampler_logps")))
        if rule.whiten:  # statistics of every process's tokens, concatenated in rank order
            advantages = whiten(advantages, mask, stats=whiten_stats(torch.cat(self.dist.gather(advantages[mask]))))
        largest = [float(t[mask].abs().max()) if mask.any() else 0.0 for t in (advantages, returns) if t is not None]
        everyone = self.dist.gather(largest)  # every process stops, or none
        for i, what in enumerate(("advantages", "value targets")[:len(largest)]):
            check_range(max(p[i] for p in everyone), self._dtype, what)
        for b, e in enumerate(examples):
            n = len(e.completion_ids)
            e.advantages = tuple(advantages[b, :n].tolist())
            if rule.values:
                e.returns = tuple(returns[b, :n].tolist())

    def _round_metrics(self, rewards: torch.Tensor, parts: dict[str, torch.Tensor], flat: list, gen_s: float,
                       reward_s: float, generated: float | None = None) -> dict[str, float]:
        """The round's reward, per-term means, advantage statistics, lengths, truncation and (when
        both log-probs were computed) the sampling policy's KL to the reference per completion,
        over every process; the generation throughput over ``generated`` tokens (every process's,
        dynamic sampling's batches included) where given, else over the round's completions.

        ``kl/sampled`` is the k1 estimate: the mean over the round's completions of
        Σ_t ℓold − ℓref. For completions drawn from the policy itself (temperature 1, no top-p or
        top-k) it is unbiased, but a completion's term is below 0 wherever the reference gave that
        completion more probability than the policy did, so for a policy still close to its
        reference the mean over few completions can come out slightly below 0. Under other
        sampling settings it is the mean log-ratio over what was drawn, not the KL of the policy."""
        lengths = torch.tensor([float(len(s.token_ids)) for s in flat], dtype=torch.float64)
        truncated = torch.tensor([0.0 if s.finished else 1.0 for s in flat], dtype=torch.float64)
        adv = torch.tensor([a for e in self._examples for a in e.advantages], dtype=torch.float64)
        sums = {"reward": rewards.sum(), "reward_sq": (rewards ** 2).sum(), "length": lengths.sum(),
                "truncated": truncated.sum(), "count": torch.tensor(float(len(flat)), dtype=torch.float64),
                "gen_tokens": lengths.sum(), "adv": adv.sum(), "adv_sq": (adv ** 2).sum(),
                "adv_zero": (adv == 0).sum().double()}
        sums.update({f"reward/{k}": v.sum() for k, v in parts.items()})
        if all(e.old_logps is not None and e.ref_logps is not None for e in self._examples):
            # the sampling policy's KL to the reference, per completion: the k1 estimate Σ_t ℓold − ℓref,
            # which can be slightly below 0 (the docstring says why)
            sums["kl_k1"] = torch.tensor(sum(sum(e.old_logps) - sum(e.ref_logps) for e in self._examples),
                                         dtype=torch.float64)
        tot = sum_over_processes(self.dist, sums)
        n = max(tot.pop("count"), 1.0)
        mean = tot["reward"] / n
        tokens = max(tot["length"], 1.0)
        generated = tot.pop("gen_tokens") if generated is None else generated
        adv_mean = tot.pop("adv") / tokens
        out = {"reward": mean, "reward_std": max(tot.pop("reward_sq") / n - mean ** 2, 0.0) ** 0.5,
               "advantage/mean": adv_mean, "advantage/std": max(tot.pop("adv_sq") / tokens - adv_mean ** 2, 0.0) ** 0.5,
               "advantage/zero": tot.pop("adv_zero") / tokens,
               "completion_length": tot.pop("length") / n, "truncated": tot.pop("truncated") / n,
               "generation_s": gen_s, "reward_s": reward_s,
               "generation_tokens_per_s": generated / max(gen_s, 1e-9)}
        if "kl_k1" in tot:
            out["kl/sampled"] = tot.pop("kl_k1") / n
        out.update({k: v / n for k, v in tot.items() if k.startswith("reward/")})
        return out


"""One round of online sampling: prompts → the generator → the rewards → what the loss trains on.

The online step source (``online.py``) calls ``score_samples`` and builds ``RolloutExample``s once
per round; ``collate_rollout`` turns a micro-batch of them into the ``Batch`` (packed or padded) the
policy-gradient forward runs. Everything a loss needs from the round travels with the example:
the completion's tokens, its advantage per token, the sampler's log-probs and, when the method
needs them, the trainer's log-probs at the start of the round and the reference's.

A reward is one or more scorers (``alignlab.rewards``), each with a weight; the run's reward is
their weighted sum and each one's mean is logged on its own. Scorers take prompts as plain text: a
conversation prompt (which the generator renders with the chat template) reaches them as the text
of its last user message (``reward_prompt``), the question a verifier, a judge or a reward model
reads, as a testbed task's prompts are. A scorer that raises, returns a list
of the wrong length, a non-number, NaN or infinity stops the step with one line that names the
reward, the prompt's data row and the sample (a scorer that raised on the batch is asked again
one sample at a time to find the one at fault).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from alignlab.data.collate import Batch, collate_completions
from alignlab.data.pack import collate_packed, fill_rows
from alignlab.data.records import Text
from alignlab.data.render import Response
from alignlab.errors import UserError
from alignlab.rewards.base import Scorer, finite_number, reward_prompt
from alignlab.rewards.guard import cause, find_fault
from alignlab.training.source import StepFault


class RewardError(StepFault):
    """A reward failed or returned something that is not a finite number for one sample."""


@dataclass(frozen=True)
class RewardTerm:
    name: str  # as logged: reward/<name>
    scorer: Scorer
    weight: float = 1.0


def load_reward_terms(specs: Sequence[str], weights: Sequence[float] | None = None,
                      resolve: Callable[[str], str] | None = None, tokenizer=None,
                      max_new_tokens: int | None = None, loaded: Mapping[str, Scorer] | None = None
                      ) -> list[RewardTerm]:
    """Scorers from their text specs (``alignlab.rewards.load_scorer``), with weights (1 each by
    default). Two terms of the same spec are logged as ``spec``, ``spec#2``. ``resolve``: the spec
    a scorer is loaded from, when it differs from the one it is logged as (rounds fill in the
    round's policy for ``{policy}``). ``tokenizer``: the policy's, for ``length:unit=tokens``.
    The terms score samples (``score_samples`` with their token counts), so ``overlong`` is
    allowed, its ``max`` by default ``max_new_tokens``, the sampling limit. ``loaded``: scorers
    loaded before, by spec, used instead of loading them again (rounds keep those of the specs
    that name no round's model)."""
    from alignlab.rewards import load_scorer

    if not specs:
        raise UserError("reward: give at least one scorer spec (e.g. task:arithmetic)")
    weights = list(weights) if weights else [1.0] * len(specs)
    if len(weights) != len(specs):
        raise UserError(f"reward_weights: {len(weights)} weights for {len(specs)} rewards; give one per reward")
    terms, seen = [], {}
    for spec, w in zip(specs, weights, strict=True):
        if not math.isfinite(w):
            raise UserError(f"reward_weights: the weight of '{spec}' is {w}, not a finite number")
        seen[spec] = seen.get(spec, 0) + 1
        if loaded and spec in loaded:
            scorer = loaded[spec]
        else:
            scorer = load_scorer(resolve(spec) if resolve else spec, tokenizer, sampled=True,
                                 max_new_tokens=max_new_tokens)
        terms.append(RewardTerm(spec if seen[spec] == 1 else f"{spec}#{seen[spec]}", scorer, float(w)))
    return terms


def _value(term: RewardTerm, value, where: str) -> float:
    x, problem = finite_number(value)
    if x is None:
        raise RewardError(f"reward '{term.name}': {where}: returned {problem}")
    return x


def score_samples(terms: Sequence[RewardTerm], prompts: Sequence[Text], responses: Sequence[str],
                  where: Sequence[str], token_counts: Sequence[int]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The weighted reward of each response (float64, shape (N,)) and each term's own values.

    ``prompts[i]`` is the prompt response ``i`` answers (a conversation is scored against its last
    user message: ``reward_prompt``); ``where[i]`` names it in an error (e.g. "prompt row 12,
    sample 3"); ``token_counts[i]`` is the number of tokens the generator sampled for it, the
    end-of-sequence token included when it stopped on one (``len(Sample.token_ids)``), which a
    scorer of lengths (``overlong``) reads (``Scorer.score_sampled``)."""
    prompts = [reward_prompt(p) for p in prompts]
    n = len(responses)
    total = torch.zeros(n, dtype=torch.float64)
    parts: dict[str, torch.Tensor] = {}
    for term in terms:
        try:
            values = list(term.scorer.score_sampled(list(prompts), list(responses), list(token_counts)))
        except RewardError:
            raise
        except Exception as exc:  # find the sample at fault, then report it in one line
            fault = find_fault(lambda i, term=term: term.scorer.score_sampled([prompts[i]], [responses[i]],
                                                                              [token_counts[i]]), n)
            if fault is None:
                raise RewardError(f"reward '{term.name}': {_all(where)}, each alone scoring: {cause(exc)}") from None
            raise RewardError(f"reward '{term.name}': {where[fault[0]]}: {fault[1]}") from None
        if len(values) != n:
            raise RewardError(f"reward '{term.name}': returned {len(values)} values for {n} responses "
                              f"({_all(where)}); a reward gives one value per response")
        got = torch.tensor([_value(term, v, where[i]) for i, v in enumerate(values)], dtype=torch.float64)
        parts[term.name] = got
        total += term.weight * got
    bad = (~torch.isfinite(total)).nonzero()  # finite values, but their weighted sum left float64 (2 × 1e308)
    if len(bad):
        i = int(bad[0])
        raise RewardError(f"reward: {where[i]}: the weighted sum of the rewards overflows ({float(total[i])}); "
                          "rescale the rewards or their weights")
    return total, parts


def check_statistics(rewards: torch.Tensor, where: Sequence[str]) -> None:
    """The rewards of an online round must leave room for the squared differences its advantages
    and reward std are computed from: finite values as large as 1e300 do not."""
    if len(rewards) and not math.isfinite(float((2 * rewards).square().sum())):
        raise RewardError(f"reward: {_all(where)}: rewards as large as {float(rewards.abs().max()):.4g} "
                          "overflow the round's statistics (their squared differences leave float64's range); "
                          "rescale the rewards")


def check_range(largest: float, dtype: torch.dtype, what: str) -> None:
    """A round's advantages (or value targets), whose largest magnitude is ``largest``, must fit
    ``dtype``, the policy's, in which the loss reads them: beyond its range they become infinite
    there, and the loss with them."""
    if dtype.is_floating_point and largest > torch.finfo(dtype).max:
        raise RewardError(f"reward: this round's {what} reach {largest:.4g}, beyond what the loss's "
                          f"{str(dtype).removeprefix('torch.')} holds ({torch.finfo(dtype).max:.4g}); rescale the "
                          "rewards")


def _all(where: Sequence[str]) -> str:
    """The round's samples, named by the first and last in the round's order (not a range of rows)."""
    return where[0] if len(where) == 1 else f"the {len(where)} samples {where[0]}, …, {where[-1]}"


@dataclass
class RolloutExample:
    """One sampled completion and what the loss needs of it (token-level tuples have one value
    per completion token)."""

    row: int  # the prompt's data row (1-based, as errors name it)
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]
    finished: bool  # ended on a stop token (False: cut at max_new_tokens)
    reward: float
    advantages: tuple[float, ...]
    sampler_logps: tuple[float, ...] = ()  # the generator's (temperature 1, raw)
    old_logps: tuple[float, ...] | None = None  # the trainer's at the start of the round (None: ratio 1)
    ref_logps: tuple[float, ...] | None = None  # the reference's (None: no KL term)
    old_values: tuple[float, ...] | None = None  # the critic's at the start of the round (PPO)
    returns: tuple[float, ...] | None = None  # the critic's targets (PPO)
    sum_pi_sq: tuple[float, ...] | None = None  # Σ_v π_v² of each token's distribution at the start of the round (OTB)
    components: dict[str, float] = field(default_factory=dict)
    source: str = ""  # the prompt's data file (a folder of files numbers each file's rows from 1)

    def to_state(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_state(cls, d: dict) -> RolloutExample:
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


@dataclass(frozen=True)
class _Group:
    """Consecutive completions of one prompt, as ``collate_packed`` takes them."""

    prompt_ids: tuple[int, ...]
    completions: tuple[tuple[int, ...], ...]

    def sequences(self) -> list[tuple[tuple[int, ...], Response]]:
        return [(self.prompt_ids, Response(c, (1,) * len(c))) for c in self.completions]


@dataclass(frozen=True)
class PackingCost:
    """A model's forward FLOPs per position of a row (``per_position``: 2 × the weights of its
    layers, the output layer left out: it runs on the response positions only, whatever the
    layout) and per (query, key) pair that its attention computes (``per_pair``: 4 × heads × head
    dim × layers, the scores and the weighted values). ``collate_rollout`` packs a micro-batch only
    when that costs no more than padded rows: a packed row's block mask spans the whole row, so
    its attention grows with the square of G × completion length (G 8 × 1,000-token completions
    after a 100-token prompt: 65.6M pairs per head and layer against 9.7M in 8 padded rows)."""

    per_position: float
    per_pair: float

    @classmethod
    def of(cls, model: torch.nn.Module) -> PackingCost | None:
        """From ``model``'s config and weights; None when its config does not say its layers,
        heads and hidden size (then micro-batches are always packed)."""
        config = getattr(model, "config", None)
        layers = getattr(config, "num_hidden_layers", None)
        heads = getattr(config, "num_attention_heads", None)
        hidden = getattr(config, "hidden_size", None)
        if not all(isinstance(x, int) and x > 0 for x in (layers, heads, hidden)):
            return None
        head_dim = getattr(config, "head_dim", None) or hidden // heads
        outside = set()
        for get in ("get_input_embeddings", "get_output_embeddings"):
            module = getattr(model, get, lambda: None)()
            if module is not None:
                outside.update(id(p) for p in module.parameters())
        # a parameter partitioned by DeepSpeed ZeRO-3 keeps its whole size in ds_numel
        weights = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters() if id(p) not in outside)
        return cls(2.0 * weights, 4.0 * heads * head_dim * layers)

    def packs(self, groups: Sequence[_Group]) -> bool:
        """Whether packing ``groups`` (rows as ``collate_packed`` fills them, each as wide as the
        longest group: every position and every pair of the row is computed) costs no more than
        one padded row per completion (as wide as the longest prompt + completion)."""
        lengths = [len(g.prompt_ids) + sum(map(len, g.completions)) for g in groups]
        rows, width = len(fill_rows(lengths)), max(lengths)
        count = sum(len(g.completions) for g in groups)
        padded = max(len(g.prompt_ids) + len(c) for g in groups for c in g.completions)
        return rows * width * (self.per_position + width * self.per_pair) \
            <= count * padded * (self.per_position + padded * self.per_pair)


def collate_rollout(examples: Sequence[RolloutExample], pad_id: int, pack: bool | PackingCost = False) -> Batch:
    """Completions to a batch, loss on every completion token (a method that drops truncated
    completions does so in its loss, from ``finished``). Padded: a row of prompt + completion each.
    ``pack``: each run of consecutive completions of one prompt (a group, as a round lays them out)
    in one packed row, the prompt once and the completions after it (``data/pack.py``), so a
    prompt goes through the model once per group, not once per sample; the responses keep the
    examples' order and every completion gets the same numbers as in its own padded row. ``True``
    packs always; a ``PackingCost`` packs when that costs the model no more FLOPs than padded rows
    (long completions come out padded)."""
    groups: list[_Group] = []
    if pack and examples and any(e.completion_ids for e in examples):
        for e in examples:
            if groups and groups[-1].prompt_ids == tuple(e.prompt_ids):
                groups[-1] = _Group(groups[-1].prompt_ids, groups[-1].completions + (tuple(e.completion_ids),))
            else:
                groups.append(_Group(tuple(e.prompt_ids), (tuple(e.completion_ids),)))
    if groups and (pack is True or pack.packs(groups)):
        batch = collate_packed(groups, pad_id, role_major=False)
    else:
        batch = collate_completions([e.prompt_ids for e in examples], [e.completion_ids for e in examples], pad_id)
    batch.num_examples = len(examples)
    batch.examples = list(examples)
    return batch


def token_tensor(rows: Sequence[Sequence[float]], width: int, dtype=torch.float32) -> torch.Tensor:
    """Per-token values of each row, left-aligned and zero-padded to ``width``: ``(B, width)``."""
    out = np.zeros((len(rows), width), dtype=np.float64)  # filled in numpy: a row costs microseconds
    for b, r in enumerate(rows):
        r = r[:width]
        out[b, :len(r)] = r
    return torch.from_numpy(out).to(dtype)

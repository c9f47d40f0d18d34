"""What each loss needs: data shape, reference model, log-prob reduction, normalisation, defaults.

A new loss is one function, one ``register(LossSpec(...))`` line and one test with numbers
derived by hand. The training loops read the spec; they never branch on a loss's name.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Shape = Literal["sft", "pair", "joint", "unpaired", "ranked", "negatives", "online"]

# Each data shape: the input container the loss receives, and what a row of data holds.
SHAPES: dict[str, str] = {
    "sft": "SeqLogps; rows: prompt + completion (or messages / text)",
    "pair": "PairLogps; rows: prompt, chosen, rejected",
    "joint": "PairLogps; rows: prompt_chosen, chosen, prompt_rejected, rejected (the prompts may differ)",
    "unpaired": "UnpairedLogps; rows: prompt, completion, label (true = desirable)",
    "ranked": "ListLogps; rows: prompt, completions (a list), scores or ranks",
    "negatives": "NegativeLogps; rows: prompt, rejected (samples are drawn from the reference)",
    "online": "PolicyGradientInputs; rows: prompts (or task:NAME); completions are sampled and scored while training",
}


@dataclass(frozen=True)
class LossSpec:
    name: str
    fn: Callable  # fn(inputs, params) -> LossOutput; inputs is the shape's container (see SHAPES)
    shape: Shape  # the data shape the loss trains on
    params: type  # dataclass of hyperparameters; its defaults are the method's defaults
    needs_reference: bool
    # Which reductions of the response log-probs the loss uses: "sum", "mean" (token mean,
    # computed from the sums and lengths it is given) or "sum+mean". Documentation for users.
    reduction: Literal["sum", "mean", "sum+mean"] = "sum"
    normalize: Literal["examples", "tokens"] = "examples"  # units the step's loss is averaged over
    paper: str = ""
    summary: str = ""
    needs: frozenset[str] = frozenset()  # optional inputs (names from types.EXTRAS)
    # Stateful losses: init_state(params) -> dict of floats; update_state(state, stats, params) ->
    # new state, given the ``LossOutput.stats`` summed over one optimizer step. The loop saves the
    # state in checkpoints and passes it in the inputs' ``state`` field.
    init_state: Callable | None = None
    update_state: Callable | None = None
    strict_order: bool = False  # ranked data: ties in scores/ranks are refused
    # What trains: the policy (a causal LM; the loss gets log-probs), or a reward model (a backbone
    # with a value head; the loss gets ``reward.RewardPairs`` of its values instead of log-probs).
    model: Literal["policy", "reward"] = "policy"
    # Online methods (losses/online.py): a sequence rule advantages(rewards_PG, params, greedy_P) ->
    # advantages_PG, from one round's rewards (one row per prompt, one column per sample) over every
    # process, with the reward of each prompt's greedy answer when ``greedy_baseline``; or a token
    # rule token_advantages(RoundTokens, params) -> (advantages_BT, returns_BT) of one process's
    # completions. ``value_model``: the method trains a critic (PPO). ``lengths``: the sequence rule
    # also gets ``lengths_PG``, each completion's length in tokens (OPO's length-weighted baseline).
    advantages: Callable | None = None
    token_advantages: Callable | None = None
    greedy_baseline: bool = False
    lengths: bool = False
    value_model: bool = False
    # ``sum_pi_squared``: the round computes, with the policy's log-probs at its start, each
    # completion token's Σ_v π_v² (the squared mass of the distribution it was drawn from; OTB)
    sum_pi_squared: bool = False
    # ``num_generations``: a method that compares a fixed number of samples per prompt (online DPO:
    # 2); a run must sample exactly that many, and each micro-batch must hold whole groups
    # (batch_size a multiple of it), since the loss reads a group's samples together.
    # ``units(advantages_B, params) -> (B,)``: the units of the step's normaliser from each
    # completion's sequence advantage, for a method that counts its own (online DPO: decisive
    # pairs); None: ``policy_gradient.units`` of the params' aggregation.
    num_generations: int | None = None
    units: Callable | None = None

    def defaults(self) -> dict:
        return {f.name: f.default for f in dataclasses.fields(self.params)}


REGISTRY: dict[str, LossSpec] = {}


class UnknownLossError(LookupError):
    """No loss of that name; the message lists the closest names."""


def register(spec: LossSpec) -> LossSpec:
    if spec.name in REGISTRY:
        raise ValueError(f"loss '{spec.name}' is registered twice")
    if not dataclasses.is_dataclass(spec.params):
        raise TypeError(f"{spec.name}: params must be a dataclass")
    if spec.shape not in SHAPES:
        raise ValueError(f"{spec.name}: unknown data shape '{spec.shape}'")
    from alignlab.losses.types import EXTRAS

    unknown = set(spec.needs) - set(EXTRAS)
    if unknown:
        raise ValueError(f"{spec.name}: unknown needs {sorted(unknown)}")
    if (spec.init_state is None) != (spec.update_state is None):
        raise ValueError(f"{spec.name}: give both init_state and update_state, or neither")
    REGISTRY[spec.name] = spec
    return spec


def get_loss(name: str) -> LossSpec:
    """The spec of a method or of a weighted sum of methods (``dpo+0.005*sft``), or an
    UnknownLossError with the closest names."""
    from alignlab.losses import combine

    if name not in REGISTRY and combine.is_combination(name):
        try:
            return combine.combination(name)
        except (ValueError, LookupError) as e:
            raise UnknownLossError(str(e)) from None
    try:
        return REGISTRY[name]
    except KeyError:
        lowered = {n.lower(): n for n in REGISTRY}
        close = [lowered[c] for c in difflib.get_close_matches(name.lower(), list(lowered), n=3)]
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownLossError(f"method: unknown method '{name}'{hint} (known: {', '.join(sorted(REGISTRY))})") from None

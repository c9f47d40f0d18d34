"""Small typed containers that losses take and return. Only torch, no models or tokenizers.

Every log-prob is over response tokens only (the prompt is masked). Sums are the default; a loss
that wants token means divides by the lengths it is given (``PairLogps.chosen_mean`` etc.).
Optional fields are filled only for losses whose registry entry asks for them (``LossSpec.needs``);
a loss must not assume an optional field it did not ask for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# Names a LossSpec may list in ``needs``, and the field(s) each one fills.
EXTRAS = {
    "tokens": "per-token log-probs, left-aligned: PairLogps.*_tokens (B, L), zero past each row's length",
    "sqmass": "PairLogps.*_sqmass: per response, Σ_t log Σ_v π(v|x, y<t)² of the policy, detached (WPO)",
    "strength": "PairLogps.strength: per-pair preference strength p in [0.5, 1] (soft preference)",
    "group": "PairLogps.group: 1 for a pair of the first set, 0 for the second (mixtures of two pair sets)",
    "kl": "UnpairedLogps.kl_logps / ref_kl_logps: log-probs of mismatched completions (KTO reference point)",
    "udm": "UnpairedLogps.udm_weight: density-ratio weight per example from a prompt classifier (BCO)",
}


@dataclass
class PairLogps:
    """Log-probs of a batch of B preference pairs, each (B,) unless said otherwise.

    ``chosen``/``rejected`` are summed over response tokens; ``*_len`` are response token counts.
    ``ref_*`` are None for losses that need no reference model. For joint preference data the two
    responses may answer different prompts; the tensors mean the same thing.
    ``state`` holds the running state of a stateful loss (see ``LossSpec.init_state``).
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_len: torch.Tensor
    rejected_len: torch.Tensor
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None
    # needs "tokens": (B, L) per-token log-probs, token t of the response at column t, zero beyond.
    chosen_tokens: torch.Tensor | None = None
    rejected_tokens: torch.Tensor | None = None
    ref_chosen_tokens: torch.Tensor | None = None
    ref_rejected_tokens: torch.Tensor | None = None
    # needs "sqmass": Σ over response tokens of log Σ_v π(v)² (policy, no gradient).
    chosen_sqmass: torch.Tensor | None = None
    rejected_sqmass: torch.Tensor | None = None
    # needs "strength": preference strength p in [0.5, 1].
    strength: torch.Tensor | None = None
    # needs "group": 1.0 for pairs of the first set, 0.0 for the second.
    group: torch.Tensor | None = None
    state: dict[str, float] = field(default_factory=dict)

    @property
    def chosen_mean(self) -> torch.Tensor:
        return self.chosen / self.chosen_len.clamp(min=1)

    @property
    def rejected_mean(self) -> torch.Tensor:
        return self.rejected / self.rejected_len.clamp(min=1)

    def swapped(self) -> PairLogps:
        """The same pairs with chosen and rejected exchanged (strength p becomes 1 − p)."""
        def pick(a: str, b: str) -> dict:
            return {a: getattr(self, b), b: getattr(self, a)}

        kw = {**pick("chosen", "rejected"), **pick("chosen_len", "rejected_len"),
              **pick("ref_chosen", "ref_rejected"), **pick("chosen_tokens", "rejected_tokens"),
              **pick("ref_chosen_tokens", "ref_rejected_tokens"), **pick("chosen_sqmass", "rejected_sqmass")}
        strength = None if self.strength is None else 1.0 - self.strength
        return PairLogps(**kw, strength=strength, group=self.group, state=dict(self.state))


@dataclass
class SeqLogps:
    """Log-probs of B sequences: ``logps`` (B,) summed over response tokens, ``lengths`` (B,)."""

    logps: torch.Tensor
    lengths: torch.Tensor


@dataclass
class UnpairedLogps:
    """B responses, each labelled desirable (1.0) or undesirable (0.0): thumbs up/down data.

    ``kl_logps``/``ref_kl_logps`` (needs "kl") are the log-probs of mismatched completions: row i's
    prompt with another row's completion, fixed per example by the data layer. ``udm_weight``
    (needs "udm") is a per-example weight (1 where unused).
    """

    logps: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    ref: torch.Tensor | None = None
    kl_logps: torch.Tensor | None = None
    ref_kl_logps: torch.Tensor | None = None
    udm_weight: torch.Tensor | None = None
    state: dict[str, float] = field(default_factory=dict)


@dataclass
class NegativeLogps:
    """Negatives-only data (D2O): a dispreferred response per prompt and K samples per prompt
    drawn from the reference model. ``rejected*`` are (B,), ``samples*`` are (B, K)."""

    rejected: torch.Tensor
    rejected_len: torch.Tensor
    ref_rejected: torch.Tensor
    samples: torch.Tensor
    samples_len: torch.Tensor
    ref_samples: torch.Tensor
    state: dict[str, float] = field(default_factory=dict)


@dataclass
class ListLogps:
    """B lists of up to N responses to one prompt each, all (B, N).

    Items are ordered best first (``scores`` non-increasing along each row); ``mask`` is True where
    a list has an item (lists may be shorter than N; the missing items come last and hold zeros).
    ``scores``: higher is better (ranks r given by the data become scores −r).
    """

    logps: torch.Tensor
    lengths: torch.Tensor
    scores: torch.Tensor
    mask: torch.Tensor
    ref: torch.Tensor | None = None
    state: dict[str, float] = field(default_factory=dict)

    @property
    def means(self) -> torch.Tensor:
        return self.logps / self.lengths.clamp(min=1)


@dataclass
class LossOutput:
    """What every loss returns.

    ``losses`` holds one value per example, shape (B,). The training loop sums them and divides by
    the number of units in the whole optimizer step (over micro-batches and processes), where a
    unit is an example or a token as the registry entry says. So the update does not depend on how
    the step's batch is split. ``metrics`` are per-example (B,) values, averaged for logging: summed
    over the step (or held-out set) and divided by its examples, or, for a metric ``name`` that comes
    with per-example counts ``_count/name``, by the summed counts (a mean over tokens, whatever the
    split; a metric whose counts sum to 0 is not logged). Names that start with ``_`` are not logged.
    ``stats`` (stateful losses only) are scalar sums; the loop adds them over the step's
    micro-batches and processes and hands the totals to ``LossSpec.update_state`` after the step.
    """

    losses: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)

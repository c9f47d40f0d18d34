"""DAPO's soft overlong punishment (Yu et al. 2025, "DAPO", eq. 13), over sampled token counts.

With L_max the completion limit (``max_tokens``), L_cache the buffer before it (``cache``) and |y|
the number of tokens the generator sampled for the completion:

    R(y) = 0                                  |y| <= L_max - L_cache
    R(y) = ((L_max - L_cache) - |y|) / L_cache     L_max - L_cache < |y| <= L_max
    R(y) = -1                                 |y| > L_max

times ``penalty`` (verl's ``overlong_buffer.penalty_factor``, OpenRLHF's ``--overlong_penalty_factor``;
1 in the paper and in TRL's ``get_soft_overlong_punishment``, which has no factor). |y| counts the
end-of-sequence token of a completion that stopped on one, as TRL counts ``completion_ids`` and
verl its response mask; a completion cut at L_max = ``max_new_tokens`` scores −penalty. Beyond
L_max (only when ``max_tokens`` is below the sampling limit) the punishment stays at −penalty, as
in the paper, TRL and OpenRLHF; verl's formula goes on falling linearly there.

The count is the sampled one, not the text's tokens counted again: decoding and re-tokenizing a
completion can give another number of tokens (the end-of-sequence token is not in the text, and a
tokenizer may merge what was sampled as two tokens). So the scorer scores only where samples are
(``Scorer.score_sampled``); ``score`` on bare texts is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from alignlab.errors import UserError
from alignlab.rewards.base import Scorer, check_lengths

WHERE = ("alignlab train (online methods), alignlab iterate, alignlab sample --scorer and "
         "alignlab decode --method best-of-n")


def soft_overlong(length: int, max_tokens: int, cache: int, penalty: float = 1.0) -> float:
    """DAPO's eq. 13 for one completion of ``length`` sampled tokens, times ``penalty``."""
    start = max_tokens - cache
    if length <= start:
        return 0.0
    if length <= max_tokens:
        return penalty * ((start - length) / cache)
    return -penalty


class OverlongPunishment(Scorer):
    """Scores sampled completions by their token counts (see the module docstring)."""

    def __init__(self, cache: int, max_tokens: int, penalty: float = 1.0, name: str | None = None):
        what = name or "overlong"
        if max_tokens < 1:
            raise UserError(f"scorer '{what}': max must be a whole number >= 1, got {max_tokens}")
        if not 1 <= cache <= max_tokens:
            raise UserError(f"scorer '{what}': cache must be a whole number from 1 to max ({max_tokens}), got {cache}")
        if not (math.isfinite(penalty) and penalty >= 0):
            raise UserError(f"scorer '{what}': penalty must be a finite number >= 0, got {penalty}")
        self.cache, self.max_tokens, self.penalty = cache, max_tokens, float(penalty)
        self.name = what

    def score_sampled(self, prompts: Sequence[str], responses: Sequence[str],
                      token_counts: Sequence[int]) -> list[float]:
        check_lengths(self.name, prompts, responses, token_counts)
        return [soft_overlong(int(n), self.max_tokens, self.cache, self.penalty) for n in token_counts]

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        raise UserError(f"scorer '{self.name}': it scores the token counts a generator sampled, and was given "
                        f"texts only; it works in {WHERE}")

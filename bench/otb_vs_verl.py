"""OTB's advantages against verl's own function, for a machine where verl can be imported.

    pip install --no-deps --target /tmp/verlpkg verl tensordict pyvers orjson codetiming hydra-core \
        omegaconf antlr4-python3-runtime
    PYTHONPATH=/tmp/verlpkg python bench/otb_vs_verl.py

verl is not a dependency of alignlab (it pins its own stack), so this check is not among the tests.
On random rounds (3 prompts × 4 completions of 1-7 tokens, a third of them with the longest tied,
integer scores, random log-probs, Σπ² and sampler log-probs) it compares
``alignlab.losses.online.otb_token_advantages`` with verl's
``compute_optimal_token_baseline_advantage`` (outcome rewards on each completion's last token,
the same index of prompts), with and without ``handle_zero_tail``, and without importance
sampling, with token-level and with sequence-level truncated weights (verl takes the weights as
given: alignlab's ``importance_weights``, broadcast to tokens). Prints the largest difference of
the advantages and of the returns; exits 1 if it is above 1e-12.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from alignlab.losses.advantages import token_rewards
from alignlab.losses.online import OTBParams, RoundTokens, otb_token_advantages
from alignlab.losses.surrogates import importance_weights


def main(trials: int = 200) -> int:
    from verl.trainer.ppo.core_algos import compute_optimal_token_baseline_advantage as verl_otb

    torch.manual_seed(0)
    P, G, T = 3, 4, 7
    worst, cases = 0.0, 0
    for trial in range(trials):
        lengths = torch.randint(1, T + 1, (P * G,))
        if trial % 3 == 0:
            lengths[:G] = T  # the first prompt's completions tie at the top: no zero tail there
        mask = (torch.arange(T)[None] < lengths[:, None]).double()
        scores = torch.randint(0, 3, (P, G)).double()
        old = -torch.rand(P * G, T, dtype=torch.float64) * 3 * mask
        sum_pi_sq = torch.rand(P * G, T, dtype=torch.float64) * 0.9 + 0.05
        sampler = old - 0.3 * torch.randn(P * G, T, dtype=torch.float64) * mask
        for zero_tail in (True, False):
            for is_mode in ("off", "token_truncate", "sequence_truncate"):
                params = OTBParams(zero_tail=zero_tail, is_mode=is_mode)
                ours, returns = otb_token_advantages(
                    RoundTokens(scores, mask.bool(), old_logps_BT=old, sum_pi_sq_BT=sum_pi_sq,
                                sampler_logps_BT=sampler), params)
                weights = None if is_mode == "off" else importance_weights(
                    old, sampler, mask, is_mode, params.is_clip_max, params.is_clip_min).expand(P * G, T)
                theirs, their_returns = verl_otb(token_rewards(scores.reshape(-1), mask), mask,
                                                 np.repeat(np.arange(P), G), old, sum_pi_sq,
                                                 rollout_is_weights=weights, handle_zero_tail=zero_tail)
                worst = max(worst, float((ours - theirs).abs().max()), float((returns - their_returns).abs().max()))
                cases += 1
    print(f"OTB advantages and returns, alignlab against verl, {cases} rounds: largest difference {worst:.3g}")
    return 0 if worst <= 1e-12 else 1


if __name__ == "__main__":
    sys.exit(main())

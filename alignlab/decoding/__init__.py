"""Decoding-time alignment: each method wraps a generator (and a scorer where it needs one) and is
itself a ``Generator``, so anything that samples (evaluation, ``alignlab sample``, ``alignlab
decode``) can sample through it.

- ``best_of_n``: best-of-n and soft best-of-n, with InfAlign-style calibration;
- ``kl``: best-of-n's KL to its policy, the analytic bound and an estimate from rewards;
- ``qalign``: MCMC towards the reward-tilted model (QAlign / QUEST);
- ``search``: the token-level search loop the next two share (candidates, values, rollouts);
- ``guided``: reward-guided token-level search (ARGS), with DeAL-style lookahead;
- ``transfer_q``: Transfer Q*, a base model guided by an aligned model's implicit reward;
- ``urial``: in-context alignment of a base model with a fixed prefix;
- ``nudging``: a small aligned model writes the words a base model is unsure of;
- ``spec``: a method and its settings as `alignlab decode` takes them, and its construction.
"""

from alignlab.decoding.best_of_n import BestOfN, BestOfNReport
from alignlab.decoding.kl import KLEstimate, estimate, kl_bound, kl_of_rewards

__all__ = ["BestOfN", "BestOfNReport", "KLEstimate", "estimate", "kl_bound", "kl_of_rewards"]

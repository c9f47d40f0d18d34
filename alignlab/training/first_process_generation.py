"""One set of Ray generation workers for a run of several processes, driven by the first.

With ``generation_backend: ray`` under ``torchrun`` (DDP or FSDP), only the first process starts
the workers (``make_generator(..., "ray")``); every process gets a ``FirstProcessGenerator``.
A round goes:
1. every process renders its own share of the round's prompts and hands the token ids, with the
   index of its first prompt (``start``), to the first process (one gather, in rank order);
2. the first process asks the workers for all of them in one call when the shares follow one
   another (each process's share of an online round does: process r's starts where r-1's ends),
   so the workers split the whole round; otherwise one call per share;
3. each process gets back the samples of its own prompts (one scatter).
The workers number every prompt by its index in the round, so a process's samples are those it
would have drawn itself, and those of a single process sampling the whole round.

Weights: ``update_weights`` pushes the first process's policy. Each process holds the whole
policy at that point: DDP keeps a whole copy, and under FSDP a round runs with every unit gathered
(``source.GatheredSource``); the other processes push nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from alignlab.generation.base import Generator, Sample, SamplingParams
from alignlab.generation.prompts import RendersPrompts
from alignlab.training.distributed import Dist


class FirstProcessGenerator(RendersPrompts):
    """Every process's ``generate`` answered by ``inner``, which only the first process holds (None
    on the others); a collective: every process calls it the same number of times."""

    numbers_prompts = True

    def __init__(self, inner: Generator | None, dist: Dist, tokenizer):
        if dist.is_main and not getattr(inner, "numbers_prompts", False):
            raise ValueError("the first process's generator must number prompts (draw per prompt index)")
        self.inner, self.dist, self.tok = inner, dist, tokenizer

    def update_weights(self, model) -> None:
        if self.inner is not None:
            self.inner.update_weights(model)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()

    def generate_ids(self, contexts: Sequence[tuple[int, ...]], n: int, params: SamplingParams,
                     start: int = 0) -> list[list[Sample]]:
        requests = self.dist.gather((start, [tuple(c) for c in contexts]))
        answers = self._answer(requests, n, params) if self.dist.is_main else None
        return self.dist.scatter(answers)

    def _answer(self, requests: list[tuple[int, list]], n: int, params: SamplingParams) -> list[list[list[Sample]]]:
        """Each process's samples, in rank order."""
        starts = [s for s, _ in requests]
        sizes = [len(c) for _, c in requests]
        follow = all(starts[i + 1] == starts[i] + sizes[i] for i in range(len(requests) - 1))
        if not follow:
            return [self.inner.generate_ids(c, n, params, s) if c else [] for s, c in requests]
        flat = self.inner.generate_ids([c for _, cs in requests for c in cs], n, params, starts[0])
        bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
        return [flat[bounds[i]:bounds[i + 1]] for i in range(len(sizes))]

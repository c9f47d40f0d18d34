"""A testbed task's gold evaluation: the sampled evaluation (``eval/sampled.py``) on the task's
held-out prompts, scored by the task's gold reward (the scorer ``task:NAME``), with its metrics
under ``gold/``: ``gold/sampled``, ``gold/greedy``, ``gold/win_rate``, ``gold/kl``, ``gold/length``.
"""

from __future__ import annotations

from alignlab.eval.sampled import REFERENCE_SEED_OFFSET, SampledEvaluation
from alignlab.rewards import TaskReward, load_scorer
from alignlab.tasks import Task, get_task

__all__ = ["REFERENCE_SEED_OFFSET", "GoldEvaluator"]


class GoldEvaluator(SampledEvaluation):
    """``SampledEvaluation`` of ``task`` (a name, or a ``Task`` built with options of its own):
    its held-out prompts (the first ``num_prompts``; 0: all), its gold reward, its
    ``max_new_tokens``, metrics under ``gold/`` (and ``gold@NAME/`` for a ``decoding`` method)."""

    def __init__(self, task: Task | str, tokenizer, seed: int = 0, num_prompts: int = 0, temperature: float = 1.0,
                 batch_size: int = 128, rank: int = 0, world_size: int = 1, progress: bool = False,
                 decoding=None, decoding_name: str = "decoded"):
        if isinstance(task, str):
            task, scorer = get_task(task), load_scorer(f"task:{task}")
        else:
            scorer = TaskReward(task)
        prompts = task.eval_prompts()
        if num_prompts:
            prompts = prompts[:num_prompts]
        super().__init__(prompts, scorer, tokenizer, task.max_new_tokens, prefix="gold", seed=seed,
                         temperature=temperature, batch_size=batch_size, rank=rank, world_size=world_size,
                         progress=progress, prompts_name="held-out prompts", decoding=decoding,
                         decoding_name=decoding_name)
        self.task = task

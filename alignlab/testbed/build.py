"""Tiny testbed models: pretrained and SFT-ed here, on CPU, and cached.

A task's SFT model is built in three stages, each through the same code a real model goes
through (``save_tiny_model``, then ``alignlab.train`` with the ``sft`` method twice):

1. a randomly initialised LlamaForCausalLM with the byte-level tokenizer and chat template;
2. pretraining: language modelling on the task's plain-text corpus;
3. SFT: the task's demonstrations as prompt/completion text (loss on the completion and EOS).

Testbed data is plain text in TRL's standard format (the prompt, then the answer): the same
format as the corpus, so the little the model learns in pretraining carries over to the task.

The SFT model is deliberately under-trained, so that its samples mix good and bad answers and
alignment has something to improve. The result lives in ``<cache>/testbed/<task>-<key>/sft``,
where ``key`` hashes the whole ``ModelRecipe``; a second call with the same recipe loads it.
The cache is ``$ALIGNLAB_CACHE`` or ``~/.cache/alignlab`` unless a directory is given.
Processes that want the same entry at once (two runs, or parallel test workers) take turns on a
lock file beside it, ``<task>-<key>.lock``: one builds, the others wait and then load its result.

A recipe with no SFT steps stops after stage 2 and lives in ``<task>-<key>/pretrained``. The
task's *pretrained* model (``pretrained_recipe``) is pretrained four times longer than the SFT
model's start: it spells the task's words, so its samples (the corpus has the prompts' format, so
it answers them as they are) are cleaner than the SFT model's, and its states carry what a reward
model needs. It is the testbed's reward-model backbone, as a pretrained LM is a real one's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from alignlab.cache import cache_root, machine_signature
from alignlab.data.write import write_rows
from alignlab.errors import UserError
from alignlab.models import TinyModelConfig, save_tiny_model
from alignlab.tasks import get_task

RECIPE_VERSION = 6  # bump when the build procedure changes, so old cache entries are not reused


@dataclass(frozen=True)
class ModelRecipe:
    """Everything that determines a testbed model (the cache key hashes all of it)."""

    task: str = "arithmetic"
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 384
    pretrain_steps: int = 600
    pretrain_batch: int = 32
    pretrain_lr: float = 3e-3
    sft_steps: int = 100
    sft_batch: int = 64
    sft_lr: float = 1e-3
    scheduler: str = "constant"  # after a short warmup; the model learns the task late, at a high rate
    doc_chars: int = 64  # pretraining documents are cut into pieces of about this many characters
    seed: int = 0
    threads: int = 1  # torch intra-op threads during the build: the bits depend on it, so it is fixed here

    def __post_init__(self) -> None:
        get_task(self.task)  # an unknown task fails here, with the list of known ones
        for name in ("pretrain_steps", "sft_steps"):
            if getattr(self, name) < 0:
                raise UserError(f"{name}: must be >= 0, got {getattr(self, name)}")
        for name in ("pretrain_batch", "sft_batch", "threads"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}: must be >= 1, got {getattr(self, name)}")
        TinyModelConfig(self.hidden_size, self.num_layers, self.num_heads, self.intermediate_size)

    @property
    def stage(self) -> str:
        """``sft``, or ``pretrained`` for a recipe without SFT steps (its build stops after pretraining)."""
        return "sft" if self.sft_steps else "pretrained"

    def key(self) -> str:
        """Hash of the recipe and of what else shapes the model: the task's options, the build
        procedure's version, the library versions and the machine it trains on (its instruction
        set and vendor, ``machine_signature``: hundreds of steps from scratch turn a difference in
        the last bits into a different model)."""
        import torch
        import transformers

        import alignlab

        blob = json.dumps({
            "version": RECIPE_VERSION, **dataclasses.asdict(self), "task_options": get_task(self.task).options(),
            "alignlab": alignlab.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "machine": machine_signature(self.threads),
        }, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def identity(self) -> dict:
        """What a model built from this recipe is, whatever machine built it: the recipe, the build
        procedure's version and the task's options (a shipped model stands for its identity)."""
        return {"recipe": dataclasses.asdict(self), "recipe_version": RECIPE_VERSION,
                "task_options": get_task(self.task).options()}


# Per-task budgets: enough for a model whose samples are right some of the time, not all.
DEFAULT_RECIPES: dict[str, ModelRecipe] = {
    "arithmetic": ModelRecipe("arithmetic"),
    "sentiment": ModelRecipe("sentiment", pretrain_steps=150, sft_steps=100, sft_batch=32),
    "constraints": ModelRecipe("constraints", pretrain_steps=200, sft_steps=150, sft_batch=32),
}


PRETRAIN_ONLY_STEPS = 600
STAGES = ("sft", "pretrained")


def default_recipe(task: str, **overrides) -> ModelRecipe:
    base = DEFAULT_RECIPES.get(task) or ModelRecipe(task)
    return dataclasses.replace(base, **overrides)


def pretrained_recipe(task: str, **overrides) -> ModelRecipe:
    """The task's pretrained-only model: the SFT recipe's architecture, 600 pretraining steps, no SFT.
    (On sentiment, a Bradley-Terry reward model on it, its head on the mean state, reaches about 0.92
    held-out accuracy on 4096 prompts' pairs; on the SFT model's start, 150 steps, about 0.7.)"""
    return default_recipe(task, **{"pretrain_steps": PRETRAIN_ONLY_STEPS, "sft_steps": 0, **overrides})


def stage_recipe(task: str, stage: str) -> ModelRecipe:
    """The recipe of a task's testbed model by stage name: ``sft`` or ``pretrained``."""
    if stage not in STAGES:
        raise UserError(f"testbed model stage must be one of {', '.join(STAGES)}, got '{stage}'")
    return default_recipe(task) if stage == "sft" else pretrained_recipe(task)


def short_documents(docs: list[str], chars: int) -> list[str]:
    """Regroup each document's lines into pieces of at most ``chars`` characters (a longer line
    stays whole): short sequences train faster per example on a CPU."""
    out = []
    for doc in docs:
        piece = ""
        for line in doc.split("\n"):
            if piece and len(piece) + 1 + len(line) > chars:
                out.append(piece)
                piece = ""
            piece = f"{piece}\n{line}" if piece else line
        if piece:
            out.append(piece)
    return out


def _stage(model: str, data: Path, out: Path, steps: int, batch: int, lr: float, recipe: ModelRecipe,
           progress: bool) -> str:
    from alignlab import train

    summary = train({
        "method": "sft", "model": model, "data": str(data), "output_dir": str(out), "max_steps": steps,
        "batch_size": batch, "lr": lr, "scheduler": recipe.scheduler, "warmup_steps": min(50, steps // 10),
        "weight_decay": 0.0, "adam_betas": [0.9, 0.98], "max_length": 512, "seed": recipe.seed,
        "progress": progress, "keep_checkpoints": 1,
    })
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # only the model is kept
    return summary.model_dir


def log_to_stderr(msg: str) -> None:
    """The testbed's progress messages: one line each on stderr, flushed at once."""
    print(msg, file=sys.stderr, flush=True)


@contextlib.contextmanager
def intra_op_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous number."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def model_cache_path(recipe: ModelRecipe, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the recipe's model is cached: ``.../sft``, or ``.../pretrained`` when it has no SFT steps."""
    return cache_root(cache_dir) / "testbed" / f"{recipe.task}-{recipe.key()}" / recipe.stage


@contextlib.contextmanager
def _exclusive(lock_file: Path, log: Callable[[str], None], what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (created if missing, never deleted: removing it
    would let a late process lock a different file). Without ``fcntl`` (Windows) there is no lock;
    a concurrent build then only costs time, as its rename fails and the first entry is kept."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise UserError(f"cache lock '{lock_file}' cannot be opened: {e.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for another process that is building {what}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def build_testbed_model(recipe: ModelRecipe, cache_dir: str | os.PathLike | None = None,
                        log: Callable[[str], None] | None = None, progress: bool = False) -> Path:
    """Return the directory of the recipe's model (SFT or pretrained), building it first if it is
    not cached for this machine (the key includes ``machine_signature``).

    The check and the build happen under the entry's lock, so concurrent callers build it once.
    ``progress`` shows a bar for each training stage."""
    log = log or log_to_stderr
    final = model_cache_path(recipe, cache_dir)
    if (final / "config.json").exists():
        return final
    root = final.parent.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cache directory '{root}' cannot be created: {e.strerror}") from None
    with _exclusive(root / f"{final.parent.name}.lock", log, f"the tiny {recipe.task} model"):
        if (final / "config.json").exists():  # built by the process that held the lock before
            return final
        _build(recipe, final, root, log, progress)
    return final


def _build(recipe: ModelRecipe, final: Path, root: Path, log: Callable[[str], None], progress: bool) -> None:
    task = get_task(recipe.task)
    t0 = time.perf_counter()
    what = "SFT" if recipe.stage == "sft" else recipe.stage
    log(f"building the tiny {what} {recipe.task} model (once; cached in {final.parent})")
    with tempfile.TemporaryDirectory(dir=root, prefix=".build-") as tmp, intra_op_threads(recipe.threads):
        work = Path(tmp)
        tiny = TinyModelConfig(recipe.hidden_size, recipe.num_layers, recipe.num_heads,
                               recipe.intermediate_size, max_position_embeddings=512, seed=recipe.seed)
        model = str(save_tiny_model(work / "init", tiny))
        if recipe.pretrain_steps:
            docs = short_documents(task.corpus(recipe.pretrain_steps * recipe.pretrain_batch, recipe.seed),
                                   recipe.doc_chars)[:recipe.pretrain_steps * recipe.pretrain_batch]
            write_rows(work / "corpus.jsonl", [{"text": d} for d in docs])
            log(f"  pretraining on {len(docs)} documents ({recipe.pretrain_steps} steps)")
            model = _stage(model, work / "corpus.jsonl", work / "pretrain", recipe.pretrain_steps,
                           recipe.pretrain_batch, recipe.pretrain_lr, recipe, progress)
        if recipe.sft_steps:
            demos = task.demonstrations(recipe.sft_steps * recipe.sft_batch, recipe.seed + 1)
            write_rows(work / "sft.jsonl", [{"prompt": p, "completion": r} for p, r in demos])
            log(f"  supervised fine-tuning on {len(demos)} demonstrations ({recipe.sft_steps} steps)")
            model = _stage(model, work / "sft.jsonl", work / "sft-run", recipe.sft_steps, recipe.sft_batch,
                           recipe.sft_lr, recipe, progress)
        staged = work / "entry"
        staged.mkdir()
        shutil.copytree(model, staged / final.name)
        info = {"recipe": dataclasses.asdict(recipe), "key": recipe.key(), "version": RECIPE_VERSION,
                "task_options": task.options(), "machine": machine_signature(recipe.threads),
                "build_seconds": round(time.perf_counter() - t0, 1)}
        (staged / "recipe.json").write_text(json.dumps(info, indent=1))
        if final.parent.exists() and not (final / "config.json").exists():
            shutil.rmtree(final.parent)  # an incomplete entry (its model was deleted): replace it
        try:
            staged.rename(final.parent)
        except OSError:
            if not (final / "config.json").exists():  # not a concurrent build that finished first
                raise
    log(f"  built in {time.perf_counter() - t0:.0f} s")

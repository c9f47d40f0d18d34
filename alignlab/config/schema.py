"""The training config's schema: ``TrainConfig``, its sections, each field's help and the checks.

A run is described by a few top-level fields (method, model, data, output_dir, seed, dtype, ...)
and one section per concern, so that a new concern (online sampling, say) is a new section
rather than more fields in one flat bag:

    dataset     how the training data is read and cut to length   cfg.dataset.max_length
    optim       steps, batches, AdamW and the schedule            cfg.optim.lr
    checkpoint  resuming, overwriting, how often and how many     cfg.checkpoint.save_every
    adapter     LoRA                                              cfg.adapter.lora_r
    eval        held-out data and how often it is measured        cfg.eval.eval_every
    rollout     online methods: reward, samples, the generator    cfg.rollout.num_generations
    iterate     rounds of sampling and offline training           cfg.iterate.rounds
    tracking    TensorBoard, W&B, trackio beside metrics.jsonl    cfg.tracking.report_to

Every field name is unique across the sections and the top level, so a key is given flat
(``lr: 1e-4``, ``--lr 1e-4``) or by its section (``optim: {lr: 1e-4}``, ``--optim.lr 1e-4``), and
errors name it flat (``lr: must be > 0, got -1``). No section shares its name with a field: the
training data's path is the top-level ``data``, LoRA's on/off switch is ``lora`` in ``adapter``.
Each ``__post_init__`` rejects nonsense with a message that starts with the field's name; checks
that span sections (a reward model takes no LoRA) live in ``TrainConfig``'s. Reading YAML and
flags into these classes is ``alignlab.config.parse``'s job.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from importlib.util import find_spec
from typing import Any, NamedTuple

from alignlab.errors import ConfigError, UserError
from alignlab.losses import ParamError, UnknownLossError
from alignlab.losses import get_loss as _get_loss
from alignlab.losses.params import param


def section(cls: type, help: str) -> Any:  # noqa: A002 - 'help' as in param()
    """A field of ``TrainConfig`` that holds a section (a dataclass of related fields)."""
    return field(default_factory=cls, metadata={"help": help, "section": True})


@dataclass
class DataConfig:
    """How the training data is read and cut to length (the path itself is ``TrainConfig.data``)."""

    data_split: str | None = param(None, "split of `data` to read from a dataset directory or hub dataset "
                                         "(default 'train')")
    mix_data: str | None = param(None, "a second set of pairs for methods that mix two sets (bvpo: the "
                                       "empty-trace pairs; `data` holds the trace pairs)")
    columns: dict[str, str] = param(None, "map alignlab field names to your column names, e.g. prompt=question; "
                                          "also completions=answers[].answer (a list of objects) and "
                                          "score='0.5*helpfulness + 0.5*correctness' (a weighted sum)")
    skip_invalid: bool = param(False, "skip bad rows (counted and printed) instead of stopping at the first (for "
                                      "an online run, the prompt rows it cannot use)")
    max_length: int = param(1024, "maximum tokens of prompt + response; longer responses are cut at the end (an "
                                     "online run's prompts must each leave room for max_new_tokens within it)")
    max_prompt_length: int | None = param(None, "keep only the last this-many prompt tokens (None: no limit)")
    packing: bool = param(True, "pack batches instead of padding them: each prompt once with all its responses "
                                "after it, short examples sharing a row, all kept apart by a block attention mask "
                                "(the same numbers as one padded row per response; online runs pack a micro-batch "
                                "only where that costs the policy no more FLOPs than padded rows)")
    group_by_length: bool = param(False, "put examples of similar length in the same step, so batches pad little "
                                         "(the order of the steps stays random)")

    def __post_init__(self) -> None:
        self.columns = dict(self.columns or {})
        _check(self.max_length >= 2, "max_length", f"must be >= 2, got {self.max_length}")
        _check(self.max_prompt_length is None or 1 <= self.max_prompt_length < self.max_length,
               "max_prompt_length", f"must be between 1 and max_length-1, got {self.max_prompt_length}")


@dataclass
class OptimConfig:
    """How long and how the weights move: steps, batches, AdamW, the learning-rate schedule."""

    max_steps: int = param(0, "optimizer steps to run; 0 means run `epochs` epochs")
    epochs: float = param(1.0, "passes over the training data (used when max_steps is 0)")
    batch_size: int = param(8, "examples (pairs for preference methods) per micro-batch per process")
    grad_accum: int = param(1, "micro-batches accumulated per optimizer step")
    lr: float = param(1e-6, "peak learning rate (AdamW)")
    weight_decay: float = param(0.0, "AdamW weight decay")
    adam_betas: list[float] = param(None, "AdamW betas (default 0.9,0.999)")
    adam_eps: float = param(1e-8, "AdamW epsilon")
    scheduler: str = param("linear", "learning-rate schedule after warmup: linear, cosine or constant")
    warmup_steps: int = param(0, "linear warmup steps (overrides warmup_ratio when > 0)")
    warmup_ratio: float = param(0.0, "warmup as a fraction of all steps")
    max_grad_norm: float = param(1.0, "clip the global gradient norm to this (0 disables clipping)")
    skip_nonfinite: bool = param(False, "skip a step whose loss or gradient is not finite, or whose online reward "
                                        "failed on a sample (logged, counted as skipped_steps) instead of stopping "
                                        "the run")
    disable_dropout: bool = param(True, "turn the model's dropout off, so policy and reference log-probs are deterministic")
    gradient_checkpointing: bool = param(False, "recompute activations in the backward pass instead of keeping "
                                                "them: less memory, about a third more compute")
    fsdp: bool = param(False, "shard parameters, gradients and optimizer state over the processes (FSDP2, one unit "
                              "per decoder layer) instead of a whole copy per process; checkpoints are sharded and "
                              "resume on any number of processes (docs/scaling.md)")
    deepspeed: str | None = param(None, "hand the model and AdamW to DeepSpeed: zero2, zero3, or a DeepSpeed config file "
                               "(.json); also set by `accelerate launch` with a DeepSpeed accelerate config "
                               "(examples/accelerate/, docs/scaling.md)")

    def __post_init__(self) -> None:
        self.adam_betas = list(self.adam_betas or [0.9, 0.999])
        _check(self.max_steps >= 0, "max_steps", f"must be >= 0, got {self.max_steps}")
        _check(self.epochs > 0, "epochs", f"must be > 0, got {self.epochs}")
        _check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.grad_accum >= 1, "grad_accum", f"must be >= 1, got {self.grad_accum}")
        _check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        _check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        _check(self.adam_eps > 0, "adam_eps", f"must be > 0, got {self.adam_eps}")
        _check(len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas), "adam_betas",
               f"must be two numbers in [0, 1), got {self.adam_betas}")
        _check(self.scheduler in ("linear", "cosine", "constant"), "scheduler",
               f"must be linear, cosine or constant, got '{self.scheduler}'")
        _check(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        _check(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        _check(self.max_grad_norm >= 0, "max_grad_norm", f"must be >= 0, got {self.max_grad_norm}")
        _check(not (self.fsdp and self.deepspeed), "fsdp", "DeepSpeed ZeRO shards the model already; use fsdp or "
               "deepspeed, not both")
        _check(self.deepspeed in (None, "zero2", "zero3") or str(self.deepspeed).endswith(".json"), "deepspeed",
               f"must be zero2, zero3 or a DeepSpeed config file (.json), got '{self.deepspeed}'")
        for name in ("lr", "epochs", "weight_decay", "adam_eps", "warmup_ratio", "max_grad_norm"):
            _check(math.isfinite(getattr(self, name)), name, f"must be a finite number, got {getattr(self, name)}")


@dataclass
class CheckpointConfig:
    """Resuming, starting afresh, and how often and how many checkpoints are kept."""

    overwrite: bool = param(False, "start afresh in an output directory that holds a run (deletes its checkpoints); "
                                   "ignored with resume")
    resume: bool = param(False, "continue from the newest complete checkpoint in output_dir")
    save_every: int = param(0, "write a checkpoint every N optimizer steps (0: only at the end)")
    keep_checkpoints: int = param(2, "how many of the newest checkpoints to keep (0 keeps all)")

    def __post_init__(self) -> None:
        for name in ("save_every", "keep_checkpoints"):
            _check(getattr(self, name) >= 0, name, f"must be >= 0, got {getattr(self, name)}")


@dataclass
class AdapterConfig:
    """A LoRA adapter instead of training the whole model."""

    lora: bool = param(False, "train a LoRA adapter; the reference is the base with the adapter disabled")
    lora_r: int = param(16, "LoRA rank")
    lora_alpha: int = param(32, "LoRA alpha")
    lora_dropout: float = param(0.0, "LoRA dropout")
    lora_target_modules: list[str] = param(None, "modules to adapt (default q_proj,k_proj,v_proj,o_proj)")
    merge_lora: bool = param(False, "also save merged full weights under <output_dir>/model/merged")

    def __post_init__(self) -> None:
        self.lora_target_modules = list(self.lora_target_modules or ["q_proj", "k_proj", "v_proj", "o_proj"])
        _check(self.lora_r >= 1, "lora_r", f"must be >= 1, got {self.lora_r}")
        _check(0 <= self.lora_dropout < 1, "lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")


@dataclass
class EvalConfig:
    """Held-out data, the testbed task's gold reward, and how often both are measured."""

    eval_data: str | None = param(None, "held-out data in the same formats (instead of eval_fraction)")
    eval_data_split: str | None = param(None, "split of `eval_data` to read, e.g. 'test' (default 'train')")
    eval_fraction: float = param(0.0, "fraction of the training data held out for evaluation, whole prompts (0 = none)")
    eval_every: int = param(0, "evaluate every N optimizer steps (0: only at the end)")
    eval_at_start: bool = param(False, "also evaluate before the first step (a baseline row, step 0, in metrics.jsonl)")
    eval_batch_size: int | None = param(None, "micro-batch size for evaluation (default: batch_size)")
    task: str | None = param(None, "testbed task (arithmetic, chainsum, sentiment, constraints): at every evaluation "
                                   "the model answers its held-out prompts, logged as gold reward, win rate and KL "
                                   "against the starting model, and length")
    task_eval_prompts: int = param(0, "how many of the task's held-out prompts to answer (0: all)")
    task_eval_decoding: str | None = param(None, "with task: also answer its held-out prompts through a decoding "
                                                 "method on top of the model, as `alignlab decode` takes it (e.g. "
                                                 "'best-of-n --n 4 --scorer task:arithmetic:proxy'); logged under "
                                                 "gold@METHOD/")

    def __post_init__(self) -> None:
        _check(math.isfinite(self.eval_fraction), "eval_fraction", f"must be a finite number, got {self.eval_fraction}")
        _check(0.0 <= self.eval_fraction < 1.0, "eval_fraction", f"must be in [0, 1), got {self.eval_fraction}")
        _check(not (self.eval_data and self.eval_fraction > 0), "eval_fraction",
               "give either eval_data or eval_fraction, not both")
        _check(self.eval_every >= 0, "eval_every", f"must be >= 0, got {self.eval_every}")
        _check(self.eval_batch_size is None or self.eval_batch_size >= 1, "eval_batch_size", "must be >= 1")
        _check(self.task_eval_prompts >= 0, "task_eval_prompts", f"must be >= 0, got {self.task_eval_prompts}")
        if self.task is not None:
            from alignlab.tasks import task_names

            _check(self.task in task_names(), "task", f"must be one of {', '.join(task_names())}, got '{self.task}'")
        if self.task_eval_decoding is not None:
            _check(self.task is not None, "task_eval_decoding", "evaluates on a task's held-out prompts: give task too")
            from alignlab.decoding.spec import parse_method

            try:
                parse_method(self.task_eval_decoding)
            except UserError as e:
                raise ConfigError(str(e)) from None


@dataclass
class RolloutConfig:
    """Online methods: how each round samples, scores and reuses its completions."""

    reward: list[str] | None = param(None, "the reward: one scorer spec or several (task:NAME[:gold|proxy], rm:DIR, "
                                           "bleu:FILE, fn:MODULE:FUNCTION, judge:DIR, openai:URL,model=NAME, "
                                           "length[:...], overlong:cache=N[,...]); their weighted sum is the reward, "
                                           "each one's mean is logged. Left out, null or []: a run on task:NAME "
                                           "scores with the task's gold reward (a recipe's reward where it has one)")
    reward_weights: list[float] | None = param(None, "one weight per reward (default 1 each)")
    num_generations: int = param(8, "G: completions sampled per prompt each round")
    max_new_tokens: int | None = param(None, "most tokens per completion (default: the task's when data is "
                                                      "task:NAME, else 256)")
    temperature: float = param(1.0, "sampling temperature of the rollouts")
    top_p: float = param(1.0, "nucleus sampling of the rollouts (1: off)")
    top_k: int = param(0, "top-k sampling of the rollouts (0: off; 1 makes every sample of a prompt the same, "
                          "refused where the method then learns nothing from the reward)")
    generation_backend: str = param("native", "generation backend: native, hf, vllm or ray (workers as Ray actors, "
                                              "ray_workers of them)")
    generation_batch_size: int | None = param(None, "sequences the generator decodes at once (per Ray worker); none: "
                                                    "native takes a step's samples all at once when their cache fits "
                                                    "in a quarter of the free memory (fewer otherwise), hf 128, vllm "
                                                    "its own max_num_seqs")
    ray_workers: int = param(2, "generation workers (Ray actors) when generation_backend is ray")
    ray_address: str | None = param(None, "the Ray cluster the workers run on (host:port, ray://host:port or auto); "
                                          "default: a local cluster with ray_workers CPUs")
    ray_backend: str = param("native", "what each Ray worker samples with: native (CPU) or vllm (a GPU each, "
                                       "weights over NCCL; untested)")
    updates_per_rollout: int = param(1, "μ: optimizer steps over each round's completions (its log-probs at the "
                                        "start of the round are the old policy's)")
    dynamic_sampling: bool = param(False, "DAPO's dynamic sampling: draw more batches of prompts until the round "
                                          "is filled with groups whose rewards differ (methods whose advantage "
                                          "compares a prompt's samples: the grpo family, rloo, opo, gpg and "
                                          "grpo_passk, "
                                          "which also needs the best reward unique)")
    max_sampling_batches: int = param(4, "with dynamic_sampling, at most this many batches of prompts per round; a "
                                         "round still short is completed with groups whose advantages are all 0")
    prompt_column: str | None = param(None, "the column holding the prompt, when `data` is a file")
    skip_zero_advantage: bool = param(True, "leave completions whose advantages are all 0 out of the forward and "
                                            "backward passes where their loss is exactly 0 (grpo, dapo, dr_grpo, "
                                            "gspo, luspo, cispo, sapo, vespo, gmpo, rloo, remax, opo, gpg and "
                                            "grpo_passk "
                                            "with beta 0, no entropy bonus and a surrogate other than kl_cov and dro): the same "
                                            "update, faster; they still "
                                            "count in the normaliser, and per-example "
                                            "metrics (entropy, clip) are then over the completions trained on")

    def __post_init__(self) -> None:
        self.reward = [self.reward] if isinstance(self.reward, str) else list(self.reward or [])
        _check(all(spec.strip() for spec in self.reward), "reward",
               f"an empty scorer spec in {self.reward!r}; give each one (e.g. task:arithmetic), or leave reward out "
               "where data is task:NAME to use the task's gold reward")
        self.reward_weights = None if self.reward_weights is None else [float(w) for w in self.reward_weights]
        _check(self.num_generations >= 1, "num_generations", f"must be >= 1, got {self.num_generations}")
        _check(self.max_new_tokens is None or self.max_new_tokens >= 1, "max_new_tokens",
               f"must be >= 1, got {self.max_new_tokens}")
        _check(math.isfinite(self.temperature) and self.temperature > 0, "temperature",
               f"must be a finite number > 0 for online sampling, got {self.temperature}")
        _check(0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p}")
        _check(self.top_k >= 0, "top_k", f"must be >= 0, got {self.top_k}")
        _check(self.generation_backend in ("native", "hf", "vllm", "ray"), "generation_backend",
               f"must be native, hf, vllm or ray, got '{self.generation_backend}'")
        _check(self.ray_workers >= 1, "ray_workers", f"must be >= 1, got {self.ray_workers}")
        _check(self.ray_backend in ("native", "vllm"), "ray_backend",
               f"must be native or vllm, got '{self.ray_backend}' (hf draws depend on the batch, so its samples "
               "would change with the split over workers)")
        _check(self.generation_backend != "ray" or find_spec("ray") is not None, "generation_backend",
               "ray needs Ray, which is not installed; install the extra: pip install 'alignlab[ray]' (from a "
               "checkout: pip install -e '.[ray]')")
        _check(self.ray_address is None or _ray_address(str(self.ray_address)), "ray_address",
               f"must be host:port, ray://host:port or auto, got '{self.ray_address}'")
        _check(self.generation_batch_size is None or self.generation_batch_size >= 1, "generation_batch_size",
               f"must be >= 1, got {self.generation_batch_size}")
        _check(self.updates_per_rollout >= 1, "updates_per_rollout", f"must be >= 1, got {self.updates_per_rollout}")
        _check(self.max_sampling_batches >= 1, "max_sampling_batches", f"must be >= 1, got {self.max_sampling_batches}")
        _check(self.reward_weights is None or bool(self.reward), "reward_weights",
               f"weigh the scorer specs of reward, and reward is not given (got weights {self.reward_weights}); give "
               "reward with one weight per spec, or leave reward_weights out")
        _check(self.reward_weights is None or len(self.reward_weights) == len(self.reward), "reward_weights",
               f"give one weight per reward ({len(self.reward)}), got {self.reward_weights}")
        _check(self.reward_weights is None or any(w != 0 for w in self.reward_weights), "reward_weights",
               f"every weight is 0 ({self.reward_weights}), so every sample's reward is 0 and nothing is learned from "
               "it; give at least one weight other than 0")


def _ray_address(address: str) -> bool:
    """``host:port``, ``ray://host:port`` or ``auto``."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    return address == "auto" or (bool(host) and port.isdigit())


# what rollout top_k 1 does, for the checks that refuse it
_TOP_K_1 = ("keeps only the most likely token at each step, so every sample of a prompt is one and the same "
            "completion, with one reward")

ROUND_RECIPES = ("raft", "iterative-dpo", "self-rewarding", "osp", "spa")
ROUND_SHAPES = ("sft", "pair", "unpaired", "ranked")
ROUND_REFERENCES = ("fixed", "previous")


@dataclass
class IterateConfig:
    """Rounds: sample from the current policy, score, turn the scores into data, train, repeat
    (``alignlab/rounds.py``). The samples per prompt are ``num_generations``, drawn with the
    rollout section's sampling settings; the scorer is ``reward``."""

    rounds: int = param(0, "rounds of sample -> score -> convert -> train, each from the previous round's policy "
                           "(0: one run on the data as it is)")
    recipe: str | None = param(None, "a named recipe: raft (SFT on the best samples), iterative-dpo (DPO on "
                                     "best-worst pairs) or self-rewarding (DPO on pairs the policy judges itself, "
                                     "reward judge:{policy}, reference the previous round's policy) or osp "
                                     "(soft-preference on pairs weighted by the scorer's P(chosen better)) or spa "
                                     "(pairs labelled by the policy's implicit reward, the least confident smoothed)")
    round_prompts: int | None = param(None, "prompts sampled each round, new ones each round (default: a prompt "
                                            "file's prompts split evenly over the rounds; a task's: 256)")
    pair_rule: str = param("best_worst", "pair methods: which pairs a prompt's scored samples make (best_worst, "
                                         "all_pairs, random, margin)")
    pair_margin: float = param(0.0, "pair methods: the least score difference of a pair (rules random, margin)")
    keep_top: int = param(1, "SFT methods: the best samples kept per prompt")
    min_score: float | None = param(None, "SFT methods: keep a sample only if its score is at least this")
    round_reference: str = param("fixed", "the reference of every round: fixed (the starting model) or previous "
                                          "(the previous round's policy)")
    refine_fraction: float = param(0.1, "spa: the share of each round's pairs, least confident first, whose labels "
                                        "are smoothed")
    refine_smoothing: float = param(0.1, "spa: the label smoothing of those pairs (their strength is 1 minus this)")

    def __post_init__(self) -> None:
        _check(self.rounds >= 0, "rounds", f"must be >= 0, got {self.rounds}")
        _check(self.recipe is None or self.recipe in ROUND_RECIPES, "recipe",
               f"must be one of {', '.join(ROUND_RECIPES)}, got '{self.recipe}'")
        _check(self.round_prompts is None or self.round_prompts >= 1, "round_prompts",
               f"must be >= 1, got {self.round_prompts}")
        _check(self.pair_rule in ("best_worst", "all_pairs", "random", "margin"), "pair_rule",
               f"must be best_worst, all_pairs, random or margin, got '{self.pair_rule}'")
        _check(math.isfinite(self.pair_margin) and self.pair_margin >= 0, "pair_margin",
               f"must be >= 0, got {self.pair_margin}")
        _check(self.keep_top >= 1, "keep_top", f"must be >= 1, got {self.keep_top}")
        _check(self.min_score is None or math.isfinite(self.min_score), "min_score",
               f"must be a finite number, got {self.min_score}")
        _check(self.round_reference in ROUND_REFERENCES, "round_reference",
               f"must be fixed or previous, got '{self.round_reference}'")
        for name in ("refine_fraction", "refine_smoothing"):
            value = getattr(self, name)
            _check(math.isfinite(value) and 0 <= value <= (1 if name == "refine_fraction" else 0.5), name,
                   f"must be in [0, {1 if name == 'refine_fraction' else 0.5}], got {value}")


@dataclass
class TrackingConfig:
    """Where the metrics go besides ``metrics.jsonl``: TensorBoard, Weights & Biases, trackio
    (``alignlab/training/sinks.py``); ``report_to`` and the names as TRL has them."""

    report_to: list[str] | None = param(None, "also log the metrics to tensorboard, wandb and/or trackio (a list; all: "
                                       "every one installed; none: only metrics.jsonl); each needs its extra, "
                                       "e.g. pip install 'alignlab[wandb]'")
    logging_dir: str | None = param(None, "TensorBoard's folder (default OUTPUT_DIR/tensorboard)")
    run_name: str | None = param(None, "the run's name in W&B and trackio (default: the name of output_dir)")
    run_group: str | None = param(None, "the W&B and trackio group of the run (default: run_name, so a resumed "
                                        "run's parts stay together; rounds: one group for all rounds)")
    project: str | None = param(None, "the W&B and trackio project (default $WANDB_PROJECT for W&B, else alignlab)")

    def __post_init__(self) -> None:
        from alignlab.training.sinks import resolve_report_to

        self.report_to = resolve_report_to(self.report_to)
        for name in ("logging_dir", "run_name", "run_group", "project"):
            _check(getattr(self, name) != "", name, "must not be empty (leave it out for the default)")


# The fields that name what a run reads: a local path (file or folder), or a hub name; data may
# also be a task's prompts (``task:NAME``). A relative path is relative to where the run starts.
SOURCE_KEYS = ("model", "reference_model", "data", "mix_data", "eval_data")


@dataclass
class TrainConfig:
    """Everything a training run needs: what to train on what, then one section per concern.
    Method hyperparameters live in ``method_params`` (a dataclass of the method's own)."""

    method: str = param("dpo", "training method (see `alignlab methods`): sft, dpo, ...")
    model: str = param("", "policy to start from: a local directory or a hub name")
    reference_model: str | None = param(None, "the reference: a local directory or hub name (default: the policy's "
                                              "starting weights; with LoRA, the base with the adapter disabled)")
    data: str = param("", "training data: .jsonl/.json/.parquet/.csv file, dataset directory or hub name")
    output_dir: str = param("runs/alignlab", "where checkpoints, metrics.jsonl and the final model go")
    seed: int = param(0, "seed of the run's one random generator (data order, initialisation)")
    dtype: str = param("fp32", "fp32; bf16 (mixed precision: fp32 master weights and optimizer, bf16 compute, "
                              "model saved in bf16); or fp64 (for numerical checks)")
    trust_remote_code: bool = param(False, "allow model code from the model directory or hub to run")
    progress: bool = param(True, "show a progress bar")
    log_every: int = param(1, "write metrics every N optimizer steps")
    cache_dir: str | None = param(None, "where reference log-probs and reference samples are cached "
                                        "(default $ALIGNLAB_CACHE or ~/.cache/alignlab)")
    cache: bool = param(True, "reuse cached reference log-probs and samples (false: compute them afresh, "
                              "and write nothing)")
    ref_sync_steps: int = param(0, "every this many optimizer steps, move the reference toward the policy: "
                                   "ref <- (1 - ref_sync_alpha) * ref + ref_sync_alpha * policy (TR-DPO's soft "
                                   "update, TRL's sync_ref_model; offline methods then compute the reference's "
                                   "log-probs each batch; 0: the reference stays the starting model)")
    ref_sync_alpha: float = param(0.6, "with ref_sync_steps, the policy's share of each update of the reference "
                                       "(1: the reference becomes the policy)")
    dataset: DataConfig = section(DataConfig, "how the training data is read and cut to length: split, columns, "
                                              "bad rows, lengths, packing")
    optim: OptimConfig = section(OptimConfig, "how long and how the weights move: steps, batches, AdamW, the "
                                              "learning-rate schedule, clipping")
    checkpoint: CheckpointConfig = section(CheckpointConfig, "resuming, starting afresh, and how often and how "
                                                             "many checkpoints are kept")
    adapter: AdapterConfig = section(AdapterConfig, "a LoRA adapter instead of the whole model")
    eval: EvalConfig = section(EvalConfig, "held-out data, the testbed task's gold reward, and how often both "
                                           "are measured")
    rollout: RolloutConfig = section(RolloutConfig, "online methods: the reward, samples per prompt, sampling, "
                                                    "the generator, updates per round")
    iterate: IterateConfig = section(IterateConfig, "rounds of sampling, scoring and offline training from the "
                                                    "policy's own samples (RAFT, iterative DPO)")
    tracking: TrackingConfig = section(TrackingConfig, "where the metrics go besides metrics.jsonl: TensorBoard, "
                                                       "Weights & Biases, trackio")
    method_params: Any = field(default=None, metadata={"help": "hyperparameters of the method", "internal": True})

    def __post_init__(self) -> None:
        for s in sections():
            value = getattr(self, s.name)
            if isinstance(value, dict):  # from Python: TrainConfig(optim={"lr": 1e-4})
                setattr(self, s.name, _instantiate(s.cls, value, f"section '{s.name}'"))
        spec = get_loss(self.method)
        if self.method_params is None:
            self.method_params = spec.params()
        elif isinstance(self.method_params, dict):
            self.method_params = _instantiate(spec.params, self.method_params, f"method '{self.method}'")
        _check(self.model != "", "model", "is required (a local directory or a hub name)")
        _check(self.data != "", "data", "is required (a file, dataset directory or hub name)")
        _check(self.log_every >= 1, "log_every", f"must be >= 1, got {self.log_every}")
        # torch's and the samplers' streams take seeds in [0, 2**63)
        _check(0 <= self.seed < 2**63, "seed", f"must be in [0, 2**63), got {self.seed}")
        _check(self.dtype in ("fp32", "bf16", "fp64"), "dtype", f"must be fp32, bf16 or fp64, got '{self.dtype}'")
        mix_data = self.dataset.mix_data
        _check(mix_data is None or "group" in spec.needs, "mix_data",
               f"method '{self.method}' trains on one set of data; mix_data is for methods that mix two (bvpo)")
        _check(mix_data is not None or "group" not in spec.needs, "mix_data",
               f"method '{self.method}' needs a second set of pairs in mix_data")
        from alignlab.losses.online import group_baseline

        # what makes the method's advantage compare a prompt's samples (None: nothing does)
        why = group_baseline(spec, self.method_params) if spec.shape == "online" else None
        _check(not self.rollout.dynamic_sampling or (why is not None and spec.advantages is not None),
               "dynamic_sampling", f"keeps the groups whose rewards differ, for methods whose advantage compares a "
               f"prompt's samples (the grpo family, rloo, opo, gpg, grpo_passk); method '{self.method}' has no such "
               "advantage")
        if self.rollout.num_generations < 2:
            _check(why is None, "num_generations",
                   f"method '{self.method}' compares each prompt's samples with each other ({why}); with "
                   f"{self.rollout.num_generations} sample per prompt the reward adds nothing to any advantage, so "
                   "nothing is learned from it: "
                   "set num_generations to 2 or more")
        if spec.shape == "online":
            self._check_online_data()
            self._check_tied_samples(spec)
        rounds = self.iterate.rounds > 0
        _check(not self.rollout.reward or spec.shape == "online" or rounds, "reward",
               f"method '{self.method}' trains on fixed data; a reward is for online methods (grpo, rloo, ...) "
               "and for rounds (rounds: N)")
        _check(not rounds or spec.shape in ROUND_SHAPES, "rounds",
               f"rounds train an offline method on their samples (data {', '.join(ROUND_SHAPES)}); method "
               f"'{self.method}' trains on {spec.shape} data")
        _check(self.iterate.recipe is None or rounds, "recipe", "a recipe runs rounds; give rounds: N (N >= 1)")
        _check(not rounds or spec.shape == "sft" or self.rollout.num_generations >= 2, "num_generations",
               f"rounds make {spec.shape} data for method '{self.method}' by comparing each prompt's samples; with "
               f"{self.rollout.num_generations} sample per prompt no prompt makes any: set num_generations to 2 or more")
        _check(not rounds or spec.shape == "sft" or self.rollout.top_k != 1, "top_k",
               f"1 {_TOP_K_1}, and rounds make {spec.shape} data for method '{self.method}' from samples that score "
               "differently: no prompt makes any; set top_k to 0 (off) or 2 or more")
        _check(not rounds or self.rollout.generation_backend != "ray", "generation_backend",
               "ray samples online methods' rounds (grpo, rloo, ...); rounds sample with native, hf or vllm")
        _check(self.rollout.generation_backend != "ray" or spec.shape == "online" or rounds, "generation_backend",
               f"ray samples the rounds of online methods (grpo, rloo, ...); method '{self.method}' trains on fixed "
               "data and samples nothing: leave generation_backend unset")
        _check(not rounds or "group" not in spec.needs, "rounds",
               f"method '{self.method}' mixes two sets of pairs; rounds make one")
        if self.iterate.recipe in ("osp", "spa"):
            _check("strength" in spec.needs, "recipe", f"{self.iterate.recipe} trains a method that weighs pairs by a preference "
                                                       f"strength (soft-preference); method '{self.method}' does not")
        if self.iterate.recipe == "raft":
            _check(spec.shape == "sft", "recipe", f"raft fine-tunes on the best samples with an SFT method; method "
                                                  f"'{self.method}' trains on {spec.shape} data")
        if self.iterate.recipe in ("iterative-dpo", "self-rewarding"):
            _check(spec.shape == "pair", "recipe", f"{self.iterate.recipe} trains a pair method (dpo, ipo, ...); "
                                                   f"method '{self.method}' trains on {spec.shape} data")
        if rounds:
            self._check_round_options(spec)
        _check(not rounds or not self.adapter.lora, "lora",
               "rounds start each round from the previous round's whole model; train them without LoRA")
        _check(self.iterate.recipe != "spa" or self.reference_model is not None, "reference_model",
               "spa labels pairs by the policy's implicit reward against a reference: give the model it was "
               "trained from (its SFT model), or every reward is 0")
        _check(self.reference_model is None or not rounds or self.iterate.round_reference == "fixed",
               "round_reference", "previous makes each round's starting policy the reference; a reference_model "
               "fixes it: give one or the other")
        _check(self.ref_sync_steps >= 0, "ref_sync_steps", f"must be >= 0, got {self.ref_sync_steps}")
        _check(0 < self.ref_sync_alpha <= 1, "ref_sync_alpha", f"must be in (0, 1], got {self.ref_sync_alpha}")
        _check(self.ref_sync_steps or self.ref_sync_alpha == TrainConfig.__dataclass_fields__["ref_sync_alpha"].default,
               "ref_sync_alpha", "moves the reference only every ref_sync_steps steps: give ref_sync_steps too "
               "(0, the default, keeps the reference fixed)")
        if self.ref_sync_steps:
            self._check_ref_sync(spec)
        _check(self.reference_model is None or not self.adapter.lora, "reference_model",
               "with LoRA the reference is the base model with the adapter disabled; give no reference_model")
        _check(self.reference_model is None or spec.model == "policy", "reference_model",
               "a reward model has no reference")
        if spec.model == "reward":
            _check(not self.adapter.lora, "lora", "reward models train the whole backbone and head; LoRA is for policies")
            _check(self.eval.task is None, "task", "a reward model does not answer prompts; measure it with alignlab eval rm")

    def _check_round_options(self, spec) -> None:
        """The options of rounds that the method's data would ignore, refused when given (set to
        other than their defaults): SFT's keep_top and min_score, pairs' pair_rule and pair_margin
        (the margin under rules random and margin only), spa's refine_fraction and refine_smoothing."""
        it = self.iterate
        defaults = IterateConfig.__dataclass_fields__

        def given(name: str) -> bool:
            return getattr(it, name) != defaults[name].default

        for name in ("keep_top", "min_score"):
            _check(spec.shape == "sft" or not given(name), name,
                   f"applies to the rounds of SFT methods (recipe raft); method '{self.method}' trains on "
                   f"{spec.shape} data: leave it out")
        for name in ("pair_rule", "pair_margin"):
            _check(spec.shape in ("pair", "unpaired") or not given(name), name,
                   f"applies to the rounds of pair and unpaired methods; method '{self.method}' trains on "
                   f"{spec.shape} data: leave it out")
        _check(not given("pair_margin") or it.pair_rule in ("random", "margin"), "pair_margin",
               f"applies to pair_rule random or margin, not {it.pair_rule}")
        for name in ("refine_fraction", "refine_smoothing"):
            _check(it.recipe == "spa" or not given(name), name, "applies to the spa recipe: leave it out")

    def _check_online_data(self) -> None:
        """The options of fixed training data that an online run, which reads only prompts, would
        otherwise drop without a word."""
        measure = "measure it on a testbed task's held-out prompts with task (and eval_every)"
        _check(self.eval.eval_fraction == 0, "eval_fraction",
               f"an online method measures no held-out loss, so no prompts are held out; {measure}")
        _check(self.eval.eval_data is None, "eval_data",
               f"an online method measures no held-out loss, so no held-out data is read; {measure}")
        _check(not self.dataset.columns, "columns",
               "an online method reads only the prompts of data; name their column with prompt_column")
        _check(not self.dataset.group_by_length, "group_by_length",
               "an online method draws its prompts in an order of its own and samples their answers, so there "
               "are no lengths to group by; leave it unset")
        _check(self.dataset.max_prompt_length is None, "max_prompt_length",
               "an online method does not cut its prompts (one that leaves no room for max_new_tokens in the "
               "model's context is a bad row); leave it unset")

    def _check_tied_samples(self, spec) -> None:
        """Sampling that makes every sample of a prompt the same completion (top_k 1; temperature 0
        is refused by the rollout section) leaves a method whose advantage compares a prompt's
        samples, or compares them with the greedy answer, nothing to learn from the reward
        (``learns_nothing_from_tied_samples`` says which methods and why)."""
        from alignlab.losses.online import learns_nothing_from_tied_samples

        if self.rollout.top_k != 1:
            return
        why = learns_nothing_from_tied_samples(spec, self.method_params, self.rollout.num_generations)
        _check(why is None, "top_k", f"1 {_TOP_K_1}, and method '{self.method}' learns nothing from the reward: "
                                     f"{why}; set top_k to 0 (off) or 2 or more")

    def _check_ref_sync(self, spec) -> None:
        """A synced reference is a model of its own that the method runs while training (an online
        method's KL term each round, an offline method's reference log-probs each batch)."""
        from alignlab.losses.online import needs_reference

        if spec.shape == "online":
            _check(needs_reference(self.method_params), "ref_sync_steps",
                   f"method '{self.method}' runs no reference with these settings (no KL term: beta and kl_coef "
                   "are 0); set one, or leave ref_sync_steps at 0")
        else:
            _check(spec.model == "policy" and spec.needs_reference, "ref_sync_steps",
                   f"method '{self.method}' uses no reference model; leave ref_sync_steps at 0")
        _check(self.iterate.rounds == 0, "ref_sync_steps",
               "rounds set each round's reference themselves (round_reference); leave ref_sync_steps at 0")
        _check(not self.adapter.lora, "ref_sync_steps",
               "with LoRA the reference is the base model with the adapter disabled, which cannot move apart from "
               "the policy; train without LoRA to sync the reference")
        _check(not self.optim.fsdp and self.optim.deepspeed is None, "ref_sync_steps",
               "the synced reference is saved in plain checkpoints only; run it without fsdp and deepspeed")

    def __getattr__(self, name: str) -> Any:
        """Only called for a name that is not an attribute: say where a field of a section is."""
        home = None if name.startswith("__") else _home(name)
        if home:
            raise AttributeError(f"'TrainConfig' has no attribute '{name}'; it is in a section: cfg.{home}.{name}")
        raise AttributeError(f"'TrainConfig' has no attribute '{name}'")

    @property
    def spec(self):
        return get_loss(self.method)

    def to_dict(self) -> dict[str, Any]:
        """The run as a YAML file holds it: the top-level keys, the method's hyperparameters beside
        them, then one mapping per section."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if not f.metadata.get("internal") and not f.metadata.get("section")}
        out.update(dataclasses.asdict(self.method_params))
        for s in sections():
            out[s.name] = dataclasses.asdict(getattr(self, s.name))
        return out


class Section(NamedTuple):
    name: str  # the attribute of TrainConfig, the YAML mapping and the flag prefix: optim
    cls: type  # the dataclass: OptimConfig
    help: str


def sections() -> list[Section]:
    """The sections of ``TrainConfig``, in order."""
    return [Section(f.name, f.default_factory, f.metadata["help"])
            for f in dataclasses.fields(TrainConfig) if f.metadata.get("section")]


def _home(name: str) -> str | None:
    """The section that holds field ``name``, or None."""
    for s in sections():
        if name in {f.name for f in dataclasses.fields(s.cls)}:
            return s.name
    return None


def _instantiate(cls: type, values: dict[str, Any], where: str) -> Any:
    """``cls(**values)`` for values that are already Python objects of the right types; a range
    check's error or an unknown or missing key is a ``ConfigError``."""
    try:
        return cls(**values)
    except ParamError as e:  # a hyperparameter's own range check
        raise ConfigError(str(e)) from None
    except TypeError as e:  # an unknown key, or a required one missing
        raise ConfigError(f"{where}: {e}") from None


def get_loss(name: str):
    """The registry's spec for ``name``; an unknown name is a ConfigError."""
    try:
        return _get_loss(name)
    except UnknownLossError as e:
        raise ConfigError(str(e)) from None


def _check(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{name}: {message}")

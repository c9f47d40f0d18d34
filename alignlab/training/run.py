"""``alignlab.train(config)``: load everything a run needs, run the loop, save the model."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml

from alignlab.cache import cache_root, machine_signature, model_fingerprint
from alignlab.config import TrainConfig, config_differences, make_config
from alignlab.data.detect import shape_error
from alignlab.data.load import first_row_kind, load_records, split_records
from alignlab.data.render import Renderer
from alignlab.errors import ConfigError, DataError, RowIssue, UserError, option
from alignlab.generation.base import SamplingParams
from alignlab.losses.online import needs_reference
from alignlab.models import (
    LazyReference,
    LoraSettings,
    Reference,
    add_lora,
    disable_dropout,
    load_model,
    load_tokenizer,
)
from alignlab.training import fsdp, prepare, zero, zero_config
from alignlab.training.checkpoint import list_checkpoints
from alignlab.training.critic import attach_critic
from alignlab.training.distributed import (
    Dist,
    end_own_group,
    init_distributed,
    sum_over_processes,
    wrap_model,
)
from alignlab.training.kinds import model_kind
from alignlab.training.loop import SPLIT_KEYS, LoopInputs, afresh, autocast, run_loop
from alignlab.training.online_run import online_source
from alignlab.training.optim import make_optimizer
from alignlab.training.ref_sync import RefSync
from alignlab.training.reference_cache import attach_reference, cache_key
from alignlab.training.sinks import TENSORBOARD_FOLDER
from alignlab.training.source import GatheredSource, OfflineSource


@dataclass
class Summary:
    """What a finished run returns: where it wrote and the final numbers. ``to_json()`` is what
    ``summary.json`` holds and what ``alignlab train`` prints."""

    output_dir: str
    model_dir: str
    steps: int
    train_metrics: dict[str, float] = field(default_factory=dict)  # the last training step's metrics
    eval_metrics: dict[str, float] = field(default_factory=dict)  # the final evaluation's (eval/...)
    data: dict[str, Any] = field(default_factory=dict)  # rows and examples read, skipped, held out

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


def _log(dist: Dist, msg: str) -> None:
    if dist.is_main:
        print(msg, file=sys.stderr, flush=True)


def check_model_outside(cfg: TrainConfig, out: Path) -> None:
    """Refuse an overwrite of ``out`` that would delete the model the run starts from, or its
    reference model."""
    for key in ("model", "reference_model"):
        name = getattr(cfg, key)
        path = Path(name).expanduser() if name is not None else None
        if path is not None and path.exists() and path.resolve().is_relative_to(out.resolve()):
            raise ConfigError(f"overwrite: the {key} '{name}' lies inside output_dir '{out}', "
                              f"which {option('overwrite')} would delete; choose another output_dir")


def _check_output_dir(cfg: TrainConfig, out: Path) -> None:
    """Refuse to mix two different runs in one directory, or to write where nothing can be
    written (read-only; every process checks, before anything loads)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir: '{out}' is a file")
    for name in ("checkpoints", "model"):  # where the run writes its checkpoints and its final model
        if (out / name).exists() and not (out / name).is_dir():
            raise ConfigError(f"output_dir: '{out / name}' is a file, where the run keeps its {name}; move it away")
    parent = next(p for p in [out, *out.absolute().parents] if p.exists())
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir: cannot create '{out}': '{parent}' is not a writable directory")
    saved = out / "run.yaml"
    if not saved.exists():
        return
    if cfg.checkpoint.overwrite and not cfg.checkpoint.resume:
        check_model_outside(cfg, out)
        return
    try:
        previous = yaml.safe_load(saved.read_text())
    except yaml.YAMLError:
        previous = None
    differ = config_differences(previous if isinstance(previous, dict) else {}, cfg.to_dict())
    if cfg.checkpoint.resume and cfg.optim.fsdp:
        differ = [k for k in differ if k not in SPLIT_KEYS]  # checked against the checkpoint's global batch
    if not cfg.checkpoint.resume:
        what = f"a different run (differs in {', '.join(differ)})" if differ else "a run"
        raise ConfigError(f"output_dir: '{out}' already holds {what}; pass {option('resume')} to continue it "
                          f"or {option('overwrite')} to start afresh")
    if differ:
        raise ConfigError(f"output_dir: '{out}' holds a run whose config differs in {', '.join(differ)}; "
                          f"resume with the same config, or start afresh with {afresh()}")


def _claim_output_dir(cfg: TrainConfig, out: Path, dist: Dist) -> None:
    """Once everything has loaded: clear an overwritten run and record this run's config."""
    dist.barrier()
    if dist.is_main:
        if cfg.checkpoint.overwrite and not cfg.checkpoint.resume and ((out / "run.yaml").exists() or list_checkpoints(out / "checkpoints")):
            # TensorBoard's folder too where it is the run's own (a logging_dir elsewhere is left)
            for name in ("checkpoints", "model") + (() if cfg.tracking.logging_dir else (TENSORBOARD_FOLDER,)):
                shutil.rmtree(out / name, ignore_errors=True)
            for name in ("metrics.jsonl", "summary.json"):
                (out / name).unlink(missing_ok=True)
        try:
            out.mkdir(parents=True, exist_ok=True)
            (out / "run.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        except OSError as e:
            raise ConfigError(f"output_dir: cannot write to '{out}': {e.strerror}") from None
    dist.barrier()


def _load(cfg: TrainConfig, source: str, split: str | None, dist: Dist):
    """Load ``source`` in the shape the method trains on; data of another shape is an error that
    says which shape the method needs and which converter makes it."""
    kind = cfg.spec.shape
    try:
        result = load_records(source, kind, columns=cfg.dataset.columns, skip_invalid=cfg.dataset.skip_invalid, split=split,
                              strict_order=cfg.spec.strict_order)
    except UserError as e:
        have = first_row_kind(source, split)
        if have is not None and have != kind and not (kind == "joint" and have == "pair"):
            raise ConfigError(f"{source}: {shape_error(have, kind, cfg.method)}") from None
        raise e from None
    if "strength" in cfg.spec.needs:
        missing = [RowIssue(r.source, r.row, "strength", f"method '{cfg.method}' needs a preference strength "
                            "per pair (a number in [0, 1])") for r in result.records if r.strength is None]
        if missing:
            raise DataError(missing, hint="")
    _log(dist, result.summary())
    return result


def _load_examples(cfg: TrainConfig, renderer: Renderer, dist: Dist) -> tuple[list, list, dict[str, Any]]:
    sets = [(cfg.data, cfg.dataset.data_split, cfg.eval.eval_data, cfg.eval.eval_data_split, 1.0)]
    if cfg.dataset.mix_data:  # a second set of pairs, tagged group 0 (bvpo's empty-trace pairs)
        sets.append((cfg.dataset.mix_data, None, None, None, 0.0))
    info: dict[str, Any] = {"train_rows": 0, "skipped_rows": 0}
    rendered: list[list] = [[], []]
    for source, split, held_source, held_split, group in sets:
        train = _load(cfg, source, split, dist)
        info["train_rows"] += len(train.records)
        info["skipped_rows"] += train.skipped_rows
        if held_source:
            held = _load(cfg, held_source, held_split, dist)
            train_records, eval_records = train.records, held.records
            info["skipped_rows"] += held.skipped_rows
        else:
            train_records, eval_records = split_records(train.records, cfg.eval.eval_fraction, cfg.seed)
        for k, (name, records) in enumerate((("train", train_records), ("eval", eval_records))):
            res = renderer.render(records)
            if res.issues and not cfg.dataset.skip_invalid:
                if name == "train" and not res.examples:  # skipping them would leave nothing to train on
                    raise DataError(res.issues, hint="every row is bad: fix the data or the limits (skipping "
                                                     "bad rows would leave none)")
                raise DataError(res.issues)
            if res.issues:
                _log(dist, f"{name}: skipped {len(res.issues)} examples that do not fit: "
                     + "; ".join(str(i) for i in res.issues[:3]))
            if res.summary():
                _log(dist, f"{name}: {res.summary()}")
            info[f"{name}_examples"] = info.get(f"{name}_examples", 0) + len(res.examples)
            info[f"{name}_skipped_after_tokenizing"] = info.get(f"{name}_skipped_after_tokenizing", 0) + len(res.issues)
            examples = res.examples
            if cfg.dataset.mix_data:
                examples = [dataclasses.replace(e, group=group) for e in examples]
            rendered[k].extend(examples)
    if cfg.dataset.mix_data:
        groups = {e.group for e in rendered[0]}
        for group, name in ((1.0, "data"), (0.0, "mix_data")):
            if group not in groups:
                raise ConfigError(f"{name}: no training example is left in this set; method '{cfg.method}' mixes "
                                  "two sets of pairs and needs examples in both")
    if not rendered[0]:
        raise ConfigError(
            f"data: no training example is left: {info['skipped_rows']} rows were invalid and "
            f"{info['train_skipped_after_tokenizing']} did not fit max_length={cfg.dataset.max_length}"
        )
    return rendered[0], rendered[1], info


def _prepare(cfg: TrainConfig, train_ex: list, eval_ex: list, tokenizer, reference: LazyReference,
             dist: Dist, fingerprint: str) -> tuple[list, list]:
    """Add what the method needs to its examples, once, before training: mismatched responses,
    prompt weights, reference samples, and the reference's log-probs (cached; not for a reference
    that moves while training, whose values the forward computes for each batch)."""
    spec, params = cfg.spec, cfg.method_params
    log = partial(_log, dist)
    root = cache_root(cfg.cache_dir) if cfg.cache else None
    batch = cfg.eval.eval_batch_size or cfg.optim.batch_size
    sets = [train_ex, eval_ex]
    if "kl" in spec.needs:
        sets = [prepare.add_mismatched(ex, cfg.seed + i, cfg.dataset.max_length) if ex else ex for i, ex in enumerate(sets)]
    if "udm" in spec.needs and getattr(params, "udm", False):
        sets = list(prepare.add_udm_weights(sets[0], sets[1], tokenizer, params, cfg.seed))
    for i, examples in enumerate(sets):
        if not examples:
            continue
        if spec.shape == "negatives":
            sampling = SamplingParams(max_new_tokens=params.sample_max_new_tokens,
                                      temperature=params.sample_temperature, seed=cfg.seed + i)
            key = prepare.samples_key(fingerprint, examples, params.num_samples, sampling)
            examples = prepare.add_samples(
                examples, reference, tokenizer, k=params.num_samples, params=sampling, max_length=cfg.dataset.max_length,
                cache_file=root / "samples" / f"{key}.json" if root else None, dist=dist,
                autocast=partial(autocast, cfg, dist), log=log)
        if spec.needs_reference and not cfg.ref_sync_steps:
            tokens = "tokens" in spec.needs
            key = cache_key(fingerprint, cfg.dtype, examples, tokens)
            examples = attach_reference(
                examples, reference, pad_id=tokenizer.pad_token_id, batch_size=batch, dist=dist,
                cache_file=root / "reference_logps" / f"{key}.safetensors" if root else None, tokens=tokens,
                autocast=partial(autocast, cfg, dist), log=log, model_name=cfg.model)
        sets[i] = examples
    return sets[0], sets[1]


def _reference_model(cfg: TrainConfig, policy, dist: Dist) -> torch.nn.Module:
    """``reference_model`` loaded in the policy's precision, on its device; its vocabulary must be
    the policy's (its log-probs are of the same tokens)."""
    reference = load_model(cfg.reference_model, dtype="fp32" if cfg.dtype == "bf16" else cfg.dtype,
                           trust_remote_code=cfg.trust_remote_code)
    mine, theirs = policy.get_input_embeddings().weight.shape[0], reference.get_input_embeddings().weight.shape[0]
    if mine != theirs:
        raise ConfigError(f"reference_model: {cfg.reference_model} has a vocabulary of {theirs} tokens and the "
                          f"policy {cfg.model} one of {mine}; the reference must score the policy's tokens")
    if cfg.optim.disable_dropout:
        disable_dropout(reference)
    return reference.to(dist.device)


def _fingerprint(cfg: TrainConfig, policy) -> str:
    """What identifies the reference model's numbers: its files (or hub name and revision), the
    precision, the versions of the libraries that compute them, and the machine's instruction set
    and thread count (``machine_signature``: the same values computed elsewhere differ in the last bits)."""
    import transformers

    commit = getattr(getattr(policy, "config", None), "_commit_hash", None) or ""
    machine = json.dumps(machine_signature(), sort_keys=True)
    return "\0".join([model_fingerprint(cfg.reference_model or cfg.model), commit, cfg.dtype, torch.__version__, transformers.__version__,
                      machine])


def _task_eval(cfg: TrainConfig, tokenizer, dist: Dist) -> Callable:
    """Measure the model on the testbed task's held-out prompts against the starting model, and
    through ``task_eval_decoding``'s method when given: ``measure(module, reference) -> metrics``."""
    from alignlab.eval.gold import GoldEvaluator

    trained_on = str(cfg.data).split(":")[1] if str(cfg.data).startswith("task:") else None
    if trained_on is not None and trained_on != cfg.eval.task:
        _log(dist, f"note: the run trains on task {trained_on}'s prompts and is evaluated on task {cfg.eval.task}'s "
                   f"held-out prompts and gold reward (task: {cfg.eval.task})")
    decoding, name = None, "decoded"
    if cfg.eval.task_eval_decoding:
        from alignlab.decoding.spec import build_method, method_models, method_scorer, parse_method

        spec = parse_method(cfg.eval.task_eval_decoding)
        try:
            scorer, name = method_scorer(spec), spec.method
            others = method_models(spec, trust_remote_code=cfg.trust_remote_code, device=dist.device,
                                   base_tokenizer=tokenizer, base_name=cfg.model)
        except UserError as e:
            raise UserError(f"task_eval_decoding: {e}") from None

        def decoding(generator, policy):
            return build_method(spec, policy, tokenizer, generator, scorer, others)

    evaluator = GoldEvaluator(cfg.eval.task, tokenizer, seed=cfg.seed, num_prompts=cfg.eval.task_eval_prompts,
                              batch_size=cfg.eval.eval_batch_size or cfg.optim.batch_size, rank=dist.rank,
                              world_size=dist.world_size, progress=cfg.progress and dist.is_main,
                              decoding=decoding, decoding_name=name)

    def reduce(totals: dict[str, float]) -> dict[str, float]:
        return sum_over_processes(dist, {k: torch.tensor(v, dtype=torch.float64) for k, v in totals.items()})

    def measure(module, reference: Reference) -> dict[str, float]:
        metrics = evaluator(module, reference, reduce=reduce)
        return {f"eval/{k}": v for k, v in metrics.items()}

    return measure


def train(config: TrainConfig | dict[str, Any]) -> Summary:
    """Train with ``config`` (a TrainConfig or a flat dict as in YAML) and return a Summary."""
    cfg = config if isinstance(config, TrainConfig) else make_config(config)
    if cfg.iterate.rounds:
        raise ConfigError("rounds: a run of rounds goes through alignlab.train (or `alignlab iterate`), which "
                          "trains each round with this function")
    kind = model_kind(cfg)  # a policy, or a reward model (a backbone with a fresh head)
    deepspeed = zero_config.requested(cfg)  # None, or what DeepSpeed is asked for (training/zero.py)
    if deepspeed:
        zero.import_deepspeed()  # a missing install is one line, before anything loads
    dist = init_distributed(group=cfg.optim.fsdp or bool(deepspeed))
    try:
        return _train(cfg, kind, deepspeed, dist)
    finally:
        end_own_group(dist)


def _train(cfg: TrainConfig, kind, deepspeed, dist: Dist) -> Summary:
    out = Path(cfg.output_dir)
    _check_output_dir(cfg, out)
    torch.manual_seed(cfg.seed)

    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    online = cfg.spec.shape == "online"  # prompts sampled and scored while training (online_run.py)
    if online:
        train_examples, eval_examples, data_info = [], [], {}
    else:
        renderer = Renderer(tokenizer, kind.max_length(), cfg.dataset.max_prompt_length)
        train_examples, eval_examples, data_info = _load_examples(cfg, renderer, dist)
        kind.check_examples(train_examples + eval_examples)

    # bf16 is mixed precision: fp32 master weights and optimizer state, bf16 compute (autocast).
    policy = kind.build_model("fp32" if cfg.dtype == "bf16" else cfg.dtype)
    if cfg.optim.disable_dropout:
        disable_dropout(policy)
    if cfg.adapter.lora:
        policy = add_lora(policy, LoraSettings(cfg.adapter.lora_r, cfg.adapter.lora_alpha, cfg.adapter.lora_dropout, cfg.adapter.lora_target_modules))
    policy.to(dist.device)
    if cfg.optim.gradient_checkpointing:
        try:
            kind.network(policy).activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False})
        except ValueError as e:  # a model class without support
            raise ConfigError(f"gradient_checkpointing: {e}") from None
        if cfg.adapter.lora:
            policy.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a grad path
    # The reference is the starting policy: a frozen copy made only when something uses it (the
    # reference log-probs when not cached, reference samples, the task evaluation), or with LoRA the
    # same network with its adapter disabled. It runs under the policy's precision.
    lazy = LazyReference(policy, partial(_reference_model, cfg, policy, dist) if cfg.reference_model else None)
    if not online:
        train_examples, eval_examples = _prepare(cfg, train_examples, eval_examples, tokenizer, lazy, dist,
                                                 _fingerprint(cfg, policy))
    extra_eval = _task_eval(cfg, tokenizer, dist) if cfg.eval.task else None
    # What the loop runs the reference for: the task evaluation, an online method's KL term, and
    # a reference that moves (ref_sync_steps). Reference log-probs may have come from the cache,
    # so the copy is made here if not yet, before training changes the policy.
    kl_term = online and needs_reference(cfg.method_params)
    sync = cfg.ref_sync_steps
    reference = lazy.get() if extra_eval is not None or kl_term or sync else None
    lazy.release()
    if cfg.spec.value_model:  # PPO's critic, on the policy module (training/critic.py), after the reference copy
        attach_critic(policy, cfg.method_params.critic, cfg.model, "fp32" if cfg.dtype == "bf16" else cfg.dtype,
                      cfg.trust_remote_code)
    moving = reference  # the reference the method runs; with sync, the task evaluation keeps the start
    if sync and extra_eval is not None:
        moving = Reference(policy, copy.deepcopy(reference.own))
    ref_sync = RefSync(moving.model, policy, sync, cfg.ref_sync_alpha) if sync else None
    if online:
        source = online_source(cfg, dist, tokenizer, policy, moving.model if kl_term else None, partial(_log, dist),
                               partial(autocast, cfg, dist))
    skeleton = None
    if cfg.optim.fsdp:
        skeleton = fsdp.meta_copy(policy)  # the plain module the final weights are saved from
        model = fsdp.shard(policy, dist, bf16=cfg.dtype == "bf16")
        frozen = reference.own if reference is not None else None  # a KL term's, the task evaluation's
        if frozen is not None:
            fsdp.shard(frozen, dist, bf16=cfg.dtype == "bf16")
        if online:  # a round samples from the policy and runs it outside the training step
            source = GatheredSource(source, partial(fsdp.full_params, model, frozen))
    elif deepspeed:
        optimizer = make_optimizer(policy, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.adam_betas, cfg.optim.adam_eps,
                                   fused=False)  # DeepSpeed steps it on flat partitions of its own
        skeleton = fsdp.meta_copy(policy)  # ZeRO-3 partitions the policy's weights: the final ones are gathered here
        model = zero.initialize(policy, optimizer, deepspeed, cfg, dist)
        if zero.stage_of(model) == 2:
            skeleton = None  # ZeRO-2 keeps whole weights in the policy
        elif online:
            source = GatheredSource(source, partial(zero.full_params, model))
    else:
        model = wrap_model(policy, dist)
    _claim_output_dir(cfg, out, dist)

    forward = kind.make_forward(tokenizer.pad_token_id, partial(autocast, cfg, dist))
    if sync and not online:  # the reference's log-probs for each batch, from the moving reference
        forward.live_reference = moving.model
    if "group" in cfg.spec.needs:  # a constant of the data the loss reads
        forward.state["trace_fraction"] = sum(e.group for e in train_examples) / len(train_examples)
    collate = kind.collate(tokenizer.pad_token_id)

    def to_device(examples):
        return collate(examples).to(dist.device)

    lengths = None
    if cfg.dataset.group_by_length:
        lengths = tuple(sum(len(p) + len(r) for p, r in e.sequences()) for e in train_examples)

    if not online:
        source = OfflineSource(cfg, dist, train_examples, to_device, lengths)
    try:
        result = run_loop(LoopInputs(
            cfg=cfg, dist=dist, model=model, source=source,
            forward=forward, out_dir=out, eval_examples=eval_examples, collate=to_device,
            reference=reference, extra_eval=extra_eval, log=partial(_log, dist), ref_sync=ref_sync,
        ))
    finally:  # the run's Ray workers (and a local cluster it started) end with it, however it ends
        close = getattr(getattr(source, "generator", None), "close", None)
        if close is not None:
            close()
    if result.steps and result.skipped_steps >= result.steps:
        _log(dist, f"warning: every step of the run ({result.steps}) was skipped (skip_nonfinite), so the model "
                   "saved is the one it started from; the log above names each step's fault")

    model_dir = out / "model"
    if deepspeed:
        final = zero.export(policy, skeleton, dist)
    else:
        final = fsdp.export(model, skeleton, dist) if skeleton is not None else policy
    if dist.is_main:
        if cfg.dtype == "bf16":
            final.to(torch.bfloat16)  # training is over: save in the compute dtype
        kind.save(final, tokenizer, model_dir)
    summary = Summary(str(out), str(model_dir), result.steps, result.train_metrics, result.eval_metrics, data_info)
    if dist.is_main:
        (out / "summary.json").write_text(summary.to_json())
    dist.barrier()
    return summary

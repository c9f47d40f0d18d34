"""``alignlab.train(config)``: load everything a run needs, run the loop, save the model."""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml

from alignlab.config import TrainConfig, make_config
from alignlab.data.collate import collate_pairs, collate_sft
from alignlab.data.load import load_records, split_records
from alignlab.data.render import Renderer
from alignlab.errors import ConfigError, DataError
from alignlab.models import LoraSettings, Reference, add_lora, load_model, load_tokenizer, save_model
from alignlab.train import preference, sft
from alignlab.train.distributed import Dist, init_distributed, wrap_model
from alignlab.train.loop import LoopInputs, run_loop

# Keys that may differ between a run and its resumption.
_RESUMABLE_KEYS = {"resume", "progress", "overwrite"}


@dataclass
class Summary:
    """What a finished run returns: where it wrote and the final numbers."""

    output_dir: str
    model_dir: str
    steps: int
    train_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


def _log(dist: Dist, msg: str) -> None:
    if dist.is_main:
        print(msg, file=sys.stderr, flush=True)


def _prepare_output_dir(cfg: TrainConfig, out: Path, dist: Dist) -> None:
    """Refuse to mix two different runs in one directory; clear it on --overwrite."""
    saved = out / "run.yaml"
    current = cfg.to_dict()
    if saved.exists():
        previous = yaml.safe_load(saved.read_text()) or {}
        differ = sorted(k for k in set(previous) | set(current)
                        if k not in _RESUMABLE_KEYS and previous.get(k) != current.get(k))
        if not cfg.overwrite:
            if not cfg.resume:
                what = f"a different run (differs in {', '.join(differ)})" if differ else "a run"
                raise ConfigError(f"output_dir: '{out}' already holds {what}; pass --resume to continue it "
                                  "or --overwrite to start over")
            if differ:
                raise ConfigError(f"output_dir: '{out}' holds a run whose config differs in {', '.join(differ)}; "
                                  "resume with the same config, or pass --overwrite to start over")
    dist.barrier()
    if dist.is_main:
        if cfg.overwrite and not cfg.resume:
            for name in ("checkpoints", "model"):
                shutil.rmtree(out / name, ignore_errors=True)
            (out / "metrics.jsonl").unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        saved.write_text(yaml.safe_dump(current, sort_keys=False))
    dist.barrier()


def _load_examples(cfg: TrainConfig, renderer: Renderer, dist: Dist) -> tuple[list, list, dict[str, Any]]:
    shape = cfg.spec.shape
    kind = "sft" if shape == "sft" else "pair"
    train = load_records(cfg.data, kind, columns=cfg.columns, skip_invalid=cfg.skip_invalid, split=cfg.data_split)
    _log(dist, train.summary())
    info: dict[str, Any] = {"train_rows": len(train.records), "skipped_rows": len(train.skipped)}
    if cfg.eval_data:
        held = load_records(cfg.eval_data, kind, columns=cfg.columns, skip_invalid=cfg.skip_invalid,
                            split=cfg.data_split)
        _log(dist, held.summary())
        train_records, eval_records = train.records, held.records
        info["skipped_rows"] += len(held.skipped)
    else:
        train_records, eval_records = split_records(train.records, cfg.eval_fraction, cfg.seed)
    rendered = []
    for name, records in (("train", train_records), ("eval", eval_records)):
        res = renderer.render(records)
        if res.issues and not cfg.skip_invalid:
            raise DataError(res.issues)
        if res.issues:
            _log(dist, f"{name}: skipped {len(res.issues)} examples that do not fit: "
                 + "; ".join(str(i) for i in res.issues[:3]))
        if res.summary():
            _log(dist, f"{name}: {res.summary()}")
        info[f"{name}_examples"] = len(res.examples)
        info[f"{name}_skipped_after_tokenizing"] = len(res.issues)
        rendered.append(res.examples)
    if not rendered[0]:
        raise DataError(train.skipped or [], hint="no training example is left") if train.skipped else \
            ConfigError("data: no training example is left after tokenizing")
    return rendered[0], rendered[1], info


def train(config: TrainConfig | dict[str, Any]) -> Summary:
    """Train with ``config`` (a TrainConfig or a flat dict as in YAML) and return a Summary."""
    cfg = config if isinstance(config, TrainConfig) else make_config(config)
    spec = cfg.spec
    dist = init_distributed()
    out = Path(cfg.output_dir)
    _prepare_output_dir(cfg, out, dist)
    torch.manual_seed(cfg.seed)

    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    renderer = Renderer(tokenizer, cfg.max_length, cfg.max_prompt_length)
    train_examples, eval_examples, data_info = _load_examples(cfg, renderer, dist)

    policy = load_model(cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    if cfg.lora:
        policy = add_lora(policy, LoraSettings(cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_modules))
    policy.to(dist.device)
    reference = Reference(policy) if spec.needs_reference else None
    model = wrap_model(policy, dist)

    pad = tokenizer.pad_token_id
    if spec.shape == "sft":
        forward = sft.make_forward(spec, cfg.method_params)
        collate = partial(collate_sft, pad_id=pad)
    else:
        forward = preference.make_forward(spec, cfg.method_params, reference, policy)
        collate = partial(collate_pairs, pad_id=pad)

    def to_device(examples):
        batch = collate(examples)
        for name in ("input_ids_BT", "attention_mask_BT", "loss_mask_BT"):
            setattr(batch, name, getattr(batch, name).to(dist.device))
        return batch

    result = run_loop(LoopInputs(
        cfg=cfg, dist=dist, model=model, train_examples=train_examples, eval_examples=eval_examples,
        collate=to_device, forward=forward, out_dir=out, log=partial(_log, dist),
    ))

    model_dir = out / "model"
    if dist.is_main:
        save_model(policy, tokenizer, model_dir, merge_lora=cfg.merge_lora)
    summary = Summary(str(out), str(model_dir), result.steps, result.train_metrics, result.eval_metrics, data_info)
    if dist.is_main:
        (out / "summary.json").write_text(json.dumps(asdict(summary), indent=1))
    dist.barrier()
    return summary

"""A reward model: a pretrained backbone and a small head on one of its positions.

The backbone is any Hugging Face model that ``AutoModel`` loads: the decoder of a causal LM (its
language-model head is not loaded) or an encoder such as the MiniLM sentence encoder. The head
reads one vector per sequence (``pool``):

- ``last``: the state at the last non-pad token (right padding: position ``mask.sum() − 1``), the
  usual choice for causal LMs, which have seen the whole sequence only there;
- ``mean``: the mean over real tokens, as sentence encoders are trained to be used;
- ``cls``: the first token.

A linear layer maps it to a scalar reward (Bradley-Terry) or to a 2k-dimensional preference
representation (GPM, unit length by default), and with GPM's gate also computes eigenvalues
λ(x) = k·softmax(W h_x/√d) from the state h_x at the last prompt token (``losses/reward.py``).

Saved as the backbone's own files (``save_pretrained``, so the directory also loads with
``AutoModel``), the tokenizer, ``reward_head.safetensors`` and ``reward_model.json``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from alignlab.errors import UserError
from alignlab.models import (
    DTYPES,
    check_finite_weights,
    first_non_finite,
    load_failed,
    resolve_source,
    save_pretrained,
)

CONFIG_FILE = "reward_model.json"
HEAD_FILE = "reward_head.safetensors"


@dataclass(frozen=True)
class HeadSettings:
    """What the head computes; saved as ``reward_model.json``."""

    objective: str = "bt"  # "bt" or "gpm"
    dim: int = 1  # 1 for Bradley-Terry, 2k for GPM
    pool: str = "last"  # last, mean or cls
    causal: bool = True  # the backbone is a causal LM (else an encoder)
    gate: bool = False  # GPM: prompt-dependent eigenvalues
    normalize: bool = False  # GPM: unit-length representations
    tau: float = 0.1  # GPM: temperature of σ(s/τ)


# decoder-only causal LMs whose transformers class has the older name (GPT-2 and its forerunners)
_CAUSAL_LM_HEADS = ("GPT2LMHeadModel", "OpenAIGPTLMHeadModel", "CTRLLMHeadModel")


def is_causal(config) -> bool:
    """Whether a model config describes a causal LM (its saved architecture is a ...ForCausalLM, or
    GPT-2's ``GPT2LMHeadModel`` and the like)."""
    archs = getattr(config, "architectures", None) or []
    return any(a.endswith("ForCausalLM") or a in _CAUSAL_LM_HEADS for a in archs) \
        or bool(getattr(config, "is_decoder", False))


class RewardModel(torch.nn.Module):
    """``forward(input_ids, attention_mask, prompt_last=None) -> (values (B, D), lam (B, k) or None)``."""

    def __init__(self, backbone: torch.nn.Module, settings: HeadSettings):
        super().__init__()
        self.backbone = backbone
        self.settings = settings
        hidden = backbone.config.hidden_size
        dtype = next(backbone.parameters()).dtype
        self.head = torch.nn.Linear(hidden, settings.dim, dtype=dtype)
        std = getattr(backbone.config, "initializer_range", 0.02)
        torch.nn.init.normal_(self.head.weight, std=std)
        torch.nn.init.zeros_(self.head.bias)
        self.gate = None
        if settings.gate:
            self.gate = torch.nn.Linear(hidden, settings.dim // 2, bias=False, dtype=dtype)
            torch.nn.init.normal_(self.gate.weight, std=std)

    @property
    def config(self):
        return self.backbone.config

    def _pool(self, hidden_BTD: torch.Tensor, mask_BT: torch.Tensor) -> torch.Tensor:
        pool = self.settings.pool
        if pool == "mean":
            m = mask_BT.unsqueeze(-1).to(hidden_BTD.dtype)
            return (hidden_BTD * m).sum(1) / m.sum(1).clamp(min=1)
        if pool == "cls":
            return hidden_BTD[:, 0]
        last = (mask_BT.sum(1) - 1).clamp(min=0)
        return hidden_BTD[torch.arange(hidden_BTD.shape[0], device=hidden_BTD.device), last]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                prompt_last: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False) \
            if self.settings.causal else self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        hidden = out.last_hidden_state
        values = self.head(self._pool(hidden, attention_mask))
        if self.settings.normalize:
            values = F.normalize(values, dim=-1)
        lam = None
        if self.gate is not None:
            if prompt_last is None:
                raise ValueError("a gated GPM needs the position of each row's last prompt token")
            h_x = hidden[torch.arange(hidden.shape[0], device=hidden.device), prompt_last]
            k = self.settings.dim // 2
            lam = k * torch.softmax(self.gate(h_x) / math.sqrt(hidden.shape[-1]), dim=-1)
        return values, lam


def backbone_config(name_or_path: str, trust_remote_code: bool = False):
    """The model config of ``name_or_path`` (no weights loaded)."""
    from transformers import AutoConfig

    source = resolve_source(name_or_path)
    try:
        return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as e:  # any failure to read the user's files is theirs to fix, not a crash
        raise load_failed("model config", name_or_path, e) from None


def load_backbone(name_or_path: str, dtype: str = "fp32", trust_remote_code: bool = False):
    """The backbone of a causal LM or an encoder, without any task head."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    source = resolve_source(name_or_path)
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # a causal LM's unused output layer is expected, not news
    try:
        backbone = AutoModel.from_pretrained(source, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
    except Exception as e:  # any failure to read the user's files is theirs to fix, not a crash
        raise load_failed("reward-model backbone", name_or_path, e) from None
    finally:
        hf_logging.set_verbosity(level)
    check_finite_weights(backbone, name_or_path, "reward-model backbone")
    return backbone


def new_reward_model(name_or_path: str, objective: str, dim: int, pool: str, gate: bool, normalize: bool,
                     tau: float, dtype: str = "fp32", trust_remote_code: bool = False) -> RewardModel:
    """A reward model on a pretrained backbone with a freshly initialised head (seed it first)."""
    backbone = load_backbone(name_or_path, dtype, trust_remote_code)
    causal = is_causal(backbone.config)
    if pool == "auto":
        pool = "last" if causal else "mean"
    return RewardModel(backbone, HeadSettings(objective, dim, pool, causal, gate, normalize, tau))


def is_reward_model_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def save_reward_model(model: RewardModel, tokenizer, out_dir: str | os.PathLike) -> Path:
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_pretrained(model.backbone, out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    head = {f"head.{k}": v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()}
    if model.gate is not None:
        head.update({f"gate.{k}": v.detach().contiguous().cpu() for k, v in model.gate.state_dict().items()})
    save_file(head, out / HEAD_FILE)
    (out / CONFIG_FILE).write_text(json.dumps(asdict(model.settings), indent=1))
    return out


def load_reward_model(path: str | os.PathLike, dtype: str = "fp32", trust_remote_code: bool = False) -> RewardModel:
    """A reward model saved by ``save_reward_model`` (by ``alignlab train --method reward_model``)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    p = Path(path).expanduser()
    if not is_reward_model_dir(p):
        raise UserError(f"'{path}' is not a reward model directory (it has no {CONFIG_FILE}); train one with "
                        "alignlab train --method reward_model")
    try:
        settings = HeadSettings(**json.loads((p / CONFIG_FILE).read_text()))
    except (ValueError, TypeError) as e:
        raise UserError(f"{p / CONFIG_FILE}: not a valid reward-model config: {e}") from None
    model = RewardModel(load_backbone(str(p), dtype, trust_remote_code), settings)
    try:
        weights = load_file(p / HEAD_FILE)
    except (OSError, SafetensorError) as e:
        raise UserError(f"{p / HEAD_FILE}: cannot read the reward head: {e}") from None
    found = first_non_finite(weights.items())
    if found is not None:
        name, bad, total = found
        raise UserError(f"{p / HEAD_FILE}: the reward head's '{name}' holds {bad} NaN or infinite "
                        f"value{'s' if bad > 1 else ''} of {total}; the file is damaged")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.startswith("backbone.")]
    if missing or unexpected:
        raise UserError(f"{p / HEAD_FILE}: the head does not match {CONFIG_FILE} (missing {missing}, "
                        f"unexpected {unexpected})")
    return model.to(DTYPES[dtype]).eval()

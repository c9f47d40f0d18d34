"""Load, build and save models and tokenizers.

Policy, reference and tokenizer come from a local directory or a hub name through transformers'
Auto classes. A tiny LlamaForCausalLM with a locally built byte-level tokenizer stands in for a real
model in tests and demos; it goes through exactly the same loading and saving code.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alignlab.errors import UserError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}


@contextlib.contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """``model`` in eval mode (no dropout) for the duration; its training mode is restored after,
    however the block ends."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)

# Special tokens of the tiny tokenizer. <|end|> closes every chat turn and doubles as EOS.
TINY_SPECIAL_TOKENS = ["<|pad|>", "<|bos|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|tool|>"]
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


@dataclass
class TinyModelConfig:
    """Shape of the tiny Llama built for tests and demos (about 1M parameters)."""

    hidden_size: int = field(default=128, metadata={"help": "width of the hidden states"})
    num_layers: int = field(default=4, metadata={"help": "number of decoder layers"})
    num_heads: int = field(default=4, metadata={"help": "attention heads (and key-value heads); must divide "
                                                        "hidden_size"})
    intermediate_size: int = field(default=384, metadata={"help": "width of the MLP"})
    max_position_embeddings: int = field(default=2048, metadata={"help": "longest sequence the model takes"})
    seed: int = field(default=0, metadata={"help": "seed of the random initial weights"})

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise UserError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise UserError(f"num_heads: must divide hidden_size ({self.hidden_size}), got {self.num_heads}")


@dataclass
class LoraSettings:
    """LoRA adapter settings (peft)."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


def build_tiny_tokenizer():
    """A byte-level fast tokenizer (256 byte tokens + specials) with a simple chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(TINY_SPECIAL_TOKENS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<|pad|>",
        bos_token="<|bos|>",
        eos_token="<|end|>",
        additional_special_tokens=TINY_SPECIAL_TOKENS[3:],
    )
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def build_tiny_model(cfg: TinyModelConfig | None = None):
    """Build a randomly initialised tiny LlamaForCausalLM and its tokenizer, seeded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = cfg or TinyModelConfig()
    tok = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = LlamaForCausalLM(config)
    return model, tok


def save_pretrained(model, out: str | os.PathLike, **kwargs) -> None:
    """``model.save_pretrained(out, **kwargs)`` with anything it prints sent to stderr: it unwraps the
    model through accelerate, which imports DeepSpeed where it is installed, and DeepSpeed's start-up
    log binds to the stdout it sees then, where a command's own output goes (a run's JSON summary)."""
    import sys

    with contextlib.redirect_stdout(sys.stderr):
        model.save_pretrained(out, **kwargs)


def save_tiny_model(out_dir: str | os.PathLike, cfg: TinyModelConfig | None = None) -> Path:
    """Build a tiny model and save it (safetensors) with its tokenizer to ``out_dir``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"'{out}' is a file; give a directory to save the tiny model in")
    model, tok = build_tiny_model(cfg)
    out.mkdir(parents=True, exist_ok=True)
    save_pretrained(model, out)
    tok.save_pretrained(out)
    return out


def resolve_source(name_or_path: str) -> str:
    """An existing local path, made absolute (so a saved LoRA adapter can find its base from
    anywhere), or a hub name. A path that exists must be a model directory."""
    p = Path(name_or_path).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UserError(f"model path '{name_or_path}' is a file; give the directory that holds config.json")
        if not (p / "config.json").exists() and not (p / "adapter_config.json").exists():
            raise UserError(f"model directory '{name_or_path}' has no config.json (is it a saved model?)")
        return str(p.resolve())
    first = name_or_path.split("/", 1)[0]
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1 or ("/" in name_or_path and Path(first).is_dir()):
        raise UserError(f"model directory '{name_or_path}' does not exist")
    return name_or_path


def load_failed(what: str, name_or_path: str, error: Exception) -> UserError:
    """The one-line error for a model, tokenizer or config that would not load: what, from where, and
    the first line of the cause (saying so when a name was neither a local directory nor on the hub)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    first = lines[0] if lines else type(error).__name__
    if first.endswith(":"):  # a line that announces the next ones: the cause is in them, on one line
        first = " ".join(lines)
    lookup = isinstance(error, OSError) and not Path(name_or_path).expanduser().exists()
    where = " (no local directory has that name, and the hub could not provide it)" if lookup else ""
    return UserError(f"cannot load {what} from '{name_or_path}'{where}: {type(error).__name__}: {first}")


def first_non_finite(named: Iterable[tuple[str, torch.Tensor]]) -> tuple[str, int, int] | None:
    """(name, non-finite values, values) of the first tensor holding a NaN or an infinity, or None.

    One pass: each tensor is summed in its own dtype, a sum that any NaN or infinity makes
    non-finite (about ten times faster than ``isfinite`` on every value, which is done only for a
    tensor whose sum is not finite: a sum can also overflow)."""
    named = [(n, t) for n, t in named if t.is_floating_point()]
    if not named:
        return None
    with torch.no_grad():
        sums = torch.stack([t.detach().sum().float() for _, t in named])
        for i in (~torch.isfinite(sums)).nonzero().flatten().tolist():
            name, t = named[i]
            bad = int((~torch.isfinite(t.detach())).sum())
            if bad:
                return name, bad, t.numel()
    return None


def _file_holding(source: str, tensor: str) -> str:
    """The safetensors file of a local model directory that holds ``tensor`` (a key equal to its
    name, or one name ending with the other, as a backbone's names lack the task model's prefix),
    else ``source`` itself."""
    from safetensors import safe_open

    p = Path(source)
    for f in sorted(p.glob("*.safetensors")) if p.is_dir() else []:
        try:
            with safe_open(str(f), framework="pt") as handle:
                keys = list(handle.keys())
        except Exception:  # an unreadable file holds nothing we can name
            continue
        if any(k == tensor or k.endswith("." + tensor) or tensor.endswith("." + k) for k in keys):
            return str(f)
    return source


def check_finite_weights(model: torch.nn.Module, name_or_path: str, what: str = "model") -> None:
    """Refuse a model with a NaN or infinite weight, naming the file and the first such tensor. A
    file can be damaged without changing its size; a model can be saved after its training
    diverged. Either way every loss computed from it would be NaN, and the first training step
    would blame the data rows instead."""
    found = first_non_finite(model.named_parameters())
    if found is None:
        return
    name, bad, total = found
    where = _file_holding(resolve_source(name_or_path), name)
    raise UserError(f"{what} '{name_or_path}' has non-finite weights: '{name}' (in {where}) holds {bad} NaN or "
                    f"infinite value{'s' if bad > 1 else ''} of {total}; the file is damaged, or was saved after a "
                    "training run diverged")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt",
                   "spiece.model", "sentencepiece.bpe.model")


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """Load a tokenizer; give it a pad token (EOS) when it has none. Padding is on the right."""
    from transformers import AutoTokenizer

    source = resolve_source(name_or_path)
    folder = Path(str(source)).expanduser()
    if folder.is_dir() and (folder / "config.json").is_file() and not any((folder / f).is_file()
                                                                          for f in TOKENIZER_FILES):
        raise UserError(f"cannot load tokenizer from '{name_or_path}': the folder has no tokenizer files (none of "
                        f"{', '.join(TOKENIZER_FILES)}); save the model's tokenizer into it (tokenizer.save_pretrained)")
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as e:  # any failure to read the user's files is theirs to fix, not a crash
        raise load_failed("tokenizer", name_or_path, e) from None
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise UserError(f"tokenizer of '{name_or_path}' has neither a pad nor an EOS token")
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def load_model(name_or_path: str, dtype: str = "fp32", trust_remote_code: bool = False):
    """Load a causal LM (safetensors preferred) with weights in ``dtype``: 'fp32', 'bf16', or
    'fp64' (for numerical checks)."""
    from transformers import AutoModelForCausalLM

    if dtype not in DTYPES:
        raise UserError(f"dtype must be one of {sorted(DTYPES)}, got '{dtype}'")
    source = resolve_source(name_or_path)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code)
    except Exception as e:  # any failure to read the user's files is theirs to fix, not a crash
        raise load_failed("model", name_or_path, e) from None
    check_finite_weights(model, name_or_path)
    return model


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every dropout probability to zero (dropout layers and attention dropout)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def add_lora(model, settings: LoraSettings):
    """Wrap ``model`` with a trainable LoRA adapter; the base weights are frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        task_type="CAUSAL_LM",
    )
    try:
        with warnings.catch_warnings():
            # peft 0.21 asks the model `is_gradient_checkpointing` (to make inputs require grads when it
            # is on); transformers 5 deprecates that name for `is_activation_checkpointing`, which
            # alignlab uses. The answer is always False here, since checkpointing is switched on after
            # the adapter (training/run.py). Only that one question is silenced, only for this call;
            # drop this once peft asks the new name.
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                                    category=FutureWarning)
            return get_peft_model(model, config)
    except ValueError as e:
        raise UserError(f"cannot add LoRA adapter: {e}") from None


def is_lora(model) -> bool:
    from peft import PeftModel

    return isinstance(model, PeftModel)


class Reference:
    """The reference policy: the policy as it is when this is made, frozen. A frozen copy of it,
    or, with LoRA, the same network with its adapter disabled (no second copy in memory); or a
    model of its own (``frozen``: a reference model loaded from elsewhere).
    Calling it gives a context that yields the module to run (under no_grad)."""

    def __init__(self, policy: torch.nn.Module, frozen: torch.nn.Module | None = None):
        self.policy = policy
        if frozen is not None:
            self._copy = frozen.eval().requires_grad_(False)
        else:
            self._copy = None if is_lora(policy) else copy.deepcopy(policy).eval().requires_grad_(False)

    @property
    def own(self) -> torch.nn.Module | None:
        """The reference's module of its own (a copy or a loaded model); None with LoRA."""
        return self._copy

    @contextlib.contextmanager
    def model(self, policy_unwrapped: torch.nn.Module | None = None) -> Iterator[torch.nn.Module]:
        """Yield the module to run for reference log-probs or samples (under no_grad)."""
        policy = self.policy if policy_unwrapped is None else policy_unwrapped
        with torch.no_grad():
            if self._copy is not None:
                yield self._copy
            else:
                with policy.disable_adapter():
                    yield policy

    def __call__(self) -> contextlib.AbstractContextManager[torch.nn.Module]:
        return self.model()


class LazyReference:
    """A ``Reference`` made on first use, so that a run whose reference values all come from a
    cache never copies the model. ``get`` makes it now (before training changes the policy);
    ``release`` drops it once nothing needs it."""

    def __init__(self, policy: torch.nn.Module, load: Callable[[], torch.nn.Module] | None = None):
        """``load``: makes a reference model of its own (a ``reference_model``) instead of the copy."""
        self.policy = policy
        self.load = load
        self._made: Reference | None = None

    def get(self) -> Reference:
        if self._made is None:
            self._made = Reference(self.policy, self.load() if self.load is not None else None)
        return self._made

    def release(self) -> None:
        self._made = None

    def __call__(self) -> contextlib.AbstractContextManager[torch.nn.Module]:
        return self.get().model()


def _plain_layer(module):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return module.get_base_layer() if isinstance(module, BaseTunerLayer) else module


def lora_unties_embeddings(model) -> bool:
    """Whether ``model`` is a PEFT LoRA model whose merged adapter gives its output layer a weight
    of its own: the input and output embeddings share one weight (tied) and the adapter changes
    one of them (a LoRA on the output layer or the embeddings, or a trained copy of either)."""
    if not is_lora(model):
        return False
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    network = model.get_base_model()
    embed, head = network.get_input_embeddings(), network.get_output_embeddings()
    adapted = (BaseTunerLayer, AuxiliaryTrainingWrapper)
    return (embed is not None and head is not None and _plain_layer(head).weight is _plain_layer(embed).weight
            and (isinstance(embed, adapted) or isinstance(head, adapted)))


def untie(config) -> None:
    """Set ``config`` (and its text model's, where it has one) to untied input and output embeddings."""
    for c in {id(c): c for c in (config, config.get_text_config())}.values():
        c.tie_word_embeddings = False


def merged_lora(model):
    """A plain model computing what the PEFT LoRA ``model`` computes: a copy with its adapter merged
    in (``model`` is not touched). Where merging unties the embeddings (``lora_unties_embeddings``)
    the copy's output layer first gets a weight of its own and its config says untied: peft merges
    into the weight in place, so the adapter of one layer would change the other too."""
    merged = copy.deepcopy(model)
    if lora_unties_embeddings(merged):
        network = merged.get_base_model()
        head = _plain_layer(network.get_output_embeddings())
        head.weight = torch.nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
        untie(network.config)
    return merged.merge_and_unload()


def save_model(model, tokenizer, out_dir: str | os.PathLike, merge_lora: bool = False) -> Path:
    """Save so that ``from_pretrained`` loads it. LoRA: the adapter directory, and with
    ``merge_lora`` a ``merged/`` subdirectory holding full merged weights."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_pretrained(model, out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if merge_lora and is_lora(model):
        merged = merged_lora(model)
        save_pretrained(merged, out / "merged", safe_serialization=True)
        tokenizer.save_pretrained(out / "merged")
    return out

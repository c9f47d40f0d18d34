"""The vLLM backend without vLLM: its refusals, the weights it pushes (names and LoRA merges,
against peft's own merge), the sampling settings it asks for, and the whole generator run on a fake
engine that samples with the tiny model on the CPU.

The fakes have the attribute shape of vLLM 0.32.0, the release the backend targets:
``vllm.logprobs.Logprob`` (``logprob``, ``rank``, ``decoded_token``), ``vllm.outputs.CompletionOutput``
(``index``, ``text``, ``token_ids``, ``cumulative_logprob``, ``logprobs``: per position a dict token
id -> Logprob, ``finish_reason``, ``stop_reason``), ``vllm.outputs.RequestOutput``
(``request_id``, ``prompt``, ``prompt_token_ids``, ``prompt_logprobs``: None then a dict per
position, ``outputs``, ``finished``), and of ``vllm.LLM`` what the backend calls: ``generate(prompts,
sampling_params, use_tqdm=...)``, ``collective_rpc(method, args=...)`` (``method(worker, *args)`` on
each worker, whose ``model_runner.get_model()`` has ``load_weights`` and ``named_parameters``),
``reset_prefix_cache()`` and ``llm_engine.model_config.max_model_len``. Checked once by hand on the
real classes (vLLM 0.32.0 installed on a CPU machine, where its engine cannot run):
``sample_from_completion`` and ``with_scored_logprobs`` give the same samples from them, with the
list and the flat (``FlatLogprobs``) layout of ``logprobs`` alike, and ``vllm.SamplingParams``
accepts ``sampling_kwargs`` and ``scoring_kwargs`` as they are.
"""

from __future__ import annotations

import copy
import inspect
import sys
import types
from dataclasses import dataclass, field

import pytest
import torch

from alignlab.errors import UserError
from alignlab.generation import SamplingParams, make_generator
from alignlab.generation import vllm as backend
from alignlab.generation.factory import OPTIONS
from alignlab.models import (
    LoraSettings,
    TinyModelConfig,
    add_lora,
    build_tiny_model,
    load_model,
    load_tokenizer,
)

PROMPTS = ["1+1=", "a much longer prompt than the first one", "xy"]


@pytest.fixture(scope="module")
def model_tok(tiny_model_dir):
    return load_model(str(tiny_model_dir)).eval(), load_tokenizer(str(tiny_model_dir))


def randomize(model, names: tuple[str, ...], seed: int = 0, scale: float = 0.5) -> None:
    """Add noise to every parameter whose name contains one of ``names`` (e.g. LoRA B matrices,
    which start at zero, so that a merge has something to merge)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(n in name for n in names):
                p.add_(scale * torch.randn(p.shape, generator=gen))


# ----------------------------------------------------------------------------- refusals

def test_without_vllm_the_backend_is_a_one_line_user_error_saying_how_to_install(model_tok, tiny_model_dir,
                                                                                 monkeypatch):
    model, tok = model_tok
    monkeypatch.setattr(backend, "find_spec", lambda name: None)
    with pytest.raises(UserError) as err:
        make_generator(model, tok, "vllm", model_path=tiny_model_dir)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("the vllm generation backend needs vLLM, which is not installed; install it "
                                     'on a CUDA machine with: pip install "vllm==0.32.0"')


def test_without_a_gpu_the_backend_is_a_one_line_user_error(model_tok, tiny_model_dir, monkeypatch):
    model, tok = model_tok
    monkeypatch.setattr(backend, "find_spec", lambda name: object())  # as if vLLM were installed
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"^the vllm generation backend needs a CUDA GPU and torch sees none; use "
                                        r"the 'hf' backend on this machine$"):
        make_generator(model, tok, "vllm", model_path=tiny_model_dir)


def test_the_model_directory_is_model_path_or_the_policys_own(model_tok, tiny_model_dir, tmp_path):
    model, tok = model_tok
    assert backend.model_directory(model) == str(tiny_model_dir.resolve())  # load_model's name_or_path
    assert backend.model_directory(torch.nn.DataParallel(model)) == str(tiny_model_dir.resolve())
    assert backend.model_directory(add_lora(copy.deepcopy(model), LoraSettings(r=2))) == str(tiny_model_dir.resolve())
    built, _ = build_tiny_model(TinyModelConfig(hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32))
    assert backend.model_directory(built, tiny_model_dir) == str(tiny_model_dir.resolve())
    with pytest.raises(UserError, match=r"name_or_path \(''\) is not one: pass model_path=DIR"):
        backend.model_directory(built)
    with pytest.raises(UserError, match="is not a model directory \\(it has no config.json\\)"):
        backend.model_directory(model, tmp_path)


@pytest.mark.parametrize(("options", "message"), [
    ({"gpu_memory_utilization": 0.0}, "gpu_memory_utilization must be in \\(0, 1\\], got 0.0"),
    ({"tensor_parallel_size": 0}, "tensor_parallel_size must be >= 1, got 0"),
    ({"logprobs_mode": "raw"}, "logprobs_mode must be one of raw_logprobs, processed_logprobs, got 'raw'"),
    ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
])
def test_bad_options_are_refused_before_any_engine(model_tok, tiny_model_dir, options, message):
    model, tok = model_tok
    with pytest.raises(UserError, match=message):
        make_generator(model, tok, "vllm", model_path=tiny_model_dir, **options)


def test_the_factory_lists_exactly_the_generators_options():
    params = list(inspect.signature(backend.VLLMGenerator).parameters)
    assert params[:2] == ["model", "tokenizer"]
    assert sorted(OPTIONS["vllm"]) == sorted(params[2:])


# ----------------------------------------------------------------------------- weights

def test_a_plain_models_weights_are_its_checkpoint_keys_and_its_own_tensors(model_tok, tiny_model_dir):
    from safetensors import safe_open

    model, _ = model_tok
    weights = dict(backend.policy_weights(model))
    with safe_open(str(tiny_model_dir / "model.safetensors"), "pt") as f:
        assert sorted(weights) == sorted(f.keys())
    params = dict(model.named_parameters())
    assert all(weights[n].data_ptr() == params[n].data_ptr() and not weights[n].requires_grad for n in weights)


def test_wrappers_are_looked_through(model_tok, tmp_path):
    """DDP, DataParallel and torch.compile are unwrapped, and the names activation checkpointing
    inserts are dropped: the same names and tensors as the bare model."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    model, _ = model_tok
    bare = {n: t.data_ptr() for n, t in backend.policy_weights(model)}
    assert {n: t.data_ptr() for n, t in backend.policy_weights(torch.nn.DataParallel(torch.compile(model)))} == bare
    wrapped = copy.deepcopy(model)
    wrapped.model.layers = torch.nn.ModuleList([checkpoint_wrapper(layer) for layer in wrapped.model.layers])
    assert any("_checkpoint_wrapped_module" in n for n, _ in wrapped.named_parameters())
    weights = dict(backend.policy_weights(torch.compile(wrapped)))
    assert sorted(weights) == sorted(bare)
    assert all(torch.equal(weights[n], p) for n, p in model.named_parameters())
    torch.distributed.init_process_group("gloo", store=torch.distributed.FileStore(str(tmp_path / "store"), 1),
                                         rank=0, world_size=1)
    try:
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        assert {n: t.data_ptr() for n, t in backend.policy_weights(ddp)} == bare
    finally:
        torch.distributed.destroy_process_group()


def test_tied_embeddings_are_given_once():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    names = [n for n, _ in backend.policy_weights(model)]
    assert names == [n for n, _ in model.named_parameters()] and "lm_head.weight" not in names


def merged_by_peft(policy) -> dict[str, torch.Tensor]:
    return copy.deepcopy(policy).merge_and_unload().state_dict()


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("settings", [
    {"target_modules": ["q_proj", "v_proj", "down_proj", "embed_tokens"]},
    {"target_modules": ["q_proj", "k_proj"], "use_dora": True},
    {"target_modules": ["o_proj"], "use_rslora": True, "modules_to_save": ["lm_head"]},
], ids=["lora", "dora", "rslora-modules-to-save"])
def test_a_lora_policy_is_merged_as_peft_merges_it_without_touching_it(model_tok, settings):
    from peft import LoraConfig, get_peft_model

    model, _ = model_tok
    policy = get_peft_model(copy.deepcopy(model), LoraConfig(r=4, lora_alpha=8, task_type="CAUSAL_LM", **settings))
    randomize(policy, ("lora_B", "lora_embedding_A", "modules_to_save"))  # peft starts these at 0
    before = snapshot(policy)
    expected = merged_by_peft(policy)
    weights = dict(backend.policy_weights(policy))
    assert sorted(weights) == sorted(expected)
    for name, value in weights.items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)
    assert set(weights) == set(dict(backend.policy_weights(model)))  # the base model's names
    changed = {n.split(".")[-2] for n, p in model.named_parameters() if not torch.equal(weights[n], p)}
    assert changed == set(settings["target_modules"] + settings.get("modules_to_save", []))
    after = snapshot(policy)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert not any(getattr(m, "merged", False) for m in policy.modules())


def test_an_adapter_already_merged_is_not_merged_twice(model_tok):
    model, _ = model_tok
    policy = add_lora(copy.deepcopy(model), LoraSettings(r=4, target_modules=["q_proj"]))
    randomize(policy, ("lora_B",))
    expected = merged_by_peft(policy)
    for module in policy.modules():
        if hasattr(module, "merge") and hasattr(module, "lora_A"):
            module.merge()
    weights = dict(backend.policy_weights(policy))
    for name, value in weights.items():
        torch.testing.assert_close(value, expected[name], msg=name)


def test_another_tuner_than_lora_is_refused(model_tok):
    from peft import IA3Config, get_peft_model

    model, _ = model_tok
    policy = get_peft_model(copy.deepcopy(model), IA3Config(target_modules=["k_proj", "down_proj"],
                                                            feedforward_modules=["down_proj"], task_type="CAUSAL_LM"))
    with pytest.raises(UserError, match=r"^update_weights merges LoRA adapters only; 'model.layers.0.self_attn.k_proj' "
                                        r"is a Linear$"):
        list(backend.policy_weights(policy))


def test_weights_are_handed_over_in_chunks_of_bounded_size():
    weights = [(str(i), torch.zeros(n)) for i, n in enumerate([3, 3, 10, 1, 1, 1])]  # float32: 4 bytes each
    chunks = list(backend.weight_chunks(weights, max_bytes=24))
    assert [[name for name, _ in chunk] for chunk in chunks] == [["0", "1"], ["2"], ["3", "4", "5"]]
    assert all(t is w for (_, t), (_, w) in zip([x for chunk in chunks for x in chunk], weights, strict=True))


# ----------------------------------------------------------------------------- sampling settings

def test_sampling_kwargs_ask_for_one_seeded_sample_with_its_log_prob_and_nothing_else():
    params = SamplingParams(max_new_tokens=9, temperature=0.7, top_p=0.9, top_k=20, seed=5)
    assert backend.sampling_kwargs(params, 3, 1, eos=2) == {
        "n": 1, "max_tokens": 9, "temperature": 0.7, "top_p": 0.9, "top_k": 20,
        "seed": backend.request_seed(5, 3, 1), "stop_token_ids": [2], "ignore_eos": True, "logprobs": 0,
        "detokenize": False, "min_p": 0.0, "min_tokens": 0, "repetition_penalty": 1.0, "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
    }
    greedy = backend.sampling_kwargs(SamplingParams(temperature=0.0, top_p=0.5, top_k=3), 0, 0, eos=None)
    assert (greedy["temperature"], greedy["top_p"], greedy["top_k"], greedy["seed"], greedy["stop_token_ids"]) == (
        0.0, 1.0, 0, None, [])
    assert backend.sampling_kwargs(SamplingParams(), 0, 0, eos=2)["top_k"] == 0  # alignlab's "no cut" is vLLM's


def test_each_sample_has_its_own_seed_and_the_same_triple_the_same_seed():
    seeds = {backend.request_seed(7, i, j) for i in range(20) for j in range(20)}
    assert len(seeds) == 400 and all(0 <= s < 2**63 for s in seeds)
    assert backend.request_seed(7, 3, 4) == backend.request_seed(7, 3, 4) != backend.request_seed(8, 3, 4)
    assert backend.request_seed(0, 1, 0) != backend.request_seed(0, 0, 1)


def test_temperatures_vllm_would_raise_are_refused():
    with pytest.raises(UserError, match="temperatures of 0.01 or more .* got 0.005; use 0 for greedy"):
        backend.sampling_kwargs(SamplingParams(temperature=0.005), 0, 0, eos=2)
    assert backend.sampling_kwargs(SamplingParams(temperature=0.01), 0, 0, eos=2)["temperature"] == 0.01


# ----------------------------------------------------------------------------- vLLM-shaped outputs

@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list[dict[int, Logprob] | None] | None
    outputs: list[CompletionOutput]
    finished: bool = True


def completion(tokens: list[int], values: list[float]) -> CompletionOutput:
    positions = [{t: Logprob(v, rank=1)} for t, v in zip(tokens, values, strict=True)]
    return CompletionOutput(0, "", tokens, sum(values), positions, "stop")


def decode(ids) -> str:
    return "|".join(map(str, ids))


TEMPERED = SamplingParams(temperature=0.7, top_k=5)


@pytest.mark.parametrize(("params", "mode", "logprobs", "sampling"), [
    (SamplingParams(temperature=0.0), "raw_logprobs", "reported", "zeros"),
    (SamplingParams(temperature=0.0), "processed_logprobs", "reported", "zeros"),
    (SamplingParams(), "raw_logprobs", "reported", "reported"),
    (SamplingParams(), "processed_logprobs", "reported", "reported"),
    (TEMPERED, "raw_logprobs", "reported", "empty"),
    (TEMPERED, "processed_logprobs", "empty", "reported"),
])
def test_which_field_holds_the_reported_log_probs(params, mode, logprobs, sampling):
    values = [-0.5, -1.5, -0.25]
    sample = backend.sample_from_completion(completion([5, 7, 9], values), (1, 4), 2, decode, params, mode)
    kinds = {"reported": tuple(values), "zeros": (0.0, 0.0, 0.0), "empty": ()}
    assert (sample.logprobs, sample.sampling_logprobs) == (kinds[logprobs], kinds[sampling])
    assert backend.needs_scoring(params, mode) == (logprobs == "empty")


def test_a_sample_ends_at_its_first_eos_which_its_text_leaves_out():
    out = completion([5, 2, 9], [-0.5, -1.5, -0.25])  # vLLM stops on EOS; a token after it is never kept
    sample = backend.sample_from_completion(out, (1, 4), 2, decode, SamplingParams(), "raw_logprobs")
    assert (sample.text, sample.prompt_ids, sample.token_ids, sample.finished, sample.logprobs) == (
        "5", (1, 4), (5, 2), True, (-0.5, -1.5))
    capped = backend.sample_from_completion(completion([5, 6], [-0.5, -1.0]), (1,), 2, decode, SamplingParams(),
                                            "raw_logprobs")
    assert (capped.text, capped.finished) == ("5|6", False)


def test_missing_log_probs_are_an_error():
    out = completion([5, 6], [-0.5, -1.0])
    out.logprobs = out.logprobs[:1]
    with pytest.raises(RuntimeError, match="vLLM reported log-probs for 1 of 2 sampled tokens"):
        backend.sample_from_completion(out, (1,), 2, decode, SamplingParams(), "raw_logprobs")


def test_the_teacher_forced_pass_is_read_at_the_samples_positions():
    sample = backend.sample_from_completion(completion([5, 2], [-0.5, -1.5]), (1, 4), 2, decode, TEMPERED,
                                            "processed_logprobs")
    scored = RequestOutput("0", None, [1, 4, 5, 2], [None, {4: Logprob(-3.0)}, {5: Logprob(-0.75)}, {2: Logprob(-2.5)}],
                           [])
    assert backend.with_scored_logprobs(sample, scored).logprobs == (-0.75, -2.5)


# ----------------------------------------------------------------------------- the generator on a fake engine

def processed_logits(logits: torch.Tensor, params) -> torch.Tensor:
    """What vLLM samples from: logits / temperature, top-k cut, then top-p over what is left (the
    smallest tail whose mass stays within 1 - top_p is cut, the top token always kept)."""
    logits = logits / params.temperature
    if 0 < params.top_k < logits.numel():
        logits = logits.masked_fill(logits < logits.topk(params.top_k).values[-1], float("-inf"))
    if params.top_p < 1:
        ordered, order = logits.sort()
        cut = ordered.softmax(-1).cumsum(-1) <= 1 - params.top_p
        cut[-1] = False
        logits = logits.clone()
        logits[order[cut]] = float("-inf")
    return logits


@dataclass
class FakeModelRunner:
    model: torch.nn.Module

    def get_model(self):
        return self

    def named_parameters(self):
        return self.model.named_parameters()

    def load_weights(self, weights) -> set[str]:
        params = dict(self.model.named_parameters())
        loaded = set()
        for name, tensor in weights:
            params[name].data.copy_(tensor)
            loaded.add(name)
        return loaded


@dataclass
class FakeLLM:
    """vllm.LLM for the tiny model on the CPU: each request samples step by step (no cache) with a
    generator seeded by its seed, reporting raw or processed log-probs as the engine's
    ``logprobs_mode`` says; a request with ``prompt_logprobs`` reports the prompt's (raw) ones."""

    kwargs: dict
    model: torch.nn.Module = None
    requests: list = field(default_factory=list)
    resets: int = 0
    bars: list = field(default_factory=list)

    def __post_init__(self):
        self.model = load_model(self.kwargs["model"]).eval()
        self.llm_engine = types.SimpleNamespace(model_config=types.SimpleNamespace(
            max_model_len=self.kwargs.get("max_model_len", self.model.config.max_position_embeddings)))

    def collective_rpc(self, method, args=()):
        return [method(types.SimpleNamespace(model_runner=FakeModelRunner(self.model)), *args)]

    def reset_prefix_cache(self):
        self.resets += 1

    def generate(self, prompts, sampling_params, use_tqdm=True):
        assert len(prompts) == len(sampling_params)
        if callable(use_tqdm):
            bar = use_tqdm(total=len(prompts), desc="Processed prompts", dynamic_ncols=True)
            self.bars.append(bar.desc)
            bar.close()
        self.requests.extend(zip(prompts, sampling_params, strict=True))
        return [self._one(list(p["prompt_token_ids"]), sp) for p, sp in zip(prompts, sampling_params, strict=True)]

    def _logits(self, ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return self.model(input_ids=torch.tensor([ids])).logits[0].float()

    def _one(self, prompt: list[int], sp) -> RequestOutput:
        if getattr(sp, "prompt_logprobs", None) is not None:
            logp = self._logits(prompt).log_softmax(-1)
            scored = [None] + [{t: Logprob(float(logp[k - 1, t]))} for k, t in enumerate(prompt) if k]
            return RequestOutput("0", None, prompt, scored, [completion([int(logp[-1].argmax())], [0.0])])
        gen = torch.Generator().manual_seed(sp.seed) if sp.seed is not None else None
        tokens, values = [], []
        for _ in range(sp.max_tokens):
            logits = self._logits(prompt + tokens)[-1]
            if sp.temperature == 0:
                token, processed = int(logits.argmax()), logits
            else:
                processed = processed_logits(logits, sp)
                token = int(torch.multinomial(processed.softmax(-1), 1, generator=gen))
            shown = logits if self.kwargs["logprobs_mode"] == "raw_logprobs" else processed
            tokens.append(token)
            values.append(float(shown.log_softmax(-1)[token]))
            if token in sp.stop_token_ids:
                break
        return RequestOutput("0", None, prompt, None, [completion(tokens, values)])


@pytest.fixture
def fake_vllm(monkeypatch):
    """``import vllm`` finds a module whose LLM is FakeLLM (recording its engine) and whose
    SamplingParams is a namespace; vLLM counts as installed on a GPU machine."""
    engines: list[FakeLLM] = []

    def llm(**kwargs):
        engines.append(FakeLLM(kwargs))
        return engines[-1]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=llm, SamplingParams=types.SimpleNamespace))
    monkeypatch.setattr(backend, "require_vllm", lambda: None)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)  # restored after the test
    return engines


def token_logps_by_hand(model, prompt_ids, token_ids) -> list[float]:
    """log_softmax of one forward pass over prompt + response at each response token."""
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([list(prompt_ids) + list(token_ids)])).logits[0].double(), -1)
    return [float(logp[len(prompt_ids) - 1 + i, t]) for i, t in enumerate(token_ids)]


def test_the_engine_is_built_in_this_process_from_the_directory_with_neutral_settings(model_tok, tiny_model_dir,
                                                                                     fake_vllm):
    import os

    model, tok = model_tok
    make_generator(model, tok, "vllm", model_path=tiny_model_dir, dtype="float32", max_model_len=64, batch_size=8,
                   logprobs_mode="processed_logprobs", engine_args={"max_num_batched_tokens": 512})
    (engine,) = fake_vllm
    assert engine.kwargs == {
        "model": str(tiny_model_dir.resolve()), "tokenizer": tok.name_or_path, "dtype": "float32",
        "gpu_memory_utilization": 0.4, "tensor_parallel_size": 1, "enable_prefix_caching": True, "seed": 0,
        "logprobs_mode": "processed_logprobs", "enforce_eager": False, "generation_config": "vllm",
        "max_model_len": 64, "max_num_seqs": 8, "max_num_batched_tokens": 512,
    }
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"


def test_greedy_samples_are_the_hf_backends_one_request_per_prompt(model_tok, fake_vllm):
    model, tok = model_tok
    gen = make_generator(model, tok, "vllm", progress="sampling")
    params = SamplingParams(max_new_tokens=7, temperature=0.0)
    rows = gen.generate(PROMPTS, 3, params)
    hf_rows = make_generator(model, tok).generate(PROMPTS, 1, params)
    assert len(fake_vllm[0].requests) == len(PROMPTS) and fake_vllm[0].bars == ["sampling"]
    for row, (hf,) in zip(rows, hf_rows, strict=True):
        assert [s.token_ids for s in row] == [hf.token_ids] * 3
        assert (row[0].text, row[0].prompt_ids, row[0].finished) == (hf.text, hf.prompt_ids, hf.finished)
        assert row[0].logprobs == pytest.approx(hf.logprobs, abs=1e-5)
        assert row[0].sampling_logprobs == (0.0,) * len(hf.token_ids)


def test_sampled_log_probs_are_the_models_raw_ones_and_seeds_make_samples_repeat(model_tok, fake_vllm):
    model, tok = model_tok
    gen = make_generator(model, tok, "vllm")
    params = SamplingParams(max_new_tokens=6, temperature=0.7, top_k=20, seed=3)
    rows = gen.generate(PROMPTS, 2, params)
    for row in rows:
        for s in row:
            assert s.logprobs == pytest.approx(token_logps_by_hand(model, s.prompt_ids, s.token_ids), abs=1e-5)
            assert s.sampling_logprobs == ()
    seeds = [sp.seed for _, sp in fake_vllm[0].requests]
    assert seeds == [backend.request_seed(3, i, j) for i in range(3) for j in range(2)]
    assert gen.generate(PROMPTS, 2, params) == rows
    assert gen.generate(PROMPTS, 2, SamplingParams(max_new_tokens=6, temperature=0.7, top_k=20, seed=4)) != rows


def test_processed_mode_reports_the_sampling_distribution_and_scores_the_raw_one(model_tok, fake_vllm):
    model, tok = model_tok
    gen = make_generator(model, tok, "vllm", logprobs_mode="processed_logprobs")
    params = SamplingParams(max_new_tokens=6, temperature=0.5, top_p=0.8, top_k=30, seed=1)
    rows = gen.generate(PROMPTS, 2, params)
    assert len(fake_vllm[0].requests) == 2 * 6  # the samples, then one teacher-forced pass each
    for s in (s for row in rows for s in row):
        assert s.logprobs == pytest.approx(token_logps_by_hand(model, s.prompt_ids, s.token_ids), abs=1e-5)
        ids = torch.tensor([list(s.prompt_ids + s.token_ids)])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(s.prompt_ids) - 1:-1].float()
        by_hand = [float(processed_logits(row, params).log_softmax(-1)[t]) for row, t in zip(logits, s.token_ids,
                                                                                              strict=True)]
        assert s.sampling_logprobs == pytest.approx(by_hand, abs=1e-5)
    # Temperature 1 and no cut: the processed log-probs are the raw ones, and no second pass runs.
    fake_vllm[0].requests.clear()
    (row,) = gen.generate(["xy"], 2, SamplingParams(max_new_tokens=4, seed=2))
    assert len(fake_vllm[0].requests) == 2 and all(s.logprobs == s.sampling_logprobs for s in row)


def test_prompts_the_engine_cannot_take_are_a_user_error(model_tok, fake_vllm):
    model, tok = model_tok
    gen = make_generator(model, tok, "vllm", max_model_len=12)
    with pytest.raises(UserError, match="prompt 1 has 12 tokens; the vllm engine takes fewer than 12 "
                                        "\\(max_model_len 12\\)"):
        gen.generate_ids([(1, 2), tuple(range(3, 15))], 1, SamplingParams(max_new_tokens=2))
    processed = make_generator(model, tok, "vllm", max_model_len=12, logprobs_mode="processed_logprobs")
    with pytest.raises(UserError, match="takes fewer than 4 \\(max_model_len 12 less max_new_tokens 8 for the "
                                        "second pass of processed_logprobs\\)"):
        processed.generate_ids([(1, 2, 3, 4)], 1, SamplingParams(max_new_tokens=8, temperature=0.5))
    with pytest.raises(UserError, match="n must be >= 1"):
        gen.generate_ids([(1, 2)], 0, SamplingParams())


def test_update_weights_pushes_the_policys_weights_and_drops_the_prefix_cache(model_tok, fake_vllm):
    model, tok = model_tok
    policy = copy.deepcopy(model)
    gen = make_generator(policy, tok, "vllm")
    engine = fake_vllm[0]
    assert engine.resets == 1  # the weights were pushed once at construction
    randomize(policy, ("lm_head", "layers.1.mlp"), seed=5)
    params = SamplingParams(max_new_tokens=6, temperature=0.0)
    assert gen.generate(PROMPTS, 1, params) != make_generator(policy, tok).generate(PROMPTS, 1, params)
    gen.update_weights(policy)
    assert engine.resets == 2
    assert all(torch.equal(p, dict(policy.named_parameters())[n]) for n, p in engine.model.named_parameters())
    for (v,), (h,) in zip(gen.generate(PROMPTS, 1, params), make_generator(policy, tok).generate(PROMPTS, 1, params),
                          strict=True):
        assert (v.token_ids, v.text) == (h.token_ids, h.text)
        assert v.logprobs == pytest.approx(h.logprobs, abs=1e-5)


def test_update_weights_merges_a_lora_policy_into_the_engine(model_tok, fake_vllm):
    model, tok = model_tok
    policy = add_lora(copy.deepcopy(model), LoraSettings(r=4, target_modules=["q_proj", "v_proj", "up_proj"]))
    randomize(policy, ("lora_B",), seed=7)
    make_generator(policy, tok, "vllm")
    expected = merged_by_peft(policy)
    for name, p in fake_vllm[0].model.named_parameters():
        assert torch.equal(p, expected[name]), name


def test_a_policy_that_leaves_engine_parameters_unwritten_is_a_user_error(model_tok, tiny_model_dir, fake_vllm):
    _, tok = model_tok
    smaller, _ = build_tiny_model(TinyModelConfig(hidden_size=64, num_layers=1, num_heads=4, intermediate_size=128))
    with pytest.raises(UserError, match=r"^update_weights: the vllm engine's parameter 'model.layers.1.[a-z_.]+' "
                                        r"\(worker 0; 9 in all\) got no value from the policy"):
        make_generator(smaller, tok, "vllm", model_path=tiny_model_dir)


@pytest.mark.parametrize("targets,refused", [(["q_proj", "lm_head"], True), (["embed_tokens", "v_proj"], True),
                                             (["q_proj", "v_proj"], False)])
def test_a_lora_on_tied_embeddings_is_refused_before_a_vllm_engine_drops_it(tied_model_dir, targets, refused):
    """On a model whose output layer and input embeddings share one weight, a LoRA on either makes
    the merged output layer a weight of its own, which a vLLM engine built from the (tied)
    directory would skip: ``refuse_tied_lora`` stops it in one line, and lets a LoRA elsewhere
    (or an untied model) through. The native backend samples such a policy correctly
    (``tests/test_models.py``)."""
    model = add_lora(load_model(str(tied_model_dir)), LoraSettings(r=2, target_modules=targets))
    if refused:
        with pytest.raises(UserError, match=r"^vllm: the policy's output layer shares its weight with the input "
                                            r"embeddings \(tied\)"):
            backend.refuse_tied_lora(model)
    else:
        backend.refuse_tied_lora(model)

"""The native backend against Hugging Face ``generate``, a plain forward pass and its own promises
(batch-independent draws, continuous batching, stopping, fallback)."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from alignlab.errors import UserError
from alignlab.generation import SamplingParams, make_generator
from alignlab.generation import decode_pass as decode_pass_mod
from alignlab.generation import slots as slots_mod
from alignlab.generation.hf import HFGenerator
from alignlab.generation.native import NativeGenerator, decode_pass_ok, unsupported
from alignlab.generation.slots import SlotCache

VOCAB = 96
EOS, PAD = 2, 0


class Tok:
    """The part of a tokenizer the backends use (token ids are made by the tests)."""

    eos_token_id, pad_token_id, bos_token_id = EOS, PAD, 1
    chat_template = None

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(str(i) for i in ids if not (skip_special_tokens and i == EOS))


def llama(seed: int = 0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         eos_token_id=EOS, pad_token_id=PAD, bos_token_id=1)
    model = LlamaForCausalLM(config).eval()
    _sharpen(model)
    return model


def qwen2():
    torch.manual_seed(1)
    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         eos_token_id=EOS, pad_token_id=PAD)
    model = Qwen2ForCausalLM(config).eval()
    _sharpen(model)
    return model


def mistral():
    """Mistral as its v0.2+ checkpoints configure it: no sliding window (v0.1's 4096-token window
    makes the engine hand the model to the "hf" backend; see the fallback test)."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(3)
    config = MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                           sliding_window=None, eos_token_id=EOS, pad_token_id=PAD)
    model = MistralForCausalLM(config).eval()
    _sharpen(model)
    return model


def gpt2():
    torch.manual_seed(2)
    config = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                        eos_token_id=EOS, bos_token_id=1)
    model = GPT2LMHeadModel(config).eval()
    _sharpen(model)
    return model


def _sharpen(model) -> None:
    """Scale the output layer so the distributions are far from uniform (greedy ties impossible,
    sampling tests meaningful) but not so sharp that samples repeat."""
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        if model.config.tie_word_embeddings:  # keep the input embeddings as they were
            model.get_output_embeddings().weight = torch.nn.Parameter(head.detach().clone())
            head = model.get_output_embeddings().weight
        head.mul_(1.0 / head.std())
        head[EOS] *= 0.1  # a middling end-of-sequence logit: tests choose their stop tokens


def contexts(lengths=(5, 11, 2, 17, 8, 3, 13)) -> list[tuple[int, ...]]:
    """Ragged prompts of token ids 3..VOCAB-1."""
    return [tuple(3 + (7 * k + 5 * i) % (VOCAB - 3) for i in range(n)) for k, n in enumerate(lengths)]


@pytest.fixture(params=["gathered", "group layout"])
def attention(request, monkeypatch):
    """Each decode attention way of ``slots.attend``: the small-cache default (each slot's prompt
    keys gathered beside its own) and the group layout (forced by a byte limit below any cache)."""
    if request.param == "group layout":
        monkeypatch.setattr(slots_mod, "GATHER_BYTES", -1)
    return request.param


def teacher_forced(model, context, tokens) -> torch.Tensor:
    """log-softmax of a plain forward pass over context + tokens, at the positions that predict tokens."""
    with torch.no_grad():
        logits = model(torch.tensor([list(context) + list(tokens)])).logits[0].float()
    return torch.log_softmax(logits[len(context) - 1:len(context) - 1 + len(tokens)], -1)


@pytest.mark.parametrize("build", [llama, qwen2, mistral, gpt2], ids=["llama", "qwen2", "mistral", "gpt2"])
def test_greedy_equals_hf_generate_token_for_token(build):
    model = build()
    assert unsupported(model) is None
    params = SamplingParams(max_new_tokens=12, temperature=0)
    ours = NativeGenerator(model, Tok(), batch_size=4).generate_ids(contexts(), 2, params)
    hf = HFGenerator(model, Tok(), batch_size=16).generate_ids(contexts(), 2, params)
    for context, mine, theirs in zip(contexts(), ours, hf, strict=True):
        for a, b in zip(mine, theirs, strict=True):
            assert a.token_ids == b.token_ids
            assert a.finished == b.finished
            raw = teacher_forced(model, context, a.token_ids)
            assert max(abs(x - raw[i, t].item()) for i, (x, t) in enumerate(zip(a.logprobs, a.token_ids, strict=True))) < 1e-5
            assert a.sampling_logprobs == (0.0,) * len(a.token_ids)


@pytest.mark.parametrize("build", [llama, gpt2], ids=["llama", "gpt2"])
def test_logprobs_equal_a_teacher_forced_forward_pass(build, attention):
    model = build()
    params = SamplingParams(max_new_tokens=10, temperature=0.8, top_k=20, top_p=0.9, seed=5)
    out = NativeGenerator(model, Tok(), batch_size=3).generate_ids(contexts(), 3, params)
    for context, samples in zip(contexts(), out, strict=True):
        for s in samples:
            raw = teacher_forced(model, context, s.token_ids)
            for i, token in enumerate(s.token_ids):
                assert abs(s.logprobs[i] - raw[i, token].item()) < 1e-5
                # the sampling distribution, built here by hand from the raw log-probs:
                # temperature, then the 20 largest, then the smallest prefix reaching mass 0.9
                z = raw[i] / 0.8
                order = torch.argsort(z, descending=True)[:20].tolist()
                p = torch.softmax(z[order], -1).tolist()
                kept, mass = [], 0.0
                for tok, q in zip(order, p, strict=True):
                    if mass >= 0.9:
                        break
                    kept.append(tok)
                    mass += q
                assert token in kept
                want = z[token] - torch.logsumexp(z[kept], -1)
                # computed from logits/0.8 of magnitude up to ~50 (float32 spacing 4e-6 there)
                assert abs(s.sampling_logprobs[i] - want.item()) < 5e-5


def test_same_seed_same_samples_whatever_the_batch_size(monkeypatch, attention):
    model = llama()
    # 8 of the 96 tokens stop a sequence: they end at different steps, so slots free up and refill
    params = SamplingParams(max_new_tokens=16, temperature=1.0, seed=11, stop_token_ids=tuple(range(3, 11)))
    grown = []  # the prompt rows start at ceil(7 / 10) = 1 and grow as slots refill with new prompts
    reserve = SlotCache.reserve_groups
    monkeypatch.setattr(SlotCache, "reserve_groups",
                        lambda self, count: (grown.append((self.groups, count)), reserve(self, count)))
    runs = [NativeGenerator(model, Tok(), batch_size=b).generate_ids(contexts(), 10, params) for b in (1, 7, 64)]
    tokens = [[[s.token_ids for s in row] for row in run] for run in runs]
    assert tokens[0] == tokens[1] == tokens[2]
    assert any(count > had for had, count in grown)
    lengths = {len(s.token_ids) for row in runs[0] for s in row}
    assert len(lengths) > 3 and any(s.finished for row in runs[0] for s in row)
    # the 10 samples of a prompt differ (one stream each); another seed gives other samples
    assert sum(len(set(row)) for row in tokens[0]) > 35  # of 70
    other = NativeGenerator(model, Tok(), batch_size=7).generate_ids(contexts(), 10, SamplingParams(
        max_new_tokens=16, seed=12, stop_token_ids=tuple(range(3, 11))))
    assert [[s.token_ids for s in row] for row in other] != tokens[0]


def test_both_decode_attention_ways_equal_softmax_attention_written_out(monkeypatch):
    """Every decode step and layer of a float64 Llama with grouped queries (4 heads over 2 key/value
    heads), ragged prompts and 5 slots that free up, refill and compact: on each live slot, both
    ways of ``attend`` equal softmax(q·kᵀ/√d)·v computed here slot by slot over the slot's prompt
    keys (its group's first prompt-length positions) and its own tokens so far (1e-12)."""
    model = llama().double()
    seen = {"steps": 0, "shared": 0}
    attend = slots_mod.attend

    def checked(cache, layer, query, scaling=None):
        plan = cache.plan
        ways = {"gathered": attend(cache, layer, query, scaling)}
        with monkeypatch.context() as m:
            m.setattr(slots_mod, "GATHER_BYTES", -1)
            ways["group layout"] = attend(cache, layer, query, scaling)
        heads, dim = query.shape[1], query.shape[3]
        rep = heads // cache.prefix_k[layer].shape[1]
        for b in plan.live_slots.tolist():
            g = int(plan.slot_groups[b])
            length = int((plan.prefix_bias[g] == 0).sum())
            steps = int(plan.steps[b]) + 1
            k = torch.cat((cache.prefix_k[layer][g, :, :length], cache.suffix_k[layer][b, :, :steps]), 1)
            v = torch.cat((cache.prefix_v[layer][g, :, :length], cache.suffix_v[layer][b, :, :steps]), 1)
            k, v = k.repeat_interleave(rep, 0), v.repeat_interleave(rep, 0)  # (heads, keys, dim)
            weights = torch.softmax((query[b, :, 0, None, :] * k).sum(-1) / dim ** 0.5, -1)
            want = (weights[..., None] * v).sum(1)  # (heads, dim)
            for name, out in ways.items():
                assert torch.allclose(out[b, 0], want, rtol=0, atol=1e-12), name
        seen["steps"] += layer == 0
        seen["shared"] += layer == 0 and len(plan.slot_groups.unique()) < len(plan.slot_groups)
        return ways["gathered"]

    monkeypatch.setattr(decode_pass_mod, "attend", checked)
    monkeypatch.setattr(slots_mod, "attend", checked)
    params = SamplingParams(max_new_tokens=9, temperature=1.0, seed=4, stop_token_ids=tuple(range(3, 14)))
    out = NativeGenerator(model, Tok(), batch_size=5).generate_ids(contexts(), 3, params)
    # 21 sequences through 5 slots: slots refill; slots of one prompt share its keys at some steps
    assert decode_pass_ok(model) and seen["steps"] > 10 and seen["shared"]
    assert len({len(s.token_ids) for row in out for s in row}) > 3


def test_prompts_sampled_in_pieces_get_the_samples_of_one_call():
    model = llama()
    params = SamplingParams(max_new_tokens=6, seed=3)
    gen = NativeGenerator(model, Tok(), batch_size=8)
    whole = gen.generate_ids(contexts(), 2, params)
    pieces = gen.generate_ids(contexts()[:3], 2, params) + gen.generate_ids(contexts()[3:], 2, params, start=3)
    assert [[s.token_ids for s in r] for r in whole] == [[s.token_ids for s in r] for r in pieces]
    shifted = gen.generate_ids(contexts()[3:], 2, params)  # numbered from 0: other streams
    assert [[s.token_ids for s in r] for r in shifted] != [[s.token_ids for s in r] for r in whole[3:]]


def test_stop_tokens_budget_and_context_limit():
    model = llama()
    gen = NativeGenerator(model, Tok(), batch_size=4)
    free = gen.generate_ids(contexts(), 1, SamplingParams(max_new_tokens=12, temperature=0))
    stop = free[1][0].token_ids[4]
    first = free[1][0].token_ids.index(stop)
    stopped = gen.generate_ids(contexts(), 1, SamplingParams(max_new_tokens=12, temperature=0,
                                                              stop_token_ids=(stop,)))
    s = stopped[1][0]
    assert s.token_ids == free[1][0].token_ids[:first + 1] and s.finished
    assert s.text == " ".join(str(t) for t in s.token_ids[:-1])
    for (r,) in free:  # each ran to its budget or stopped at the end-of-sequence token
        assert r.finished == (r.token_ids[-1] == EOS) and (r.finished or len(r.token_ids) == 12)
    # the context (128 positions) caps the generation: 120 prompt tokens leave room for 8
    long = (5,) * 120
    (capped,), = gen.generate_ids([long], 1, SamplingParams(max_new_tokens=50, temperature=0))
    assert len(capped.token_ids) == 8 and not capped.finished
    with pytest.raises(UserError, match="prompt 1 has 128 tokens; the model's context is 128"):
        gen.generate_ids([(5,), (5,) * 128], 1, SamplingParams(temperature=0))
    with pytest.raises(UserError, match="n must be >= 1"):
        gen.generate_ids([(5,)], 0, SamplingParams())


def test_greedy_copies_agree_and_training_mode_is_restored():
    model = llama().train()
    out = NativeGenerator(model, Tok(), batch_size=5).generate_ids(contexts(), 3, SamplingParams(temperature=0))
    assert model.training
    assert all(len({s.token_ids for s in row}) == 1 for row in out)


def test_factory_defaults_to_native_and_falls_back_with_a_notice(capsys):
    assert isinstance(make_generator(llama(), Tok()), NativeGenerator)
    from transformers import MistralConfig, MistralForCausalLM

    windowed = MistralForCausalLM(MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                                sliding_window=16, max_position_embeddings=128))
    gen = make_generator(windowed, Tok(), batch_size=4, prefill_tokens=64)
    assert isinstance(gen, HFGenerator)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["alignlab: the native generation backend cannot run MistralForCausalLM (sliding-window "
                   "attention); using the hf backend"]


def test_a_model_in_training_mode_with_attention_dropout_keeps_the_native_engine(capsys):
    """The policy is in training mode when the run builds its generator, and a model may have
    attention dropout (here 0.5). Generation runs in eval mode, where dropout is off, so the
    engine's check must compare in eval mode too: in training mode its plain forward pass drops
    half the attention weights at random, differs from the cached logits by far more than the
    tolerance, and the model was refused (the "hf" backend with a notice) for the rest of the run.
    The model is back in training mode after the check, and its samples are those of the same
    weights in eval mode (dropout off), which the engine computes apart from this one."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         eos_token_id=EOS, pad_token_id=PAD, attention_dropout=0.5)
    model = LlamaForCausalLM(config).train()
    _sharpen(model)
    gen = make_generator(model, Tok(), batch_size=4)
    assert isinstance(gen, NativeGenerator) and capsys.readouterr().err == ""
    assert model.training
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=2)
    got = gen.generate_ids(contexts(), 2, params)
    assert model.training
    same = LlamaForCausalLM(config).eval()
    same.load_state_dict(model.state_dict())
    want = NativeGenerator(same, Tok(), batch_size=4).generate_ids(contexts(), 2, params)
    assert [[s.token_ids for s in row] for row in got] == [[s.token_ids for s in row] for row in want]


def test_a_lora_policy_samples_on_the_native_engine_as_its_merged_weights_do(capsys):
    """A PEFT LoRA model's own forward takes no logits_to_keep, but the network inside it (its base
    model, the adapter's layers in place) does: the engine runs that, with no notice and no "hf"
    fallback (whose draws depend on the batch and ignore the prompt numbering a run of several
    processes relies on). Reference: the same adapter merged into plain weights by peft
    (``merge_and_unload``), sampled by the engine; fp64, so the two agree token for token. The
    adapter's B matrices are set off zero so that it changes the samples, and pushing the policy's
    weights each round (``update_weights``) keeps the engine."""
    import copy

    from peft import LoraConfig, get_peft_model

    policy = get_peft_model(llama().double(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    gen = make_generator(policy, Tok(), batch_size=4)
    assert isinstance(gen, NativeGenerator) and capsys.readouterr().err == ""
    gen.update_weights(policy)
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=5)
    got = gen.generate_ids(contexts(), 3, params)
    merged = copy.deepcopy(policy).merge_and_unload()
    want = NativeGenerator(merged, Tok(), batch_size=4).generate_ids(contexts(), 3, params)
    assert [[s.token_ids for s in row] for row in got] == [[s.token_ids for s in row] for row in want]
    base = NativeGenerator(llama().double(), Tok(), batch_size=4).generate_ids(contexts(), 3, params)
    assert [[s.token_ids for s in row] for row in got] != [[s.token_ids for s in row] for row in base]


def test_a_model_whose_cache_path_is_wrong_is_refused():
    model = llama()

    class Forgetful(torch.nn.Module):
        """Runs the model but drops the cache it is given: cached decoding would be silently wrong."""

        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, past_key_values=None, logits_to_keep=0, **kwargs):
            return self.inner(input_ids=input_ids, logits_to_keep=logits_to_keep, **kwargs)

        def get_output_embeddings(self):
            return self.inner.get_output_embeddings()

    forgetful = Forgetful(model)
    forgetful.generate = model.generate
    assert unsupported(forgetful) is not None
    assert isinstance(make_generator(forgetful, Tok()), HFGenerator)


def test_update_weights_to_a_model_the_engine_cannot_run_is_refused():
    from transformers import MistralConfig, MistralForCausalLM

    gen = NativeGenerator(llama(), Tok())
    windowed = MistralForCausalLM(MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                                num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                                sliding_window=16, max_position_embeddings=128))
    with pytest.raises(UserError, match=r"cannot run MistralForCausalLM \(sliding-window attention\)"):
        gen.update_weights(windowed)
    other = llama(seed=3)
    gen.update_weights(other)
    assert gen.model is other


def test_default_batch_size_takes_every_sequence_that_fits_in_a_quarter_of_free_memory(monkeypatch):
    """``batch_size=None`` sizes the slots from the model's shape and the free memory.

    The test llama (fp32, 4 bytes a number): 2 layers × 2 (keys, values) × 2 kv heads × head dim
    32/4 = 8 numbers per position = 64 numbers, × 16 new tokens × 4 bytes = 4096 bytes of cache a
    sequence, plus 4 copies of its 96 logits × 4 bytes = 1536: 5632 bytes a sequence without its
    prompt. With a prompt row of the longest prompt, 17 tokens, 64 × 33 × 4 + 1536 = 9984 bytes.
    With 100,000 bytes free a quarter is 25,000: 2 sequences (19,968 bytes; 3 would take 29,952)."""
    import alignlab.generation.memory as memory

    model = llama()
    params = SamplingParams(max_new_tokens=16, temperature=1.0, seed=11, stop_token_ids=tuple(range(3, 11)))
    assert memory.bytes_per_sequence(model, 16) == 5632 and memory.bytes_per_sequence(model, 16, 17) == 9984
    assert decode_pass_ok(model)  # its check (once per model) builds a cache of its own: not counted below
    slots = []
    made = SlotCache.__init__
    monkeypatch.setattr(SlotCache, "__init__", lambda self, n, *a, **k: (slots.append(n), made(self, n, *a, **k))[1])
    monkeypatch.setattr(memory, "free_memory", lambda device: 100_000)
    small = NativeGenerator(model, Tok()).generate_ids(contexts(), 10, params)
    monkeypatch.setattr(memory, "free_memory", lambda device: 10**12)
    whole = NativeGenerator(model, Tok()).generate_ids(contexts(), 10, params)
    monkeypatch.setattr(memory, "free_memory", lambda device: None)  # unknown: AUTO_FALLBACK at most
    unknown = NativeGenerator(model, Tok()).generate_ids(contexts(), 10, params)
    monkeypatch.setattr(memory, "free_memory", lambda device: 1)  # too little for one: one at a time
    one = NativeGenerator(model, Tok()).generate_ids(contexts(), 10, params)
    assert slots == [2, 70, 64, 1]  # 7 prompts × 10 samples
    tokens = [[[s.token_ids for s in row] for row in run] for run in (small, whole, unknown, one)]
    assert tokens[0] == tokens[1] == tokens[2] == tokens[3]


def test_default_batch_size_counts_the_prompts_keys_and_values(monkeypatch):
    """The cache of ``batch_size=None`` stays within a quarter of the free memory when the prompts
    are long: one sample each of 12 prompts of 60 tokens, 8 new tokens each.

    Per token the test llama keeps 2 layers × 2 (keys, values) × 2 kv heads × 8 = 64 fp32 numbers,
    256 bytes. A sequence whose prompt has a row of its own (one sample per prompt) holds 60 + 8 =
    68 positions: 17,408 bytes, plus 4 copies of 96 fp32 logits, 1,536: 18,944 bytes. A quarter of
    100,000 bytes free is 25,000: one sequence at a time, not 25,000 // (8 × 256 + 1,536) = 6,
    whose prompts' rows alone (6 × 60 × 256 = 92,160 bytes) would take most of the free memory."""
    import alignlab.generation.memory as memory

    model = llama()
    assert decode_pass_ok(model)  # its check (once per model) builds a cache of its own: not counted below
    caches = []
    made = SlotCache.__init__
    monkeypatch.setattr(SlotCache, "__init__", lambda self, *a, **k: (caches.append(self), made(self, *a, **k))[1])
    monkeypatch.setattr(memory, "free_memory", lambda device: 100_000)
    prompts = [tuple(3 + (7 * k + 5 * i) % (VOCAB - 3) for i in range(60)) for k in range(12)]
    params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=5)
    NativeGenerator(model, Tok()).generate_ids(prompts, 1, params)
    assert [c.slots for c in caches] == [1]
    held = sum(t.numel() * t.element_size() for c in caches for store in (c.prefix_k, c.prefix_v, c.suffix_k,
                                                                           c.suffix_v) for t in store)
    assert held == 68 * 256


def test_default_batch_splits_the_host_memory_between_the_processes_on_it(monkeypatch):
    """Two processes of a run on one host (torchrun's LOCAL_WORLD_SIZE=2) take an eighth of the
    free memory each: with 100,000 bytes free, 12,500 each, 2 sequences of 5,632 bytes (the test
    llama with 16 new tokens and no prompt, as derived above) instead of 4."""
    import alignlab.generation.memory as memory

    model = llama()
    monkeypatch.setattr(memory, "free_memory", lambda device: 100_000)
    assert memory.auto_batch_size(model, 70, 16) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert memory.auto_batch_size(model, 70, 16) == 2


def test_default_batch_takes_the_host_processes_it_is_told(monkeypatch):
    """A count of the host's processes given to the engine (as Ray's workers are given theirs)
    replaces torchrun's: with 100,000 bytes free, 3 processes get 8,333 bytes each, one sequence of
    5,632 bytes (the test llama with 16 new tokens and no prompt, as derived above), and 1 process
    gets 25,000, 4 sequences, whatever LOCAL_WORLD_SIZE says. The engine passes its own count on:
    7 prompts of up to 17 tokens (9,984 bytes a sequence) decode one at a time with 2 processes
    told (12,500 bytes each) and 2 at a time with 1 (25,000)."""
    import alignlab.generation.memory as memory

    model = llama()
    assert decode_pass_ok(model)  # its check builds a cache of its own: not counted below
    monkeypatch.setattr(memory, "free_memory", lambda device: 100_000)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert memory.auto_batch_size(model, 70, 16, processes=3) == 1
    assert memory.auto_batch_size(model, 70, 16, processes=1) == 4
    slots = []
    made = SlotCache.__init__
    monkeypatch.setattr(SlotCache, "__init__", lambda self, n, *a, **k: (slots.append(n), made(self, n, *a, **k))[1])
    params = SamplingParams(max_new_tokens=16, temperature=1.0, seed=11)
    gen = NativeGenerator(model, Tok())
    gen.generate_ids(contexts(), 10, params)  # LOCAL_WORLD_SIZE=2
    gen.host_processes = 1
    gen.generate_ids(contexts(), 10, params)
    assert slots == [1, 2]

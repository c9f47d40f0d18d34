"""A reference that follows the policy (``ref_sync_steps``, ``ref_sync_alpha``): TR-DPO's soft
update, of an online method's KL reference and of an offline method's reference (whose log-probs
are then computed each batch), kept in checkpoints so that a run resumes exactly."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from alignlab import train
from alignlab.errors import UserError
from alignlab.training import checkpoint as ckpt
from alignlab.training.ref_sync import sync_reference
from tests.training.helpers import base_config, crash_after_save, max_abs_diff, weights
from tests.training.test_online import metrics, online


def test_the_update_is_the_soft_mix_written_out():
    """ref ← (1 − α) ref + α θ per parameter, by name (the policy may hold more: PPO's critic).
    With ref = 2, θ = 6 and α = 0.25: 0.75 · 2 + 0.25 · 6 = 3; α = 1 copies θ."""
    ref = torch.nn.Linear(3, 2)
    with torch.no_grad():
        ref.weight.fill_(2.0)
        ref.bias.fill_(-1.0)
    policy = torch.nn.Linear(3, 2)
    policy.critic = torch.nn.Linear(2, 1)
    with torch.no_grad():
        policy.weight.fill_(6.0)
        policy.bias.fill_(1.0)
    sync_reference(ref, policy, 0.25)
    assert torch.equal(ref.weight, torch.full((2, 3), 3.0))
    assert torch.equal(ref.bias, torch.full((2,), -0.5))  # 0.75 · −1 + 0.25 · 1
    assert torch.equal(policy.weight, torch.full((2, 3), 6.0))  # the policy is not touched
    sync_reference(ref, policy, 1.0)
    assert torch.equal(ref.weight, policy.weight) and torch.equal(ref.bias, policy.bias)


def test_the_update_equals_trls_own_sync_on_the_same_weights(tiny_model_dir):
    """TRL 1.16's ``SyncRefModelCallback`` moves a copy of the same reference, for the same policy,
    to the same bits (both compute the two in-place operations in the same order)."""
    import copy

    from transformers import AutoModelForCausalLM
    from trl.trainer.callbacks import SyncRefModelCallback

    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ref = copy.deepcopy(policy)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    theirs = copy.deepcopy(ref)
    for alpha in (0.6, 0.1, 1.0):
        sync_reference(ref, policy, alpha)
        SyncRefModelCallback._sync_target_model(policy, theirs, alpha)
        assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), theirs.parameters(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), policy.parameters(), strict=True))  # α = 1 last


def _synced(out):
    """step → the reference's tensors in checkpoint step (after that step's sync, if one was due)."""
    return {int(c.name.removeprefix(ckpt.PREFIX)): load_file(c / ckpt.REFERENCE_FILE)
            for c in ckpt.list_checkpoints(out / "checkpoints")}


def test_the_reference_moves_toward_the_policy_every_n_steps(tmp_path, tiny_model_dir):
    """With ref_sync_steps 2 and α 0.6, the reference after step 2's update is 0.4 · the starting
    model + 0.6 · the policy after 2 steps, and stays so until the update after step 4 (each in the
    checkpoint of its step, as TRL syncs before it saves). Checked against the checkpoints' own
    policy weights, computed here in float64."""
    out = tmp_path / "run"
    train(online(tiny_model_dir, out, beta=0.1, max_steps=5, save_every=1, keep_checkpoints=0, ref_sync_steps=2,
                 ref_sync_alpha=0.6))
    refs = _synced(out)
    policy = {s: load_file(c / "trainable.safetensors") for s, c in
              ((int(c.name.removeprefix(ckpt.PREFIX)), c) for c in ckpt.list_checkpoints(out / "checkpoints"))}
    start = weights(tiny_model_dir)
    names = sorted(refs[1])
    assert names and set(names) <= set(start)
    for n in names:
        s0 = start[n].double()
        assert torch.equal(refs[1][n].double(), s0)  # no sync yet
        want = 0.4 * s0 + 0.6 * policy[2][n].double()
        for step in (2, 3):
            assert torch.allclose(refs[step][n].double(), want, rtol=0, atol=1e-12), (n, step)
        want = 0.4 * want + 0.6 * policy[4][n].double()
        for step in (4, 5):
            assert torch.allclose(refs[step][n].double(), want, rtol=0, atol=1e-12), (n, step)
    assert max_abs_diff(policy[2], policy[4]) > 1e-6  # the two syncs mixed in different policies


def test_a_full_sync_makes_the_next_rounds_kl_zero(tmp_path, tiny_model_dir):
    """α = 1 copies the policy into the reference after steps 2 and 4: the rounds of steps 3 and 5
    sample from the policy that is now the reference, so their KL is 0 (fp64); without the sync it
    is not."""
    train(online(tiny_model_dir, tmp_path / "sync", beta=0.1, max_steps=5, ref_sync_steps=2, ref_sync_alpha=1.0))
    train(online(tiny_model_dir, tmp_path / "fixed", beta=0.1, max_steps=5))
    kl = {m["step"]: m["kl"] for m in metrics(tmp_path / "sync") if "loss" in m}
    fixed = {m["step"]: m["kl"] for m in metrics(tmp_path / "fixed") if "loss" in m}
    for step in (1, 3, 5):
        assert kl[step] == pytest.approx(0.0, abs=1e-12)
    assert kl[2] > 1e-6 and kl[4] > 1e-6
    assert fixed[3] > 1e-6 and fixed[5] > 1e-6


@pytest.mark.parametrize("crash_at", [2, 3])
def test_an_interrupted_run_with_a_synced_reference_resumes_exactly(tmp_path, tiny_model_dir, crash_at):
    """Killed after the checkpoint of step 2 (written just after a sync) or 3 (between two syncs):
    the same weights, metrics and reference as an uninterrupted run."""
    cfg = dict(beta=0.1, max_steps=5, save_every=1, keep_checkpoints=0, ref_sync_steps=2, ref_sync_alpha=0.6)
    full = train(online(tiny_model_dir, tmp_path / "full", **cfg))
    with crash_after_save(lambda step: step == crash_at):
        train(online(tiny_model_dir, tmp_path / "cut", **cfg))
    resumed = train(online(tiny_model_dir, tmp_path / "cut", resume=True, **cfg))
    assert max_abs_diff(weights(full.model_dir), weights(resumed.model_dir)) == 0
    assert max_abs_diff(_synced(tmp_path / "full")[5], _synced(tmp_path / "cut")[5]) == 0

    def per_step(out):
        return {m["step"]: (m["loss"], m["reward"], m["kl"], m["grad_norm"]) for m in metrics(out) if "loss" in m}

    assert per_step(tmp_path / "cut") == per_step(tmp_path / "full")


def test_bad_sync_setups_are_one_line_errors(tmp_path, tiny_model_dir):
    def run(name, **kw):
        return train(online(tiny_model_dir, tmp_path / name, max_steps=1, **kw))

    with pytest.raises(UserError, match=r"ref_sync_steps: method 'grpo' runs no reference"):
        run("a", ref_sync_steps=2)
    with pytest.raises(UserError, match=r"ref_sync_steps: with LoRA"):
        run("b", ref_sync_steps=2, beta=0.1, lora=True)
    with pytest.raises(UserError, match=r"ref_sync_alpha: must be in \(0, 1\]"):
        run("c", ref_sync_steps=2, beta=0.1, ref_sync_alpha=0.0)
    with pytest.raises(UserError, match=r"ref_sync_steps: must be >= 0"):
        run("d", ref_sync_steps=-1, beta=0.1)
    with pytest.raises(UserError, match=r"^ref_sync_alpha: moves the reference only every ref_sync_steps steps"):
        run("h", beta=0.1, ref_sync_alpha=0.3)  # would train with the reference fixed, the alpha unused
    with pytest.raises(UserError, match=r"ref_sync_steps: method 'simpo' uses no reference model"):
        train({"method": "simpo", "model": str(tiny_model_dir), "data": "x.jsonl", "ref_sync_steps": 2,
               "output_dir": str(tmp_path / "e")})
    with pytest.raises(UserError, match=r"ref_sync_steps: rounds set each round's reference"):
        train({"method": "dpo", "model": str(tiny_model_dir), "data": "task:arithmetic", "ref_sync_steps": 2,
               "rounds": 2, "output_dir": str(tmp_path / "g")})
    with pytest.raises(UserError, match=r"ref_sync_steps:.*without fsdp and deepspeed"):
        run("f", ref_sync_steps=2, beta=0.1, fsdp=True)


def test_resuming_with_a_sync_from_a_checkpoint_without_one_is_refused(tmp_path, tiny_model_dir):
    """The reference a checkpoint lacks cannot be rebuilt: the resumed run says so in one line
    (the config check may catch the change first; either way nothing trains on a wrong reference)."""
    train(online(tiny_model_dir, tmp_path / "run", beta=0.1, max_steps=1, save_every=1, keep_checkpoints=0))
    with pytest.raises(UserError, match=r"ref_sync_steps|synced reference"):
        train(online(tiny_model_dir, tmp_path / "run", beta=0.1, max_steps=2, resume=True, ref_sync_steps=1))


def test_the_task_evaluation_keeps_measuring_kl_to_the_starting_model(tmp_path, tiny_model_dir, monkeypatch):
    """The KL term's reference moves; the task evaluation's KL stays the drift from the start, so
    it runs on a reference of its own that no sync touches."""
    from alignlab.eval.gold import GoldEvaluator

    seen = []
    real = GoldEvaluator.__call__

    def spy(self, module, reference, **kwargs):
        with reference() as ref:
            seen.append({n: p.detach().clone() for n, p in ref.named_parameters()})
        return real(self, module, reference, **kwargs)

    monkeypatch.setattr(GoldEvaluator, "__call__", spy)
    out = tmp_path / "run"
    train(online(tiny_model_dir, out, beta=0.1, max_steps=3, ref_sync_steps=1, ref_sync_alpha=1.0, task="arithmetic",
                 task_eval_prompts=4, eval_every=1))
    start = weights(tiny_model_dir)
    assert len(seen) >= 3
    for evaluated in seen:
        assert max_abs_diff({n: start[n] for n in evaluated}, evaluated) == 0
    moved = _synced(out)[3]
    assert max_abs_diff({n: t for n, t in start.items() if n in moved}, moved) > 1e-6


# -- offline methods: the reference's log-probs computed each batch ------------------------------------

def _losses(out) -> list[float]:
    return [m["loss"] for m in metrics(out) if "loss" in m]


@pytest.mark.parametrize("method,data_fixture", [("dpo", "pairs_file"), ("kto", "unpaired_file")])
def test_a_reference_computed_each_batch_equals_the_precomputed_one_until_it_moves(
        tmp_path, tiny_model_dir, request, method, data_fixture):
    """With the first sync due after the last step, the per-batch reference values (kto's
    reference point too) give the run the precomputed ones give (fp64), held-out loss included."""
    data = request.getfixturevalue(data_fixture)
    common = dict(method=method, max_steps=3, batch_size=4, dtype="fp64", cache=False, eval_fraction=0.25)
    fixed = train(base_config(tiny_model_dir, data, tmp_path / "fixed", **common))
    live = train(base_config(tiny_model_dir, data, tmp_path / "live", ref_sync_steps=100, **common))
    assert max_abs_diff(weights(fixed.model_dir), weights(live.model_dir)) < 1e-12
    assert _losses(tmp_path / "live") == pytest.approx(_losses(tmp_path / "fixed"), abs=1e-12)
    assert live.eval_metrics["eval/loss"] == pytest.approx(fixed.eval_metrics["eval/loss"], abs=1e-12)
    assert max_abs_diff(weights(fixed.model_dir), weights(tiny_model_dir)) > 1e-4


def test_kto_runs_a_moving_reference_once_per_example_and_step(tmp_path, tiny_model_dir, unpaired_file, monkeypatch):
    """KTO's reference point needs the reference's values before the step's passes; the passes
    then read them rather than running the reference again: 3 steps of one micro-batch each
    (batch 4) run it 3 times, on 4 examples each (their own and mismatched rows)."""
    import alignlab.training.forward.preference as preference

    calls = []
    real = preference.live_reference

    def counted(examples, *args, **kwargs):
        calls.append(len(examples))
        return real(examples, *args, **kwargs)

    monkeypatch.setattr(preference, "live_reference", counted)
    train(base_config(tiny_model_dir, unpaired_file, tmp_path / "run", method="kto", max_steps=3, batch_size=4,
                      dtype="fp64", cache=False, ref_sync_steps=2))
    assert calls == [4, 4, 4]


def test_dpo_with_the_reference_copied_every_step_sees_no_margin(tmp_path, tiny_model_dir, pairs_file):
    """α = 1 every step: each step starts with reference = policy, so every implicit reward
    β(log π − log π_ref) is 0 and DPO's loss is −log σ(0) = ln 2 at every step (fp64); with the
    reference fixed, the steps after the first see the policy's margin."""
    common = dict(max_steps=4, batch_size=4, dtype="fp64", cache=False, lr=1e-2)
    train(base_config(tiny_model_dir, pairs_file, tmp_path / "sync", ref_sync_steps=1, ref_sync_alpha=1.0, **common))
    train(base_config(tiny_model_dir, pairs_file, tmp_path / "fixed", **common))
    assert _losses(tmp_path / "sync") == pytest.approx([math.log(2)] * 4, abs=1e-12)
    fixed = _losses(tmp_path / "fixed")
    assert fixed[0] == pytest.approx(math.log(2), abs=1e-12)
    assert all(abs(x - math.log(2)) > 1e-6 for x in fixed[1:])


@pytest.mark.parametrize("crash_at", [2, 3])
def test_an_interrupted_dpo_run_with_a_synced_reference_resumes_exactly(tmp_path, tiny_model_dir, pairs_file,
                                                                        crash_at):
    cfg = dict(max_steps=5, batch_size=4, dtype="fp64", save_every=1, keep_checkpoints=0, ref_sync_steps=2)
    full = train(base_config(tiny_model_dir, pairs_file, tmp_path / "full", **cfg))
    with crash_after_save(lambda step: step == crash_at):
        train(base_config(tiny_model_dir, pairs_file, tmp_path / "cut", **cfg))
    resumed = train(base_config(tiny_model_dir, pairs_file, tmp_path / "cut", resume=True, **cfg))
    assert max_abs_diff(weights(full.model_dir), weights(resumed.model_dir)) == 0
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "full")
    assert max_abs_diff(_synced(tmp_path / "full")[5], _synced(tmp_path / "cut")[5]) == 0
    assert max_abs_diff(_synced(tmp_path / "full")[5], _synced(tmp_path / "full")[2]) > 1e-6


def test_a_reference_model_of_another_shape_cannot_be_synced(tmp_path, tiny_model_dir, pairs_file):
    """The soft update mixes weights name by name: a reference_model of another architecture
    (here wider layers) is a one-line error naming the first parameter that does not fit."""
    from alignlab.models import TinyModelConfig, save_tiny_model

    other = save_tiny_model(tmp_path / "wide", TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4,
                                                                 intermediate_size=192))
    with pytest.raises(UserError, match=r"ref_sync_steps: the reference's parameter model\.layers\.0\.mlp\.\w+_proj"
                                        r"\.weight \(.*\) has no counterpart in the policy"):
        train(base_config(tiny_model_dir, pairs_file, tmp_path / "run", reference_model=str(other), ref_sync_steps=1))


def test_an_evaluation_after_a_sync_step_sees_the_synced_reference(tmp_path, tiny_model_dir, pairs_file):
    """TRL syncs in ``on_step_end``, which the Trainer calls before ``_maybe_log_save_evaluate``: an
    evaluation (and a checkpoint) after step s sees the reference synced after step s. With α = 1
    every step that reference is the policy being evaluated, so every held-out implicit reward
    β(log π − log π_ref) is 0 and the held-out DPO loss is −log σ(0) = ln 2 at every evaluation,
    the final one included (fp64); the checkpoint after step 2 holds the policy after step 2."""
    out = tmp_path / "run"
    common = dict(max_steps=3, batch_size=4, dtype="fp64", cache=False, lr=1e-2, eval_fraction=0.25)
    summary = train(base_config(tiny_model_dir, pairs_file, out, ref_sync_steps=1, ref_sync_alpha=1.0, eval_every=1,
                                save_every=1, keep_checkpoints=0, **common))
    evals = [m for m in metrics(out) if "eval/loss" in m]
    assert [m["step"] for m in evals] == [1, 2, 3]
    for m in evals:
        assert m["eval/loss"] == pytest.approx(math.log(2), abs=1e-12), m["step"]
        assert m["eval/rewards/margins"] == pytest.approx(0.0, abs=1e-12), m["step"]
    assert summary.eval_metrics["eval/loss"] == pytest.approx(math.log(2), abs=1e-12)
    step2 = out / "checkpoints" / ckpt.step_name(2)
    assert max_abs_diff(load_file(step2 / ckpt.REFERENCE_FILE), load_file(step2 / "trainable.safetensors")) == 0
    # with the reference fixed the held-out margin moves off 0: the check above can fail
    fixed = train(base_config(tiny_model_dir, pairs_file, tmp_path / "fixed", **common))
    assert abs(fixed.eval_metrics["eval/loss"] - math.log(2)) > 1e-6


def _untied_twin(tied_dir, out):
    """The model of ``tied_dir`` with its output layer a tensor of its own (a copy of the embeddings)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignlab.models import save_pretrained

    model = AutoModelForCausalLM.from_pretrained(tied_dir)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    save_pretrained(model, out)
    AutoTokenizer.from_pretrained(tied_dir).save_pretrained(out)
    return out


def test_a_reference_that_ties_what_the_policy_holds_apart_is_refused(tmp_path, tied_model_dir, pairs_file):
    """A reference whose output layer is its input embeddings (tie_word_embeddings) cannot follow a
    policy whose two differ: with α = 1 its output layer would become the policy's embeddings, not
    the policy's output layer. A one-line error names the tie."""
    policy = _untied_twin(tied_model_dir, tmp_path / "untied")
    with pytest.raises(UserError, match=r"^ref_sync_steps: the reference ties lm_head\.weight to "
                                        r"model\.embed_tokens\.weight and the policy does not"):
        train(base_config(policy, pairs_file, tmp_path / "run", reference_model=str(tied_model_dir),
                          ref_sync_steps=1, max_steps=1))


def test_an_untied_reference_follows_a_tied_policy(tied_model_dir, tmp_path):
    """The other way round the update is well defined: the policy's output layer is its embeddings,
    so with α = 1 both of the reference's tensors become the policy's one shared tensor, and with
    α = 0.25 each becomes 0.75 · itself + 0.25 · that tensor."""
    from transformers import AutoModelForCausalLM

    from alignlab.training.ref_sync import check_sync_pairs

    policy = AutoModelForCausalLM.from_pretrained(tied_model_dir)
    ref = AutoModelForCausalLM.from_pretrained(_untied_twin(tied_model_dir, tmp_path / "untied"))
    with torch.no_grad():
        policy.model.embed_tokens.weight.add_(0.5)
        ref.lm_head.weight.fill_(2.0)
    shared = policy.model.embed_tokens.weight.detach().clone()
    head, embed = ref.lm_head.weight.detach().clone(), ref.model.embed_tokens.weight.detach().clone()
    check_sync_pairs(ref, policy)
    sync_reference(ref, policy, 0.25)
    assert torch.equal(ref.lm_head.weight, 0.75 * head + 0.25 * shared)
    assert torch.equal(ref.model.embed_tokens.weight, 0.75 * embed + 0.25 * shared)
    sync_reference(ref, policy, 1.0)
    assert torch.equal(ref.lm_head.weight, shared) and torch.equal(ref.model.embed_tokens.weight, shared)

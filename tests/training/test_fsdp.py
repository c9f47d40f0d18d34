"""FSDP2 on two gloo processes under torchrun gives the weights of one unsharded process with the
same global batch (fp64); its sharded checkpoints resume exactly, on the same or another number
of processes, and survive a process that dies. Runs the real CLI in subprocesses.

Run as ``python -m tests.training.test_fsdp ARGS`` (under torchrun) it is the CLI whose second
process dies right after writing checkpoint ``step-00000002``: a lost process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alignlab import train
from alignlab.errors import ConfigError
from alignlab.training.checkpoint import newest_valid
from tests.conftest import write_pairs_file, write_sft_file
from tests.training.helpers import base_config, max_abs_diff, weights
from tests.training.train_many import check_done, free_port, launch_all, launch_env

pytestmark = pytest.mark.slow
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]


def _torchrun(cfg: dict, tmp_path, name: str, module: str = "alignlab.cli", ok: bool = True):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = launch_env()
    proc = subprocess.run(TORCHRUN + ["--master_port", free_port(), "-m", module, "train", str(path)], env=env,
                          cwd=os.getcwd(), capture_output=True, text=True, timeout=300)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _saved(model_dir) -> dict:
    """The saved weights, or a LoRA run's adapter."""
    from safetensors.torch import load_file

    adapter = model_dir / "adapter_model.safetensors"
    return load_file(adapter) if adapter.exists() else weights(model_dir)


def _train_lines(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def _offline(model_dir, data: Path, out: Path, batch_size: int, method: str, lora: bool, **more) -> dict:
    common = dict(method=method, max_steps=3, dtype="fp64", eval_fraction=1 / 16, eval_every=2, save_every=1,
                  keep_checkpoints=0, lora=lora, lora_r=4, lr=1e-2)
    return base_config(model_dir, data, out, batch_size=batch_size, **common, **more)


def _online(model_dir, out: Path, batch_size: int, lora: bool, **more) -> dict:
    common = dict(method="grpo", reward=["fn:tests.training.online_rewards:digits"], num_generations=4,
                  max_new_tokens=6, dtype="fp64", warmup_steps=0, lr=1e-2, max_steps=4, updates_per_rollout=2)
    if lora:
        common.update(lora=True, lora_r=4, beta=0.1)
    return base_config(model_dir, "task:arithmetic", out, batch_size=batch_size, **common, **more)


def _critic(model_dir, out: Path, batch_size: int, **more) -> dict:
    common = dict(method="ppo", critic="separate", reward=["fn:tests.training.online_rewards:digits"],
                  num_generations=4, max_new_tokens=6, dtype="fp64", warmup_steps=0, lr=1e-2, max_steps=2,
                  updates_per_rollout=2)
    return base_config(model_dir, "task:arithmetic", out, batch_size=batch_size, **common, **more)


def _accumulated(model_dir, data: Path, out: Path, batch_size: int, **more) -> dict:
    common = dict(method="sft", max_steps=2, dtype="fp64", lr=1e-2, eval_fraction=0.0, cache=False)
    return base_config(model_dir, data, out, batch_size=batch_size, **common, **more)


OFFLINE = [("dpo", "dpo", "pairs", False), ("sft", "sft", "sft", False), ("dpo-lora", "dpo", "pairs", True)]


@pytest.fixture(scope="module")
def fsdp_two(tmp_path_factory, tiny_model_dir) -> tuple[Path, dict[str, Path], subprocess.CompletedProcess]:
    """The two-process runs of the tests below that run the plain CLI, in one launch
    (``train_many``): their folder, the data files by shape, and the launch."""
    root = tmp_path_factory.mktemp("fsdp-two")
    data = {"pairs": write_pairs_file(root), "sft": write_sft_file(root)}
    configs = {name: _offline(tiny_model_dir, data[shape], root / name, 2, method, lora, fsdp=True)
               for name, method, shape, lora in OFFLINE}
    configs.update({"online": _online(tiny_model_dir, root / "online", 4, False, fsdp=True),
                    "online-lora": _online(tiny_model_dir, root / "online-lora", 4, True, fsdp=True),
                    "critic": _critic(tiny_model_dir, root / "critic", 4, fsdp=True)})
    accum = dict(batch_size=1, grad_accum=2)
    configs["accum-fsdp"] = _accumulated(tiny_model_dir, data["sft"], root / "accum-fsdp", fsdp=True, **accum)
    configs["accum-ddp"] = _accumulated(tiny_model_dir, data["sft"], root / "accum-ddp", **accum)
    return root, data, launch_all(configs, root)


# SFT divides by the global batch's tokens, DPO by its pairs (and evaluates one held-out pair, on
# the first process only); with LoRA only the adapter trains, beside frozen sharded weights.
@pytest.mark.xdist_group("fsdp-two")  # one worker runs the module's launch, for all its tests
@pytest.mark.parametrize("name,method,shape,lora", OFFLINE, ids=[c[0] for c in OFFLINE])
def test_fsdp_two_processes_equal_one(tmp_path, tiny_model_dir, fsdp_two, name, method, shape, lora):
    root, data, launch = fsdp_two
    check_done(root, name, launch)
    single = train(_offline(tiny_model_dir, data[shape], tmp_path / "one", 4, method, lora))
    cfg = _offline(tiny_model_dir, data[shape], root / name, 2, method, lora, fsdp=True)
    two_dir = root / name

    one, two = _saved(Path(single.model_dir)), _saved(two_dir / "model")
    assert max_abs_diff(one, two) < 1e-9
    start = weights(tiny_model_dir)
    if not lora:  # the equality is of weights that moved
        assert max_abs_diff({k: v for k, v in one.items() if k in start}, start) > 1e-3
    else:  # the adapter's B starts at zero
        assert max(float(v.abs().max()) for k, v in two.items() if "lora_B" in k) > 1e-4
    for a, b in zip(_train_lines(tmp_path / "one"), _train_lines(two_dir), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-9) and b["grad_norm"] == pytest.approx(a["grad_norm"], abs=1e-9)

    # each process wrote its own shard; no unsharded copy of the weights
    step3 = two_dir / "checkpoints" / "step-00000003"
    assert sorted(p.name for p in (step3 / "shards").iterdir()) == [
        "shard-00001-model-00001-of-00001.safetensors", "shard-00002-model-00001-of-00001.safetensors"]
    assert not (step3 / "trainable.safetensors").exists()
    # the run's models over training (eval displacement --run): each sharded checkpoint's shards
    # put together on this process hold the unsharded run's checkpoint of the same step
    _same_models(tmp_path / "one", two_dir, ["start", "step-00000001", "step-00000002", "step-00000003", "final"])

    if method == "dpo" and not lora:
        # Resumed on one process from the two-process checkpoint of step 2: the shards are re-cut
        # (batch 4 × 1 process, the same global batch) and the run ends where the others did.
        shutil.rmtree(step3)
        shutil.rmtree(two_dir / "model")
        resumed = train({**cfg, "batch_size": 4, "resume": True})
        assert max_abs_diff(one, weights(resumed.model_dir)) < 1e-9
        # with another global batch it is refused, naming both
        with pytest.raises(ConfigError, match="global_batch=4 and this run has 2"):
            train({**cfg, "batch_size": 2, "resume": True})


def _same_models(one, two, labels: list[str]) -> None:
    from alignlab.training.saved import run_models

    a, b = list(run_models(one, dtype="fp64")), list(run_models(two, dtype="fp64"))
    assert [x for x, _ in a] == [x for x, _ in b] == labels
    for (label, load_a), (_, load_b) in zip(a, b, strict=True):
        sa, sb = load_a().state_dict(), load_b().state_dict()
        assert max_abs_diff(sa, sb) < 1e-9, label
    assert max_abs_diff(a[1][1]().state_dict(), a[2][1]().state_dict()) > 1e-5  # the steps differ


@pytest.mark.xdist_group("fsdp-two")
@pytest.mark.parametrize("lora", [False, True])
def test_fsdp_online_equal_one(tmp_path, tiny_model_dir, fsdp_two, lora):
    """GRPO, two updates per round: each process samples its prompts from the whole policy (its
    parameters gathered for the round), and the weights end as one unsharded process's. With LoRA
    (and β > 0: the reference is the adapter switched off) the rollouts run the PEFT model's base
    network, not the wrapper FSDP made the root; sharding settles the root first, so the training
    forward pass through the wrapper is not refused after them (it was, at step 1)."""
    root, _, launch = fsdp_two
    name = "online-lora" if lora else "online"
    check_done(root, name, launch)
    single = train(_online(tiny_model_dir, tmp_path / "one", 8, lora))
    two_dir = root / name
    one = _saved(Path(single.model_dir))
    assert max_abs_diff(one, _saved(two_dir / "model")) < 1e-9
    if lora:  # the adapter trained: B starts at 0
        assert max(float(v.abs().max()) for k, v in one.items() if "lora_B" in k) > 1e-4
    else:
        start = weights(tiny_model_dir)
        assert max_abs_diff({k: v for k, v in one.items() if k in start}, start) > 1e-4
    for a, b in zip(_train_lines(tmp_path / "one"), _train_lines(two_dir), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-9) and b["reward"] == pytest.approx(a["reward"], abs=1e-12)


@pytest.mark.xdist_group("fsdp-two")
def test_fsdp_ppo_separate_critic_equal_one(tmp_path, tiny_model_dir, fsdp_two):
    """PPO with a critic of its own network: the critic's backbone and head are sharded as units
    apart from the policy's; on 2 processes the policy and the critic end as one unsharded
    process's, two updates per round (the second clips against the round's values)."""
    root, _, launch = fsdp_two
    check_done(root, "critic", launch)
    single = train(_critic(tiny_model_dir, tmp_path / "one", 8))
    two_dir = root / "critic"
    one, two = weights(single.model_dir), weights(two_dir / "model")
    assert any(k.startswith("value_model/") for k in one)
    assert max_abs_diff(one, two) < 1e-9
    start = weights(tiny_model_dir)
    assert max_abs_diff({k: v for k, v in one.items() if k in start}, start) > 1e-4
    # the critic starts as a copy of the policy's decoder ("model.*"), and trains
    critic_start = {f"value_model/{k[len('model.'):]}": v for k, v in start.items() if k.startswith("model.")}
    assert max_abs_diff({k: one[k] for k in critic_start}, critic_start) > 1e-4
    for a, b in zip(_train_lines(tmp_path / "one"), _train_lines(two_dir), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-9)
        assert b["value_loss"] == pytest.approx(a["value_loss"], abs=1e-9)


@pytest.mark.xdist_group("fsdp-two")
def test_fsdp_accumulation_equals_ddp_and_one(tmp_path, tiny_model_dir, fsdp_two):
    """SFT, 2 processes × batch 1 × grad_accum 2: FSDP (whose first micro-batch keeps its gradient
    on the process, no reduce-scatter) and DDP (no all-reduce) end with the weights of one process
    taking the same global batch of 4 at once."""
    root, data, launch = fsdp_two
    check_done(root, "accum-fsdp", launch)
    check_done(root, "accum-ddp", launch)
    single = train(_accumulated(tiny_model_dir, data["sft"], tmp_path / "one", 4))
    one = weights(single.model_dir)
    assert max_abs_diff(one, weights(root / "accum-fsdp" / "model")) < 1e-9
    assert max_abs_diff(weights(root / "accum-ddp" / "model"), weights(root / "accum-fsdp" / "model")) < 1e-9
    assert max_abs_diff(one, weights(tiny_model_dir)) > 1e-3
    for a, b in zip(_train_lines(root / "accum-ddp"), _train_lines(root / "accum-fsdp"), strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-9) and b["grad_norm"] == pytest.approx(a["grad_norm"], abs=1e-9)


def test_fsdp_lost_process_then_resume(tmp_path, tiny_model_dir, pairs_file):
    """The second process dies after checkpoint 2 of 5: the run stops (the first process is not
    left waiting, and says what happened in one line), checkpoint 2 is intact, and resuming ends
    with the weights of a run never stopped."""
    common = dict(max_steps=5, dtype="fp64", save_every=1, keep_checkpoints=2, lr=1e-2)
    whole = train(base_config(tiny_model_dir, pairs_file, tmp_path / "whole", batch_size=4, **common))
    cfg = base_config(tiny_model_dir, pairs_file, tmp_path / "two", batch_size=2, fsdp=True, **common)
    proc = _torchrun(cfg, tmp_path, "two", module="tests.training.test_fsdp", ok=False)
    assert proc.returncode != 0
    # the first process says so in one line, naming the checkpoint to resume from
    assert "another process of the run was lost" in proc.stderr and "step-00000002: continue with --resume" in proc.stderr
    newest = newest_valid(tmp_path / "two" / "checkpoints", report=lambda _: None)
    assert newest is not None and newest.name == "step-00000002"
    assert not (tmp_path / "two" / "model").exists()
    _torchrun({**cfg, "resume": True}, tmp_path, "resumed")
    assert max_abs_diff(weights(whole.model_dir), weights(tmp_path / "two" / "model")) < 1e-9


def _die_after_step_2() -> None:
    import alignlab.training.loop as loop

    real = loop.save

    def save(inp, unwrapped, optimizer, scheduler, step, *rest):
        real(inp, unwrapped, optimizer, scheduler, step, *rest)
        if step == 2 and inp.dist.rank == 1:
            os._exit(1)

    loop.save = save


if __name__ == "__main__":
    from alignlab.cli import main

    _die_after_step_2()
    sys.exit(main())


def test_a_one_process_fsdp_run_ends_the_group_it_started(tmp_path, tiny_model_dir, sft_file):
    """In a process with no process group, ``train(fsdp=True)`` starts a group of one and ends it
    when it returns (or fails): a second run starts its own, and the process is left as found.
    A group the caller started is the caller's: the run uses it and leaves it running."""
    import torch.distributed as tdist

    common = dict(method="sft", max_steps=1, dtype="fp64", lr=1e-2, eval_fraction=0.0, cache=False, fsdp=True)
    assert not tdist.is_initialized()
    a = train(base_config(tiny_model_dir, sft_file, tmp_path / "a", **common))
    assert not tdist.is_initialized()
    with pytest.raises(ConfigError):  # a run that fails after the group started ends it too
        train(base_config(tiny_model_dir, sft_file, tmp_path / "a", **common))  # the folder is taken
    assert not tdist.is_initialized()
    tdist.init_process_group("gloo", store=tdist.HashStore(), rank=0, world_size=1)
    try:
        b = train(base_config(tiny_model_dir, sft_file, tmp_path / "b", **common))
        assert tdist.is_initialized()
    finally:
        tdist.destroy_process_group()
    assert max_abs_diff(weights(a.model_dir), weights(b.model_dir)) == 0


def test_a_lora_on_the_tied_output_layer_of_a_sharded_policy_is_saved(tmp_path, tied_model_dir):
    """FSDP (one process) with a LoRA on the output layer of a model whose output layer shares the
    input embeddings' weight: the export re-ties the two layers' shared weight through the adapter's
    layer (transformers' ``tie_weights`` cannot set a weight on a LoRA layer, and the run failed
    after training with "attribute 'weight' already exists"); the adapter equals the unsharded run's
    (fp64)."""
    from safetensors.torch import load_file

    common = dict(method="grpo", reward=["fn:tests.training.online_rewards:digits"], num_generations=4,
                  max_new_tokens=6, dtype="fp64", warmup_steps=0, lr=5e-2, max_steps=2, lora=True, lora_r=2,
                  lora_alpha=4, lora_target_modules=["q_proj", "lm_head"])
    plain = train(base_config(tied_model_dir, "task:arithmetic", tmp_path / "plain", **common))
    sharded = train(base_config(tied_model_dir, "task:arithmetic", tmp_path / "fsdp", fsdp=True, **common))
    a, b = (load_file(Path(s.model_dir) / "adapter_model.safetensors") for s in (plain, sharded))
    assert max_abs_diff(a, b) < 1e-9
    assert max(float(v.abs().max()) for k, v in a.items() if "lora_B" in k) > 1e-4

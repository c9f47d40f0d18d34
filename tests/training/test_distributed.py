"""Two gloo processes under torchrun give the same weights as one process with the same global
batch. Runs the real CLI in subprocesses."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from alignlab import train
from alignlab.errors import ConfigError
from tests.conftest import write_pairs_file, write_sft_file
from tests.training.helpers import base_config, max_abs_diff, weights
from tests.training.shape_data import write_shape
from tests.training.train_many import check_done, free_port, launch_all, launch_env

pytestmark = pytest.mark.slow


def _launch(cmd: list[str], cfg_path, tmp_path) -> subprocess.CompletedProcess:
    env = launch_env()
    proc = subprocess.run(cmd + ["-m", "alignlab.cli", "train", str(cfg_path)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


OFFLINE_CASES = [("dpo", "dpo", "pairs", 1 / 16, {}), ("sft", "sft", "sft", 0.25, {}),
                 ("lcpo", "lcpo", "pairs", 1 / 16, {}), ("kto", "kto", "unpaired", 1 / 16, {}),
                 ("reward_model", "reward_model", "pairs", 1 / 16, {}),
                 ("kto-ref-sync", "kto", "unpaired", 1 / 16, {"ref_sync_steps": 2})]


def _offline_config(model_dir, data: Path, out: Path, batch_size: int, method: str, eval_fraction: float,
                    extra: dict) -> dict:
    common = dict(method=method, max_steps=3, dtype="fp64", eval_fraction=eval_fraction, eval_every=2,
                  save_every=1, keep_checkpoints=0, **extra)
    return base_config(model_dir, data, out, batch_size=batch_size, **common)


@pytest.fixture(scope="module")
def offline_two(tmp_path_factory, tiny_model_dir) -> tuple[Path, dict[str, Path], subprocess.CompletedProcess]:
    """Every case's two-process run, in one launch (``train_many``): its folder, the data files
    by shape, and the launch."""
    root = tmp_path_factory.mktemp("offline-two")
    data = {"pairs": write_pairs_file(root), "sft": write_sft_file(root),
            "unpaired": write_shape(root, "unpaired", n=16)}
    configs = {name: _offline_config(tiny_model_dir, data[shape], root / name, 2, method, fraction, extra)
               for name, method, shape, fraction, extra in OFFLINE_CASES}
    return root, data, launch_all(configs, root)


# dpo holds out one example, so the second process evaluates nothing and must still take part.
# lcpo's noise estimate and kto's reference point are summed over both processes; the reference
# log-probs are computed half by each process and gathered. A reward model trains a backbone
# with a head, wrapped in DistributedDataParallel like a policy.
# With ref_sync_steps kto's reference moves after step 2: each process computes its batches'
# reference values (and its part of the reference point) from its own copy, synced alike.
@pytest.mark.xdist_group("offline-two")  # one worker runs the module's launch, for all cases
@pytest.mark.parametrize("name,method,shape,eval_fraction,extra", OFFLINE_CASES, ids=[c[0] for c in OFFLINE_CASES])
def test_two_processes_equal_one(tmp_path, tiny_model_dir, offline_two, name, method, shape, eval_fraction, extra):
    root, data, launch = offline_two
    check_done(root, name, launch)
    single = train(_offline_config(tiny_model_dir, data[shape], tmp_path / "one", 4, method, eval_fraction, extra))
    cfg = _offline_config(tiny_model_dir, data[shape], root / name, 2, method, eval_fraction, extra)

    assert max_abs_diff(weights(single.model_dir), weights(root / name / "model")) < 1e-9
    lines = [json.loads(x) for x in (root / name / "metrics.jsonl").read_text().splitlines()]
    train_lines = [x for x in lines if "loss" in x]
    assert [x["step"] for x in train_lines] == [1, 2, 3]  # written once, by rank 0 only
    one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip([x for x in one if "loss" in x], train_lines, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-9)
    evals_one = [x["eval/loss"] for x in one if "eval/loss" in x]
    evals_two = [x["eval/loss"] for x in lines if "eval/loss" in x]
    assert len(evals_two) == 2 and evals_two == pytest.approx(evals_one, abs=1e-9)

    # An unsharded checkpoint resumes on the number of processes that wrote it: in one process
    # it is refused, naming both counts and the global batch (2 × 2 here, 2 there).
    newest = sorted((root / name / "checkpoints").iterdir())[-1]
    shutil.rmtree(newest)
    with pytest.raises(ConfigError, match=r"written by 2 processes \(global_batch=4\) and this run has 1.*launch 2"):
        train({**cfg, "resume": True})


def test_accelerate_launch_two_processes_equal_one(tmp_path, tiny_model_dir, pairs_file):
    """`accelerate launch --multi_gpu` starts two gloo processes on a CPU machine; same result."""
    common = dict(max_steps=2, dtype="fp64")
    single = train(base_config(tiny_model_dir, pairs_file, tmp_path / "one", batch_size=4, **common))
    cfg = base_config(tiny_model_dir, pairs_file, tmp_path / "two", batch_size=2, **common)
    cfg_path = tmp_path / "two.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    _launch([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
             "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
             "--main_process_port", free_port()], cfg_path, tmp_path)
    assert max_abs_diff(weights(single.model_dir), weights(tmp_path / "two" / "model")) < 1e-9


def _trained(model_dir) -> dict:
    """A saved run's trained weights: a LoRA adapter's, else ``weights``."""
    adapter = Path(model_dir) / "adapter_model.safetensors"
    return load_file(adapter) if adapter.exists() else weights(model_dir)


# (id, method, updates per rollout, settings)
ONLINE_CASES = [
    ("grpo-1", "grpo", 1, {}), ("grpo-2", "grpo", 2, {}), ("ppo-2", "ppo", 2, {}),
    ("reinforce++-1", "reinforce++", 1, {}), ("grpo-2-lora-beta", "grpo", 2, {"lora": True, "beta": 0.1}),
    # padded rows: the packed/padded choice is per micro-batch
    ("grpo-1-dynamic", "grpo", 1, {"dynamic_sampling": True, "packing": False,
                                   "reward": ["fn:tests.training.online_rewards:digits_on_odd"]}),
    # OPO's baseline weighs by every process's lengths (which differ at 40 tokens), gathered or
    # from the groups dealt out
    ("opo-1", "opo", 1, {"max_new_tokens": 40}),
    ("opo-1-dynamic", "opo", 1, {"max_new_tokens": 40, "dynamic_sampling": True, "packing": False}),
    # GDPO normalises each term with every process's values
    ("gdpo-1", "grpo", 1, {"multi_objective_aggregation": "normalize_then_sum",
                           "reward": ["fn:tests.training.online_rewards:digits",
                                      "fn:tests.training.online_rewards:letters"],
                           "reward_weights": [1.0, 0.5], "packing": False}),
    # one entropy cut over both processes' tokens
    ("entropy-cut-1", "grpo", 1, {"top_entropy_quantile": 0.3, "packing": False}),
    # the entropy bonus's gradient through the output layer, reduced by DDP, and GMPO's clip at the
    # second update
    ("gmpo-2-entropy", "gmpo", 2, {"entropy_coef": 0.1}),
    # pass@k keeps only groups whose best answer is unique: a binary reward ties at the top in many groups
    ("grpo_passk-1-dynamic", "grpo_passk", 1, {"dynamic_sampling": True, "packing": False,
                                               "reward": ["fn:tests.training.online_rewards:has_digit"]}),
    # Clip-Cov's draw over both processes' tokens
    ("clip_cov-2", "grpo", 2, {"surrogate": "clip_cov", "cov_ratio": 0.2, "clip_cov_lb": -1e9,
                               "clip_cov_ub": 1e9, "packing": False}),
    # the reference synced on each process from its policy
    ("grpo-1-ref-sync", "grpo", 1, {"beta": 0.1, "ref_sync_steps": 2}),
    # each group's token baselines, on the process holding it
    ("otb-2", "otb", 2, {}),
]


def _online_config(model_dir, out: Path, batch_size: int, method: str, updates: int, extra: dict) -> dict:
    common = dict(method=method, reward=["fn:tests.training.online_rewards:digits"], num_generations=4,
                  max_new_tokens=6, dtype="fp64", warmup_steps=0, lr=1e-2, max_steps=4,
                  updates_per_rollout=updates)
    common.update(extra)
    return base_config(model_dir, "task:arithmetic", out, batch_size=batch_size, **common)


@pytest.fixture(scope="module")
def online_two(tmp_path_factory, tiny_model_dir) -> tuple[Path, subprocess.CompletedProcess]:
    """Every case's two-process run, in one launch (``train_many``): its folder, and the launch."""
    root = tmp_path_factory.mktemp("online-two")
    configs = {name: _online_config(tiny_model_dir, root / name, 4, method, updates, extra)
               for name, method, updates, extra in ONLINE_CASES}
    return root, launch_all(configs, root)


@pytest.mark.xdist_group("online-two")  # one worker runs the module's launch, for all cases
@pytest.mark.parametrize("name,method,updates,extra", ONLINE_CASES, ids=[c[0] for c in ONLINE_CASES])
def test_online_two_processes_equal_one(tmp_path, tiny_model_dir, online_two, name, method, updates, extra):
    """2 processes × 4 completions per step equal 1 process × 8 (fp64). Each process samples its
    own prompts, numbered so the native backend draws the same completions; the round's rewards
    are gathered for GRPO's advantages; with 2 updates per round the second step reuses the round
    with the old log-probs of its start. REINFORCE++ and PPO whiten their token advantages with
    the statistics of both processes' tokens; PPO's critic (a head on the policy) is averaged by
    DDP with the policy and compared too. A LoRA policy (its reference the network with the
    adapter off, for β > 0) samples on the native engine too: on the "hf" backend, which it fell
    back to, each process drew its prompts from the same random stream and 2 processes trained
    other weights than 1. With dynamic sampling the groups every process drew are dealt out in one
    order, so the processes train on the groups 1 process would."""
    root, launch = online_two
    check_done(root, name, launch)
    single = train(_online_config(tiny_model_dir, tmp_path / "one", 8, method, updates, extra))
    two_dir = root / name
    one_w, two_w = _trained(single.model_dir), _trained(two_dir / "model")
    assert max_abs_diff(one_w, two_w) < 1e-9
    if extra.get("lora"):  # the adapter's B starts at zero
        assert max(float(v.abs().max()) for k, v in one_w.items() if "lora_B" in k) > 1e-4
    else:
        start = weights(tiny_model_dir)
        assert max_abs_diff({k: v for k, v in one_w.items() if k in start}, start) > 1e-4
    one = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    two = [json.loads(x) for x in (two_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-9) and b["reward"] == pytest.approx(a["reward"], abs=1e-12)
        # one mean over both processes' tokens (none on a step whose every advantage is 0: nothing computed)
        assert ("entropy" in a) == ("entropy" in b)
        assert b.get("entropy", 0.0) == pytest.approx(a.get("entropy", 0.0), abs=1e-9)
        assert b.get("skipped_zero_advantage") == a.get("skipped_zero_advantage")

"""Bad or unusual input to an online run: each is a one-line error naming what is wrong (the field,
the file and row, the reward), reported before anything is sampled where it can be, never a run
that silently learns nothing or drops what the user gave."""

from __future__ import annotations

import json
import re

import pytest

from alignlab import train
from alignlab.config import make_config
from alignlab.errors import ConfigError, DataError, UserError

BASE = {"model": "m", "data": "task:arithmetic", "reward": ["task:arithmetic"]}


@pytest.mark.parametrize("method,extra", [
    ("grpo", {}), ("dapo", {}), ("dr_grpo", {}), ("gspo", {}), ("grpo", {"scale_rewards": "batch"}),
    ("rloo", {}), ("reinforce++", {"baseline": "group"}), ("opo", {}), ("grpo_passk", {}), ("gpg", {}),
    ("grpo_passk", {"scale_rewards": "none"}),
])
def test_one_sample_per_prompt_is_refused_where_the_advantage_compares_a_prompts_samples(method, extra):
    """With G = 1 a group's mean is its one reward, so every group-relative advantage is exactly 0
    and the run would train on nothing."""
    with pytest.raises(ConfigError, match=rf"^num_generations: method '{re.escape(method)}' compares each prompt's "
                                          r"samples with each other \(.+\); with 1 sample per prompt the reward adds "
                                          r"nothing to any advantage, so nothing is learned from it: set "
                                          r"num_generations to 2 or more$"):
        make_config({**BASE, "method": method, "num_generations": 1, **extra})


@pytest.mark.parametrize("method,extra", [("remax", {}), ("reinforce++", {}), ("ppo", {})])
def test_one_sample_per_prompt_is_fine_where_the_baseline_is_not_the_group(method, extra):
    assert make_config({**BASE, "method": method, "num_generations": 1, **extra}).rollout.num_generations == 1


TOP_K_1 = ("top_k: 1 keeps only the most likely token at each step, so every sample of a prompt is one and the same "
           "completion, with one reward")


@pytest.mark.parametrize("method,extra,why", [
    *((m, {}, "its advantage is a reward minus its group's mean, so the reward adds nothing to any advantage")
      for m in ("grpo", "dapo", "dr_grpo", "gspo", "luspo", "cispo", "sapo", "vespo", "gmpo", "dppo")),
    ("rloo", {}, "its baseline is the mean reward of the prompt's other samples, so the reward adds nothing to any "
                 "advantage"),
    ("opo", {}, "its baseline is the length-weighted mean reward of the prompt's samples, so the reward adds nothing "
                "to any advantage"),
    ("gpg", {}, "its baseline is the mean reward of the prompt's samples, so the reward adds nothing to any advantage"),
    ("grpo_passk", {}, "its advantage is the best sample's margin over the prompt's second best, so the reward adds "
                       "nothing to any advantage"),
    ("reinforce++", {"baseline": "group"}, "baseline 'group' subtracts the prompt's mean score, so the reward adds "
                                           "nothing to any advantage"),
    *(("remax", {"num_generations": g}, "its baseline is the reward of the prompt's greedy answer, which each sample "
                                        "then is, so every advantage is 0") for g in (1, 4)),
    ("otb", {"num_generations": 2}, "each token's baseline is the energy-weighted mean of the group's returns, which "
                                    "is then the sample's own return (but for a 1e-8 guard), so every advantage is "
                                    "about 0"),
    ("online-dpo", {}, "its two answers tie, and a tie adds no loss"),
])
def test_top_k_1_is_refused_where_the_method_would_learn_nothing_from_the_reward(method, extra, why):
    """top_k 1 makes a prompt's samples one completion: every group-relative advantage is 0, ReMax's
    samples are its greedy baseline, online DPO's pairs tie. The run sampled and trained on nothing,
    without a word (``learns_nothing_from_tied_samples`` says why for each)."""
    with pytest.raises(ConfigError) as e:
        make_config({**BASE, "method": method, "top_k": 1, **extra})
    assert str(e.value) == (f"{TOP_K_1}, and method '{method}' learns nothing from the reward: {why}; set top_k "
                            "to 0 (off) or 2 or more")


@pytest.mark.parametrize("method,extra", [
    ("reinforce++", {}), ("ppo", {}), ("otb", {"num_generations": 1}), ("grpo", {"top_k": 2}), ("grpo", {"top_k": 0}),
    ("grpo", {"top_k": 0, "top_p": 1e-9}), ("grpo", {"top_k": 0, "temperature": 1e-3}), ("remax", {"top_k": 2}),
])
def test_top_k_1_is_taken_where_the_method_still_learns_and_near_greedy_sampling_is_taken(method, extra):
    """REINFORCE++ whitens over the whole round (prompts with different rewards still differ), PPO's
    baseline is its critic, OTB with one sample per prompt has no baseline; a tiny top_p or
    temperature does not make every sample the same for certain."""
    cfg = make_config({**BASE, "method": method, "top_k": 1, **extra})
    assert cfg.rollout.top_k == extra.get("top_k", 1)


@pytest.mark.parametrize("method,shape", [("dpo", "pair"), ("kto", "unpaired"), ("listmle", "ranked")])
def test_top_k_1_is_refused_for_rounds_that_compare_a_prompts_samples(method, shape):
    """Samples that all tie make no pair, thumbs or ranked list: every round would train on nothing.
    SFT rounds (raft) keep the best sample, which one completion still is."""
    with pytest.raises(ConfigError) as e:
        make_config({**BASE, "method": method, "rounds": 2, "top_k": 1})
    assert str(e.value) == (f"{TOP_K_1}, and rounds make {shape} data for method '{method}' from samples that score "
                            "differently: no prompt makes any; set top_k to 0 (off) or 2 or more")
    assert make_config({**BASE, "method": "sft", "rounds": 2, "top_k": 1}).rollout.top_k == 1


@pytest.mark.parametrize("given,specs", [
    ("length:coef=0.01,target=5", ["length:coef=0.01,target=5"]),
    ("openai:http://127.0.0.1:9/v1,model=judge,swap=false", ["openai:http://127.0.0.1:9/v1,model=judge,swap=false"]),
    ("task:arithmetic,length:coef=0.5,unit=chars", ["task:arithmetic", "length:coef=0.5,unit=chars"]),
    ("task:arithmetic,length,fn:m:f", ["task:arithmetic", "length", "fn:m:f"]),
    ("task:arithmetic:gold, length:coef=0.5, unit=chars", ["task:arithmetic:gold", "length:coef=0.5,unit=chars"]),
    ('["length:coef=0.01,target=5", "task:arithmetic"]', ["length:coef=0.01,target=5", "task:arithmetic"]),
])
def test_a_reward_given_as_one_text_splits_only_between_scorer_specs(given, specs):
    """A spec's own options (key=value after a comma) stay with it, from YAML, a flag or Python."""
    weights = {"reward_weights": [1.0] * len(specs)}
    assert make_config({**BASE, "method": "grpo", "reward": given, **weights}).rollout.reward == specs


def test_weights_without_a_reward_say_the_reward_is_missing():
    """On task data the reward may be left out (the task's gold); weights given then weigh
    nothing given, which is the error (it read "give one weight per reward (0)")."""
    with pytest.raises(ConfigError) as e:
        make_config({"model": "m", "data": "task:arithmetic", "method": "grpo", "reward_weights": [2]})
    assert str(e.value) == ("reward_weights: weigh the scorer specs of reward, and reward is not given (got weights "
                            "[2.0]); give reward with one weight per spec, or leave reward_weights out")


def test_weights_that_are_all_zero_are_refused():
    """Weights all 0 make every sample's reward 0: every advantage is 0 and the run learned nothing,
    without a word; one weight of 0 beside another is a term switched off, and is fine."""
    with pytest.raises(ConfigError) as e:
        make_config({**BASE, "method": "grpo", "reward": ["task:arithmetic", "length"], "reward_weights": [0, -0.0]})
    assert str(e.value) == ("reward_weights: every weight is 0 ([0.0, -0.0]), so every sample's reward is 0 and "
                            "nothing is learned from it; give at least one weight other than 0")
    weights = [0.0, 1.0]
    cfg = make_config({**BASE, "method": "grpo", "reward": ["task:arithmetic", "length"], "reward_weights": weights})
    assert cfg.rollout.reward_weights == weights


@pytest.mark.parametrize("given,shown", [("", "['']"), (" ", "['']"), ("task:arithmetic,,length",
                                                                          "['task:arithmetic', '', 'length']"),
                                          (["task:arithmetic", ""], "['task:arithmetic', '']")])
def test_an_empty_reward_spec_is_refused_not_taken_for_no_reward(given, shown):
    """An empty spec (a flag given '', a stray comma) is an error naming the specs, not a silent
    fall back to the task's gold reward, which an absent reward means."""
    with pytest.raises(ConfigError) as e:
        make_config({**BASE, "method": "grpo", "reward": given})
    assert str(e.value) == (f"reward: an empty scorer spec in {shown}; give each one (e.g. task:arithmetic), or leave "
                            "reward out where data is task:NAME to use the task's gold reward")


@pytest.mark.parametrize("yaml_line,flags", [
    ("reward:\n", {}), ("reward: null\n", {}), ("reward: []\n", {}), ("rollout: {reward: null}\n", {}),
    *(("reward: [task:arithmetic:proxy]\n", {"reward": flag}) for flag in ("null", "none", "[]")),
])
def test_a_reward_given_as_null_or_no_specs_is_the_same_as_leaving_it_out(tmp_path, yaml_line, flags):
    """null (YAML's, or a flag's null / none, which clears the file's reward) and [] (what a run's
    run.yaml holds for a reward left out) give the config of a reward left out: a run on task:NAME
    then scores with the task's gold reward. null was refused ("a value is required")."""
    from alignlab.config import load_config

    common = "model: m\ndata: task:arithmetic\nmethod: grpo\n"
    (tmp_path / "given.yaml").write_text(common + yaml_line)
    (tmp_path / "left_out.yaml").write_text(common)
    cfg = load_config(tmp_path / "given.yaml", flags)
    assert cfg.rollout.reward == []
    assert cfg.to_dict() == load_config(tmp_path / "left_out.yaml").to_dict()


@pytest.mark.parametrize("reward", [None, [], "null"])
def test_a_recipes_reward_is_used_where_reward_is_null_or_no_specs(reward):
    """As where reward is left out: self-rewarding's judge, not the task's gold."""
    cfg = make_config({"model": "m", "data": "task:arithmetic", "rounds": 1, "recipe": "self-rewarding",
                       "reward": reward})
    assert cfg.rollout.reward == ["judge:{policy}"]


def test_a_reward_flag_with_options_reaches_the_scorer_whole(tmp_path, tiny_model_dir, capsys):
    """From the command line: the endpoint's model is not lost to a split at the comma, so the
    judge is built and asked (nothing listens on port 9: the run stops at its first request)."""
    from alignlab.cli import main

    code = main(["train", "--method", "grpo", "--model", str(tiny_model_dir), "--data", "task:arithmetic",
                 "--reward", "openai:http://127.0.0.1:9/v1,model=judge", "--num-generations", "2",
                 "--batch-size", "2", "--max-new-tokens", "2", "--max-steps", "1", "--progress", "false",
                 "--output-dir", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert err.startswith("alignlab: error: reward 'openai:http://127.0.0.1:9/v1,model=judge': prompt row 1, "
                          "sample 1: judge request to http://127.0.0.1:9/v1/chat/completions "
                          "failed: cannot connect")


def _online(model_dir, out, **overrides) -> dict:
    cfg = {"method": "grpo", "model": str(model_dir), "data": "task:arithmetic", "output_dir": str(out),
           "reward": ["task:arithmetic"], "num_generations": 2, "batch_size": 4, "max_new_tokens": 3, "max_steps": 1,
           "progress": False, "dtype": "fp64"}
    cfg.update(overrides)
    return cfg


def _prompt_file(path, prompts) -> str:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return str(path)


def test_a_prompt_the_reward_cannot_score_is_reported_at_load_time(tmp_path, tiny_model_dir):
    """BLEU without references for row 3's prompt, or a task's reward on a prompt of another kind,
    stops the run before the first round with the file and row, not when the prompt is drawn."""
    data = _prompt_file(tmp_path / "prompts.jsonl", ["1+1=", "2+2=", "3+3=", "4+4="])
    refs = tmp_path / "refs.jsonl"
    refs.write_text("".join(json.dumps({"prompt": p, "references": [a]}) + "\n"
                            for p, a in (("1+1=", "2"), ("2+2=", "4"), ("4+4=", "8"))))
    with pytest.raises(DataError) as e:
        train(_online(tiny_model_dir, tmp_path / "a", data=data, reward=[f"bleu:{refs}"]))
    assert str(e.value) == (f"{data}, row 3, field 'prompt': reward 'bleu:{refs}': no reference answer for the "
                            "prompt '3+3=' (every prompt needs what its reward reads)")
    assert not (tmp_path / "a" / "metrics.jsonl").exists()

    with pytest.raises(DataError, match=rf"^{re.escape(data)}, row 1, field 'prompt': reward 'task:sentiment': not "
                                        r"a sentiment prompt: '1\+1=' .*\(and 3 more bad rows; every prompt needs "
                                        r"what its reward reads\)$"):
        train(_online(tiny_model_dir, tmp_path / "b", data=data, reward=["task:sentiment"]))
    assert not (tmp_path / "b" / "metrics.jsonl").exists()


def test_a_length_penalty_in_tokens_counts_the_policys_tokens(tmp_path, tiny_model_dir):
    """`length:unit=tokens` is a documented option: an online run counts with its policy's
    tokenizer (it was refused for want of a tokenizer the spec cannot name)."""
    from alignlab.models import load_tokenizer
    from alignlab.training.rollout import load_reward_terms

    tok = load_tokenizer(str(tiny_model_dir))
    (term,) = load_reward_terms(["length:coef=0.5,target=1,unit=tokens"], tokenizer=tok)
    texts = ["hello world", "ab", ""]
    counts = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert counts[0] > 1 and counts[2] == 0
    assert term.scorer.score(["p"] * 3, texts) == [-0.5 * max(0, n - 1) for n in counts]

    from alignlab.rewards import load_scorer

    with pytest.raises(UserError, match=r"^scorer 'length:unit=tokens': unit=tokens counts the policy's tokens, "
                                        r"and there is no policy here .*; use unit=words or unit=chars$"):
        load_scorer("length:unit=tokens")
    summary = train(_online(tiny_model_dir, tmp_path / "run", reward=["length:coef=1,unit=tokens"]))
    assert summary.train_metrics["reward/length:coef=1,unit=tokens"] < 0  # the answers have tokens


def test_a_prompt_of_another_kind_is_refused_by_a_tasks_reward_showing_its_start(tmp_path, tiny_model_dir):
    """A task's reward refuses a prompt it cannot score, showing it cut to 80 characters."""
    with pytest.raises(DataError, match=r"row 2, field 'prompt': reward 'task:arithmetic': not an arithmetic "
                                        r"prompt: '9{80}'\.\.\. \(expected"):
        train(_online(tiny_model_dir, tmp_path / "t", data=_prompt_file(tmp_path / "t.jsonl", ["1+1=", "9" * 2046])))


@pytest.mark.parametrize("max_length,prompts,bad,no_room", [
    # the tiny model's context is 2048 tokens and its tokenizer writes a digit as one token; with
    # max_length 4096 the context is the tighter bound: rows 2 and 3 (2046 and 2100 tokens) with
    # 3 new tokens pass it, and max_new_tokens 2048 leaves no room at all
    (4096, ["1+1=", "9" * 2046, "8" * 2100],
     "row 2, field 'prompt': 2046 tokens + max_new_tokens 3 exceed the model's context of 2048 tokens "
     "(max_position_embeddings) (and 1 more bad row; shorten the prompts or lower max_new_tokens)",
     (2048, "max_new_tokens: 2048 leaves no room for a prompt in the model's context of 2048 tokens "
            "(max_position_embeddings); give at most 2047")),
    # max_length 10 with 3 new tokens leaves 7 of prompt: '1+1=' (4) and '9' * 7 fit, '9' * 8 does
    # not (8 + 3 = 11 > 10); max_new_tokens 10 leaves none (a completion stops at max_new_tokens,
    # so a prompt that fits gives no sample longer than max_length)
    (10, ["1+1=", "9" * 7, "9" * 8],
     "row 3, field 'prompt': 8 tokens + max_new_tokens 3 exceed max_length (10 tokens) (shorten the prompt, raise "
     "max_length or lower max_new_tokens)",
     (10, "max_new_tokens: 10 leaves no room for a prompt in max_length (10 tokens); give at most 9 or raise "
          "max_length")),
])
def test_prompts_without_room_in_max_length_or_the_context_are_named(tmp_path, tiny_model_dir, max_length, prompts,
                                                                     bad, no_room):
    data = _prompt_file(tmp_path / "p.jsonl", prompts)
    with pytest.raises(DataError) as e:
        train(_online(tiny_model_dir, tmp_path / "a", data=data, reward=["length"], max_length=max_length))
    assert str(e.value) == f"{data}, {bad}"
    with pytest.raises(ConfigError) as e:
        train(_online(tiny_model_dir, tmp_path / "b", data=data, reward=["length"], max_length=max_length,
                      max_new_tokens=no_room[0]))
    assert str(e.value) == no_room[1]
    assert not (tmp_path / "a" / "metrics.jsonl").exists() and not (tmp_path / "b" / "metrics.jsonl").exists()


@pytest.mark.parametrize("value,shown", [
    ("1.5", "'1.5', not a number"), (b"2", "b'2', not a number"), ("nan", "'nan', not a number"),
    (10**400, "1000000000000000000000000000000000000000..., not a finite number"),
])
def test_a_reward_function_must_return_a_number_not_text_or_an_overflowing_one(value, shown):
    """A function that returns the text of a number has a bug (a verdict it forgot to parse); it
    is not read as that number. An int too large for a float is no finite reward."""
    from alignlab.rewards import FunctionReward

    reward = FunctionReward(lambda prompt, response: value, name="mine")
    with pytest.raises(UserError) as e:
        reward.score(["p"], ["r"])
    assert str(e.value) == f"reward function mine: returned {shown}"
    with pytest.raises(UserError) as e:  # one of several: named by its place in the call
        reward.score(["p", "p"], ["r", "s"])
    assert str(e.value) == f"reward function mine: item 0 is {shown}"
    assert reward.__class__(lambda p, r: True, name="b").score(["p"], ["r"]) == [1.0]  # a bool is a number


def test_a_scorer_that_returns_text_stops_the_step_naming_the_sample():
    from alignlab.rewards.base import Scorer
    from alignlab.training.rollout import RewardError, RewardTerm, score_samples

    class Texts(Scorer):
        def score(self, prompts, responses):
            return [0.5, "0.75"]

    with pytest.raises(RewardError, match=r"^reward 'mine': prompt row 7, sample 2: returned '0.75', not a number$"):
        score_samples([RewardTerm("mine", Texts())], ["p", "p"], ["a", "b"],
                      ["prompt row 7, sample 1", "prompt row 7, sample 2"], [1, 1])


@pytest.mark.parametrize("flags,message", [
    (["--reward", "task:arithmetic", "--reward", "length"],
     "--reward given twice ('task:arithmetic' and 'length'); give every value after one flag: --reward A B"),
    (["--reward", "task:arithmetic", "length", "--reward_weights", "1", "2", "--reward-weights", "3"],
     "--reward-weights given twice ('1 2' and '3'); give every value after one flag: --reward-weights A B"),
])
def test_a_list_flag_given_twice_is_refused_not_half_dropped(flags, message, capsys):
    """`--reward A --reward B` trained on B alone."""
    from alignlab.cli import main

    code = main(["train", "--method", "grpo", "--model", "/no/such/dir", "--data", "task:arithmetic", *flags])
    assert code == 2 and capsys.readouterr().err.strip() == f"alignlab: error: {message}"


def test_a_prompt_column_for_a_tasks_prompts_is_refused(tmp_path, tiny_model_dir):
    """A task's prompts have no columns: the option was ignored without a word."""
    with pytest.raises(ConfigError, match=r"^prompt_column: data 'task:arithmetic' is a testbed task's prompts, "
                                          r"which have no columns; prompt_column names the column of a prompt file$"):
        train(_online(tiny_model_dir, tmp_path / "a", prompt_column="question"))


def test_a_conversation_that_ends_with_an_answer_or_asks_nothing_is_a_bad_row(tmp_path, tiny_model_dir):
    """The policy would answer after an answer, or the reward would read an empty question."""
    user = {"role": "user", "content": "What is 2+3?"}
    data = _prompt_file(tmp_path / "chats.jsonl", [[user], [user, {"role": "assistant", "content": "5"}],
                                                   [{"role": "user", "content": "  "}]])
    with pytest.raises(DataError) as e:
        train(_online(tiny_model_dir, tmp_path / "a", data=data, reward=["length"]))
    assert str(e.value) == (f"{data}, row 2, field 'prompt': the conversation ends with an assistant message; an "
                            "online prompt waits for the assistant's answer (and 1 more bad row; every conversation "
                            "prompt needs a user message and ends before the answer)")
    assert [str(i) for i in e.value.issues][1] == (f"{data}, row 3, field 'prompt': the conversation's last user "
                                                   "message is empty, so a reward has no question to read")


@pytest.mark.parametrize("field,value,message", [
    ("eval_fraction", 0.25, "an online method measures no held-out loss, so no prompts are held out; measure it on a "
                            "testbed task's held-out prompts with task (and eval_every)"),
    ("eval_data", "held-out.jsonl", "an online method measures no held-out loss, so no held-out data is read; "
                                    "measure it on a testbed task's held-out prompts with task (and eval_every)"),
    ("columns", {"prompt": "question"}, "an online method reads only the prompts of data; name their column with "
                                        "prompt_column"),
    ("max_prompt_length", 8, "an online method does not cut its prompts (one that leaves no room for "
                             "max_new_tokens in the model's context is a bad row); leave it unset"),
    ("group_by_length", True, "an online method draws its prompts in an order of its own and samples their "
                              "answers, so there are no lengths to group by; leave it unset"),
])
@pytest.mark.parametrize("method", ["grpo", "ppo", "online-dpo"])
def test_offline_data_options_are_refused_not_ignored(method, field, value, message):
    """These read fixed training data; an online run samples its prompts' answers and trained as if
    they were not given: no evaluation at all for a held-out fraction or file, the prompt column of
    the file rather than the one `columns` maps, prompts longer than max_prompt_length kept whole."""
    extra = {"num_generations": 2} if method == "online-dpo" else {}
    with pytest.raises(ConfigError) as e:
        make_config({**BASE, "method": method, field: value, **extra})
    assert str(e.value) == f"{field}: {message}"
    assert make_config({"model": "m", "data": "pairs.jsonl", "method": "dpo", field: value})  # offline: read


def test_a_prompt_file_with_the_column_mapped_by_columns_is_refused_before_training(tmp_path, tiny_model_dir):
    """Rows with both a 'prompt' and a 'question': `columns: {prompt: question}` trained on 'prompt'."""
    data = tmp_path / "both.jsonl"
    data.write_text("".join(json.dumps({"prompt": "1+1=", "question": f"{i}+{i}="}) + "\n" for i in range(4)))
    with pytest.raises(ConfigError, match=r"^columns: "):
        train(_online(tiny_model_dir, tmp_path / "a", data=str(data), columns={"prompt": "question"}))
    assert not (tmp_path / "a" / "metrics.jsonl").exists()


def test_skip_invalid_leaves_out_the_prompt_rows_an_online_run_cannot_use(tmp_path, tiny_model_dir, capsys,
                                                                           monkeypatch):
    """Row 2 has an empty prompt (the loader's check), rows 4 and 5 are no arithmetic prompts (the
    reward's check) and row 4 is too long for max_length (1024) besides (the check against
    max_new_tokens: 2,046 digits and "=" are 2,047 tokens, and a length reward, scoring any prompt,
    leaves that check to find it): with skip_invalid
    each is left out, counted and printed, and the run draws from the rows left; without it the
    first stops the run. A file of bad rows only is still an error."""
    import alignlab.training.run as run_mod

    data = tmp_path / "mixed.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["1+1=", "", "2+2=", "9" * 2046 + "=", "hello"]))
    with pytest.raises(DataError, match=r"row 2, field 'prompt'"):
        train(_online(tiny_model_dir, tmp_path / "a", data=str(data)))
    kept = []
    make = run_mod.online_source

    def recording(*args, **kwargs):
        source = make(*args, **kwargs)
        kept.append([prompt[0] for prompt in source.prompts])
        return source

    monkeypatch.setattr(run_mod, "online_source", recording)
    capsys.readouterr()
    for reward, rows in (("task:arithmetic", [1, 3]), ("length", [1, 3, 5])):
        summary = train(_online(tiny_model_dir, tmp_path / reward.replace(":", "-"), data=str(data), reward=[reward],
                                skip_invalid=True))
        assert summary.steps == 1 and kept[-1] == rows
    captured = capsys.readouterr()
    printed = (captured.out + captured.err).splitlines()
    head = f"{data}: "
    assert [line for line in printed if line.startswith(head)] == [
        f"{head}1 invalid prompt row skipped (first: {data}, row 2, field 'prompt': empty prompt)",
        f"{head}2 invalid prompt rows skipped (first: {data}, row 4, field 'prompt': reward 'task:arithmetic': not "
        f"an arithmetic prompt: '{'9' * 80}'... (expected the form '37+58='))",
        f"{head}1 invalid prompt row skipped (first: {data}, row 2, field 'prompt': empty prompt)",
        f"{head}1 invalid prompt row skipped (first: {data}, row 4, field 'prompt': 2047 tokens + max_new_tokens 3 "
        "exceed max_length (1024 tokens))"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": ""}) + "\n" + json.dumps({"prompt": "hello"}) + "\n")
    with pytest.raises(DataError, match="every prompt row is invalid"):
        train(_online(tiny_model_dir, tmp_path / "c", data=str(bad), skip_invalid=True))


def test_skip_invalid_in_a_directory_of_files_leaves_out_the_bad_rows_file_by_file(tmp_path, tiny_model_dir,
                                                                                    monkeypatch):
    """A dataset directory's files each number their rows from 1: an empty prompt on b.jsonl's
    row 1 is left out, and a.jsonl's row 1 is kept (rows were matched by number alone, so
    a.jsonl's row 1 was dropped too, without a word)."""
    import alignlab.training.run as run_mod

    folder = tmp_path / "d"
    folder.mkdir()
    _prompt_file(folder / "a.jsonl", ["1+1=", "2+2="])
    _prompt_file(folder / "b.jsonl", ["", "3+3=", "4+4="])
    trained = []
    make = run_mod.online_source

    def recording(*args, **kwargs):
        source = make(*args, **kwargs)
        trained.append([prompt[1] for prompt in source.prompts])
        return source

    monkeypatch.setattr(run_mod, "online_source", recording)
    train(_online(tiny_model_dir, tmp_path / "out", data=str(folder), skip_invalid=True))
    assert trained == [["1+1=", "2+2=", "3+3=", "4+4="]]


def test_a_reward_fault_in_a_directory_of_files_names_the_prompts_file(tmp_path, tiny_model_dir):
    """Each file of a folder numbers its rows from 1, so a fault while training names the prompt
    by its file and row ('3+3=' is b.jsonl's row 1), not by a row number that two files share;
    a single file's prompts keep their plain 'prompt row N'."""
    from alignlab.training.rollout import RewardError

    folder = tmp_path / "d"
    folder.mkdir()
    _prompt_file(folder / "a.jsonl", ["1+1=", "2+2="])
    _prompt_file(folder / "b.jsonl", ["3+3=", "4+4="])
    reward = "fn:tests.training.online_rewards:fails_on_3_plus_3"
    with pytest.raises(RewardError) as e:
        train(_online(tiny_model_dir, tmp_path / "out", data=str(folder), reward=[reward], max_steps=2))
    assert str(e.value).startswith(f"reward '{reward}': prompt {folder / 'b.jsonl'}, row 1, sample 1: raised "), e.value
    single = _prompt_file(tmp_path / "one.jsonl", ["3+3=", "1+1="])
    with pytest.raises(RewardError) as e:
        train(_online(tiny_model_dir, tmp_path / "one", data=single, reward=[reward], max_steps=2))
    assert str(e.value).startswith(f"reward '{reward}': prompt row 1, sample 1: raised "), e.value


def test_a_prompt_too_long_in_a_directory_of_files_is_named_by_its_file():
    """check_room names the file of the row (b.jsonl's row 2), not the directory, and leaves out
    that row alone, not a.jsonl's row 2 with it."""
    from types import SimpleNamespace

    from alignlab.data.records import PromptRecord
    from alignlab.training.online_run import check_room

    a = [PromptRecord(text, source="d/a.jsonl", row=i) for i, text in enumerate(["1+1=", "2+2="], 1)]
    b = [PromptRecord(text, source="d/b.jsonl", row=i) for i, text in enumerate(["3+3=", "123456"], 1)]
    cfg = SimpleNamespace(data="d", dataset=SimpleNamespace(skip_invalid=True, max_length=8))
    generator = SimpleNamespace(prompt_ids=lambda text: list(text))
    lines = []
    assert check_room(cfg, a + b, generator, SimpleNamespace(config=SimpleNamespace()), 3, lines.append) == a + b[:1]
    assert lines == ["d: 1 invalid prompt row skipped (first: d/b.jsonl, row 2, field 'prompt': 6 tokens + "
                     "max_new_tokens 3 exceed max_length (8 tokens))"]


def test_the_tokenizers_model_max_length_bounds_the_context_as_for_sample_and_rounds():
    """A tokenizer whose model_max_length (8) is below the config's positions (2048) bounds the
    prompts, as `alignlab sample` and rounds read the context: with 3 new tokens a 5-token prompt
    fits and a 6-token one is left out, named with where the bound comes from."""
    from types import SimpleNamespace

    from alignlab.data.records import PromptRecord
    from alignlab.training.online_run import check_room

    prompts = [PromptRecord(text, source="p.jsonl", row=i) for i, text in enumerate(["12345", "123456"], 1)]
    cfg = SimpleNamespace(data="p.jsonl", dataset=SimpleNamespace(skip_invalid=True, max_length=1024))
    generator = SimpleNamespace(prompt_ids=lambda text: list(text))
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=2048))
    lines = []
    assert check_room(cfg, prompts, generator, model, 3, lines.append, SimpleNamespace(model_max_length=8)) \
        == prompts[:1]
    assert lines == ["p.jsonl: 1 invalid prompt row skipped (first: p.jsonl, row 2, field 'prompt': 6 tokens + "
                     "max_new_tokens 3 exceed the model's context of 8 tokens (the tokenizer's model_max_length))"]
    # without the tokenizer's bound, the config's positions are the context, and max_length the tighter
    assert check_room(cfg, prompts, generator, model, 3, lines.append) == prompts


def test_a_model_whose_config_gives_no_context_is_bounded_by_max_length_alone():
    """Where the config names no context length, max_length is the only bound: with max_length 8
    and 3 new tokens, a 5-token prompt fits and a 6-token one is left out (skip_invalid). The
    kept prompts are returned: the run trains on what this returns."""
    from types import SimpleNamespace

    from alignlab.data.records import PromptRecord
    from alignlab.training.online_run import check_room

    prompts = [PromptRecord(text, source="p.jsonl", row=i) for i, text in enumerate(["1+1=", "12345", "123456"], 1)]
    cfg = SimpleNamespace(data="p.jsonl", dataset=SimpleNamespace(skip_invalid=True, max_length=8))
    generator = SimpleNamespace(prompt_ids=lambda text: list(text))
    lines = []
    assert check_room(cfg, prompts, generator, SimpleNamespace(config=SimpleNamespace()), 3, lines.append) == prompts[:2]
    assert lines == ["p.jsonl: 1 invalid prompt row skipped (first: p.jsonl, row 3, field 'prompt': 6 tokens + "
                     "max_new_tokens 3 exceed max_length (8 tokens))"]

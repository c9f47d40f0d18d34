"""Every scorer through the one interface (``alignlab.rewards.base.Scorer``), built from its text
form where it has one: the same properties hold for all of them."""

from __future__ import annotations

import json
import math
import sys
import textwrap

import pytest
import torch

from alignlab.errors import UserError
from alignlab.rewards import (
    FunctionReward,
    LengthPenalty,
    LogSigmoidSum,
    Routed,
    Scorer,
    TaskReward,
    WeightedSum,
    by_task,
    load_scorer,
)
from alignlab.rewards.judge import CallableBackend, PairwiseJudge, PointwiseJudge
from alignlab.rewards.model import new_reward_model, save_reward_model
from tests.rewards.test_judge import default_template_longer_wins, stub  # noqa: F401 (a fixture)

PROMPTS = ["The pasta at Marco's", "This phone's screen", "My shoes from the mall"]
FIRST = [" was wonderful and the staff were kind.", " was broken.", " was fine"]
SECOND = [" was awful.", " was great, we loved it and told our friends.", " was fine"]


def _longer(text: str) -> str:
    return default_template_longer_wins(text)


def _rating(text: str) -> str:
    answer = text.split("[The Start of Assistant's Answer]\n")[1].split("\n[The End of Assistant's Answer]")[0]
    return f"Rating: [[{min(10, 1 + len(answer) // 5)}]]"


@pytest.fixture(scope="module")
def reward_dirs(tiny_model_dir, tmp_path_factory):
    """An untrained Bradley-Terry and gated GPM reward model (random heads) saved as training saves them."""
    from alignlab.models import load_tokenizer

    out = {}
    for objective, dim, gate in (("bt", 1, False), ("gpm", 4, True)):
        torch.manual_seed(0)
        model = new_reward_model(str(tiny_model_dir), objective, dim, "auto", gate, objective == "gpm", 0.1)
        out[objective] = save_reward_model(model, load_tokenizer(str(tiny_model_dir)),
                                           tmp_path_factory.mktemp(f"rm-{objective}"))
    return out


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("userfn")
    (folder / "interface_rewards.py").write_text(textwrap.dedent("""
        def words(prompt, response):
            return len(response.split())
    """))
    sys.path.insert(0, str(folder))
    yield "interface_rewards"
    sys.path.remove(str(folder))


@pytest.fixture(scope="module")
def refs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bleu") / "refs.jsonl"
    rows = [{"prompt": p, "references": [" was wonderful and kind.", " was great."]} for p in PROMPTS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _build(kind: str, request) -> Scorer:
    tiny = request.getfixturevalue("tiny_model_dir")
    if kind == "rm-bt":
        return load_scorer(f"rm:{request.getfixturevalue('reward_dirs')['bt']}")
    if kind == "rm-gpm":
        return load_scorer(str(request.getfixturevalue("reward_dirs")["gpm"]))
    if kind == "implicit":
        return load_scorer(f"implicit:policy={tiny},reference={tiny},beta=0.5")
    if kind == "task":
        return load_scorer("task:sentiment")
    if kind == "task-proxy":
        return load_scorer("task:sentiment:proxy")
    if kind == "length":
        return load_scorer("length:coef=0.1,target=3")
    if kind == "fn":
        return load_scorer(f"fn:{request.getfixturevalue('user_module')}:words")
    if kind == "bleu":
        return load_scorer(f"bleu:{request.getfixturevalue('refs_file')}")
    if kind == "weighted":
        return WeightedSum([(1.0, TaskReward("sentiment")), (0.5, LengthPenalty(0.1))])
    if kind == "logsigmoid":
        return LogSigmoidSum([(TaskReward("sentiment"), 0.0), (LengthPenalty(0.1), -0.2)])
    if kind == "routed":
        return Routed(by_task({"sentiment": TaskReward("sentiment")}), default=LengthPenalty())
    if kind == "judge-pairwise":
        return PairwiseJudge(CallableBackend(_longer))
    if kind == "judge-pointwise":
        return PointwiseJudge(CallableBackend(_rating))
    if kind == "judge-openai":
        server = request.getfixturevalue("stub")
        server.judge = _longer
        return load_scorer(f"openai:{server.base_url},model=judge-x")
    if kind == "function-object":
        return FunctionReward(lambda p, y: y.count("w"))
    raise AssertionError(kind)


KINDS = ["rm-bt", "rm-gpm", "implicit", "task", "task-proxy", "length", "fn", "bleu", "weighted", "logsigmoid",
         "routed", "judge-pairwise", "judge-pointwise", "judge-openai", "function-object"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_scorer_keeps_the_interface(kind, request):
    """score: one finite float per pair, the same in a batch as one at a time; compare: a
    probability, P(a ≻ b) + P(b ≻ a) = 1 and P(a ≻ a) = 1/2; lists of different lengths are a
    UserError."""
    scorer = _build(kind, request)
    assert isinstance(scorer, Scorer) and isinstance(scorer.name, str) and scorer.name
    scores = scorer.score(PROMPTS, FIRST)
    assert len(scores) == 3 and all(type(s) is float and math.isfinite(s) for s in scores)
    alone = [scorer.score([p], [r])[0] for p, r in zip(PROMPTS, FIRST, strict=True)]
    assert scores == pytest.approx(alone, abs=1e-5)
    ab, ba = scorer.compare(PROMPTS, FIRST, SECOND), scorer.compare(PROMPTS, SECOND, FIRST)
    assert all(0.0 <= p <= 1.0 for p in ab + ba)
    assert [x + y for x, y in zip(ab, ba, strict=True)] == pytest.approx([1.0] * 3, abs=1e-9)
    assert scorer.compare(PROMPTS, FIRST, FIRST) == pytest.approx([0.5] * 3, abs=1e-9)
    with pytest.raises(UserError):
        scorer.score(PROMPTS, FIRST[:2])
    with pytest.raises(UserError):
        scorer.compare(PROMPTS, FIRST, SECOND[:1])


def test_scorers_that_know_sentiment_agree_on_the_clear_pairs():
    """The gold reward prefers the positive continuation in pairs 1 and 2 (in opposite slots) and
    cannot tell pair 3's identical continuations apart."""
    assert load_scorer("task:sentiment").compare(PROMPTS, FIRST, SECOND) == pytest.approx(
        [1 / (1 + math.exp(-2)), 1 / (1 + math.exp(2)), 0.5])


@pytest.mark.parametrize("spec,message", [
    ("nothing:x", "unknown kind 'nothing'"),
    ("length:coef=x", "coef must be a number"),
    ("length:size=3", "unknown option 'size'"),
    ("implicit:beta=1", "give policy=DIR,reference=DIR"),
    ("implicit:policy=/no/p,reference=/no/r,beta=-1", "beta must be a finite number > 0 .the β the policy was "
                                                       "trained with., got -1$"),
    ("implicit:policy=/no/p,reference=/no/r,beta=0", "beta must be a finite number > 0"),
    ("implicit:policy=/no/p,reference=/no/r,beta=nan", "beta must be a finite number > 0"),
    ("openai:http://127.0.0.1:9/v1", "give the endpoint's model"),
    ("judge:/no/such/dir,swap=maybe", "swap must be true or false"),
    ("task:nosuchtask", "unknown task 'nosuchtask'"),
    ("rm:/no/such/dir", "is not a reward model directory"),
])
def test_bad_scorer_specs_are_one_line_errors(spec, message):
    with pytest.raises(UserError, match=message):
        load_scorer(spec)

"""Transfer Q*: the implicit reward's arithmetic, the choice and its sampling by hand on a
three-token vocabulary (EOS, a, b) with models whose logits are log-probabilities.

The aligned model ρ and its reference π_ref, by the last token (the prompt is token 7):
    ρ:     after the prompt (1/4, 1/4, 1/2), after a (1/2, 1/4, 1/4), after b (1/2, 1/4, 1/4)
    π_ref: after the prompt (1/4, 1/2, 1/4), after a (1/4, 1/2, 1/4), after b (1/2, 1/4, 1/4)
ρ ends greedily after a or b (1/2 is its largest). The base model's logits: after the prompt
(EOS -9, a 1, b 0), so its top-2 are a and b; after a (5, 1, 0), after b (5, 0, 1).

With a lookahead L >= 1 the rollouts at step 1 are a⊕EOS and b⊕EOS:
    Q̂(a) = β·(log(1/4·1/2) − log(1/2·1/4)) = 0,   Q̂(b) = β·(log(1/2·1/2) − log(1/4·1/2)) = β·log 2,
so b wins iff α·β·log 2 > 1 (the logit gap), i.e. α·β > 1.4427. With L = 0 the segment is the
candidate alone: Q̂(a) = β·log(1/4 / 1/2) = −β log 2, Q̂(b) = β·log(1/2 / 1/4) = β log 2.
"""

from __future__ import annotations

import math

import pytest

from alignlab.decoding.search import SearchReport, rollout
from alignlab.decoding.transfer_q import TransferQ, check_vocabulary
from alignlab.errors import UserError
from alignlab.generation.base import SamplingParams
from tests.decoding.fakes import EOS, A, B, Letters, Markov, logp

ALIGNED = Markov({A: logp(1 / 2, 1 / 4, 1 / 4), B: logp(1 / 2, 1 / 4, 1 / 4), EOS: logp(0.1, 0.1, 0.8)},
                 start=logp(1 / 4, 1 / 4, 1 / 2))
REFERENCE = Markov({A: logp(1 / 4, 1 / 2, 1 / 4), B: logp(1 / 2, 1 / 4, 1 / 4)}, start=logp(1 / 4, 1 / 2, 1 / 4))
BASE = Markov({A: [5.0, 1.0, 0.0], B: [5.0, 0.0, 1.0]}, start=[-9.0, 1.0, 0.0])


def transfer_q(**kwargs) -> TransferQ:
    return TransferQ(**{"model": BASE, "tokenizer": Letters(), "aligned": ALIGNED, "reference": REFERENCE, "k": 2,
                        **kwargs})


def first_tokens(tq: TransferQ, params: SamplingParams, n: int = 1) -> list[int]:
    (row,) = tq.generate_ids([(7,)], n, params)
    return [s.token_ids[0] for s in row]


def test_a_rollout_stops_at_eos_and_sums_its_log_probs():
    """ρ rolls a, b and EOS out for up to 3 tokens: a⊕EOS (1/4·1/2), b⊕EOS (1/2·1/2), EOS alone
    (1/4); one pass over the three 2-token sequences, after which every row has stopped (ρ would
    go on with b after an EOS)."""
    report = SearchReport()
    rolled = rollout(ALIGNED, [7], [A, B, EOS], 3, {EOS}, report)
    assert rolled.tokens == [[A, EOS], [B, EOS], [EOS]]
    assert rolled.logps == pytest.approx([math.log(1 / 8), math.log(1 / 4), math.log(1 / 4)], abs=1e-6)
    assert (report.forward_tokens, report.rollout_tokens) == (6, 6)


@pytest.mark.parametrize("beta,alpha,want", [(1.5, 1.0, B), (1.4, 1.0, A), (0.5, 3.0, B), (0.5, 2.8, A)])
def test_the_implicit_reward_weighs_in_as_alpha_times_beta(beta, alpha, want):
    """b wins iff α·β·log 2 > 1: 1.5·0.693 = 1.040 and 0.5·3·0.693 = 1.040 take b, 1.4·0.693 = 0.970 and
    0.5·2.8·0.693 = 0.970 keep a. (Without EOS's own ratio, 1/2 : 1/4 after a, Q̂(a) would be
    −β log 2 and b would win at β = 1.4 too.)"""
    tq = transfer_q(beta=beta, weight=alpha, lookahead=20)
    assert first_tokens(tq, SamplingParams(temperature=0, max_new_tokens=4)) == [want]


def test_the_answer_and_its_compute_by_hand():
    """β 1.5, α 1, L 20 (cut to the budget: 3 then 2): step 1 takes b (above). Step 2 after b: the
    base's top-2 are EOS (5) and b (1); Q̂(EOS) = β log((1/2)/(1/2)) = 0 and Q̂(b) = β log((1/4·1/2) /
    (1/4·1/2)) = 0: EOS. The answer is "b", finished, with the base model's log-probs.
    Forward tokens: the base's passes (1 + 2); ρ's rollouts, one pass each (2 rows of 2, then of 3;
    every row has stopped after its first rolled token): 4 + 6; π_ref's pass over prefix ⊕ segment
    (1 + 2 twice, then 2 + 1 and 2 + 2): 6 + 7. In all 26, of which 10 rollouts."""
    tq = transfer_q(beta=1.5, weight=1.0, lookahead=20)
    (answer,), = tq.generate_ids([(7,)], 1, SamplingParams(temperature=0, max_new_tokens=4))
    assert answer.text == "b" and answer.token_ids == (B, EOS) and answer.finished
    assert answer.logprobs == pytest.approx((-math.log(math.exp(-9) + math.e + 1),
                                             5 - math.log(math.exp(5) + 1 + math.e)), abs=1e-6)
    assert (tq.last_report.forward_tokens, tq.last_report.rollout_tokens, tq.last_report.reward_calls) == (26, 10, 0)


@pytest.mark.parametrize("lookahead,want", [(0, B), (1, A)])
def test_lookahead_changes_the_choice(lookahead, want):
    """α = β = 1. L = 0: a scores 1 − log 2 = 0.307, b 0 + log 2 = 0.693: b. L = 1 sees that ρ ends
    either answer, which ρ likes after a twice as much as π_ref does: a 1 + 0, b 0 + 0.693: a."""
    tq = transfer_q(beta=1.0, weight=1.0, lookahead=lookahead)
    assert first_tokens(tq, SamplingParams(temperature=0, max_new_tokens=4)) == [want]


@pytest.mark.parametrize("temperature,p_b", [(0.5, 4 / (math.e ** 2 + 4)), (2.0, 2 ** 0.5 / (math.e ** 0.5 + 2 ** 0.5))])
def test_sampling_follows_the_softmax_of_the_scores(temperature, p_b):
    """α = β = 1, L = 1: scores a 1, b log 2, so b is drawn with probability
    2^(1/T) / (e^(1/T) + 2^(1/T)): 0.351 at T = 0.5, 0.462 at T = 2. 2,000 answers (one fixed seed);
    the tolerance 0.035 is 3.2 standard errors at most and a third of the gap between the two."""
    tq = transfer_q(beta=1.0, weight=1.0, lookahead=1)
    firsts = first_tokens(tq, SamplingParams(temperature=temperature, max_new_tokens=2, seed=11), n=2000)
    assert sum(t == B for t in firsts) / len(firsts) == pytest.approx(p_b, abs=0.035)


def test_answers_do_not_depend_on_their_batch():
    tq = transfer_q(beta=1.0, weight=1.0, lookahead=2)
    params = SamplingParams(temperature=1.0, max_new_tokens=3, seed=5)
    contexts = [(7,), (8,), (9,)]
    together = tq.generate_ids(contexts, 4, params)
    alone = [tq.generate_ids([c], 4, params, start=i)[0] for i, c in enumerate(contexts)]
    assert [[s.token_ids for s in row] for row in together] == [[s.token_ids for s in row] for row in alone]
    assert len({s.token_ids for row in together for s in row}) > 1


def test_one_vocabulary():
    other = Letters(("<eos>", "a", "c"))
    with pytest.raises(UserError, match=r"^transfer-q needs one vocabulary: the base model and the aligned model have "
                                        r"different vocabularies \(3 and 3 tokens, 2 entries not shared\)$"):
        transfer_q(aligned_tokenizer=other)
    with pytest.raises(UserError, match="the base model and the reference model have different"):
        transfer_q(aligned_tokenizer=Letters(), reference_tokenizer=other)
    check_vocabulary([("base", Letters()), ("aligned", Letters()), ("reference", Letters())])


@pytest.mark.parametrize("kwargs,message", [
    ({"aligned": None}, "needs the aligned model"), ({"reference": None}, "needs the aligned model's reference"),
    ({"beta": 0.0}, "beta must be"), ({"beta": float("inf")}, "beta must be"), ({"k": 0}, "k must be"),
    ({"lookahead": -1}, "lookahead must be"), ({"weight": float("nan")}, "weight must be")])
def test_bad_settings(kwargs, message):
    with pytest.raises(UserError, match=message):
        transfer_q(**kwargs)


def test_a_cached_rollout_of_a_real_model_is_its_greedy_answer_with_its_log_probs():
    """On the shipped arithmetic SFT model (a Llama): the rollout of each of 3 candidates after a
    prompt, token by token with the key-value cache, is the native sampler's greedy continuation
    of prompt ⊕ candidate, and its summed log-prob is a teacher-forced pass's (completion_logps) to
    float32 rounding."""
    from alignlab.generation import make_generator
    from alignlab.logprobs import completion_logps
    from alignlab.models import load_model, load_tokenizer
    from alignlab.testbed.shipped import task_model

    path = str(task_model("arithmetic", "sft"))
    model, tok = load_model(path), load_tokenizer(path)
    prompt = list(tok("37+45=", add_special_tokens=True)["input_ids"])
    cands = tok("819", add_special_tokens=False)["input_ids"]
    report = SearchReport()
    rolled = rollout(model, prompt, cands, 5, {tok.eos_token_id}, report)
    greedy = make_generator(model, tok, "native").generate_ids([tuple(prompt + [c]) for c in cands], 1,
                                                                SamplingParams(temperature=0, max_new_tokens=5))
    assert rolled.tokens == [[c, *g[0].token_ids] for c, g in zip(cands, greedy, strict=True)]
    forced = completion_logps(model, [tuple(prompt)] * 3, [tuple(t) for t in rolled.tokens], tok.pad_token_id)
    assert rolled.logps == pytest.approx(forced.tolist(), abs=1e-4)

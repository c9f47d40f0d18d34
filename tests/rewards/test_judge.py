"""LLM judges: verdict parsing, position-bias metrics on scripted judges with a known bias, the
pairwise and pointwise scorers, the Hugging Face backend on a tiny model, and the OpenAI-compatible
backend against a local stub server."""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from alignlab.errors import UserError
from alignlab.models import load_model, load_tokenizer
from alignlab.rewards import load_scorer
from alignlab.rewards.base import Scorer
from alignlab.rewards.http_judge import OpenAIBackend
from alignlab.rewards.judge import CallableBackend, HFBackend, PairwiseJudge, PointwiseJudge, swap_consistency
from alignlab.rewards.verdicts import PAIRWISE_TEMPLATE, check_template, parse_pairwise, parse_rating, render

# ---------------------------------------------------------------------------------------------
# Parsers
# ---------------------------------------------------------------------------------------------

PAIRWISE_OUTPUTS = [
    # MT-Bench brackets, with markdown, whitespace and case noise
    ("[[A]]", "A"),
    ("[[B]]", "B"),
    ("[[C]]", "tie"),
    ("[[tie]]", "tie"),
    ("  **[[ b ]]**  ", "B"),
    ("`[[A]]`", "A"),
    ("[[B>A]]", "B"),
    ("[[A>>B]]", "A"),
    ("[[A=B]]", "tie"),
    # an explanation that names both letters before the bracketed verdict
    ("Assistant A is concise; Assistant B is detailed but Assistant A is better at brevity.\n\n[[B]]", "B"),
    # the judge echoes the format line, then gives its verdict: the last bracket counts
    ('Format: "[[A]]" if A is better, "[[B]]" if B is better. My verdict: [[B]]', "B"),
    # labelled statements
    ("Answer: B", "B"),
    ("answer:b", "B"),
    ("Final verdict: tie", "tie"),
    ("Verdict: a tie", "tie"),
    ("The answer is (a).", "A"),
    ("Output (b)", "B"),
    ("**Verdict:** Assistant A", "A"),
    ("Response A rambles. Response B is better formatted. Final answer: A", "A"),
    ("The verdict is that response 2 is better.", "B"),
    ("Verdict: A (more detail)", "A"),
    ("The result is a tie between them.", "tie"),
    ("Assistant A's answer is a bit verbose. Assistant B is better.", "B"),  # "answer is a" is no verdict
    # bare verdicts
    ("(a)", "A"),
    ("A", "A"),
    ("b", "B"),
    ("c", "tie"),
    ("first", "A"),
    ("Second", "B"),
    ("Response 2", "B"),
    ("Tie.", "tie"),
    ("A. It answers the question, while B is better written but wrong.", "A"),
    ("(b) - it is correct.", "B"),
    ("The first one weighs the options; the second lists facts.\n\nB", "B"),
    # comparisons
    ("Response 2 is better", "B"),
    ("After careful thought, the first response is clearly better.", "A"),
    ("Response A is better at brevity, but overall Response B is better.", "B"),
    ("B is better: a concise answer wins", "B"),
    ("B is worse than A.", "A"),
    ("The better response is Response 2.", "B"),
    ("I prefer the second response.", "B"),
    ("I choose A.", "A"),
    ("Assistant B wins.", "B"),
    ("In favour of b.", "B"),
    ("Overall A > B.", "A"),
    ("First, let me compare them. Assistant B is more helpful.", "B"),
    ("Both responses are equally good.", "tie"),
    ("Neither response is better than the other.", "tie"),
    ("It's a tie.", "tie"),
    # nothing readable
    ("", None),
    ("I cannot decide.", None),
    ("A great answer needs more detail than either gives.", None),
    ("I prefer a concise answer.", None),
    ("The correct answer is 2. Assistant A says 3, Assistant B says 4.", None),
    ("Assistant A:\n- accurate\nAssistant B:\n- vague\n", None),
    ("Response A is not better than response B, nor worse.", None),
]


@pytest.mark.parametrize(("text", "expected"), PAIRWISE_OUTPUTS)
def test_parse_pairwise(text, expected):
    assert parse_pairwise(text) == expected


RATING_OUTPUTS = [
    ("Rating: [[7]]", 7.0),
    ("The answer is fine.\nRating: [[ 8.5 ]]", 8.5),
    ("[[8.5]]", 8.5),
    ("[[7/10]]", 7.0),
    ("Rating: 7", 7.0),
    ("**Rating**: 3.", 3.0),
    ("Score = 6/10, good but terse", 6.0),
    ("7/10", 7.0),
    ("I'd say 8 out of 10.", 8.0),
    ("I would give it an 8.", 8.0),
    ("9", 9.0),
    ("Step 2 lists 3 reasons and 4 caveats. Rating: [[6]]", 6.0),  # other numbers before the rating
    ("Rating: [[2]] ... on reflection, Rating: [[4]]", 4.0),  # the last statement counts
    ("Rating: [[11]]", None),  # out of range
    ("Rating: 0", None),
    ("Rating: -3", None),
    ("4/5", None),  # another scale
    ("Rating: 4/5", None),
    ("no idea", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), RATING_OUTPUTS)
def test_parse_rating(text, expected):
    assert parse_rating(text, 1, 10) == expected


def test_parse_rating_respects_the_scale():
    assert parse_rating("Rating: [[0]]", 0, 5) == 0.0
    assert parse_rating("Rating: [[6]]", 0, 5) is None
    assert parse_rating("4/5", 0, 5) == 4.0
    assert parse_rating("7/10", 0, 5) is None


# ---------------------------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------------------------

TEMPLATE = "Q: {prompt}\n<A>{first}</A>\n<B>{second}</B>\nWhich is better?"


def test_template_placeholders_are_checked():
    with pytest.raises(UserError, match=r"missing \{second\}"):
        PairwiseJudge(CallableBackend(lambda p: "A"), template="Q: {prompt} A: {first}")
    with pytest.raises(UserError, match=r"missing \{prompt\}, \{response\}"):
        PointwiseJudge(CallableBackend(lambda p: "7"), template="rate this")
    with pytest.raises(UserError, match=r"\{first\}"):
        check_template("{prompt} {response} {first}", "pointwise")
    with pytest.raises(UserError, match="must be a string"):
        check_template(None, "pairwise")


def test_render_is_one_pass_and_keeps_other_braces():
    # a response that contains a placeholder is not filled in again; JSON braces stay as written
    out = render('{"q": "{prompt}"} <A>{first}</A> <B>{second}</B>', prompt="p", first="{second}", second="y")
    assert out == '{"q": "p"} <A>{second}</A> <B>y</B>'


# ---------------------------------------------------------------------------------------------
# Scripted judges with a known position bias
# ---------------------------------------------------------------------------------------------

PROMPTS = [f"q{i}" for i in range(8)]
FIRST = ["a long detailed answer", "another long answer", "short",
         "longer text here", "longer one", "x", "y", "z"]
SECOND = ["short", "brief", "a much longer answer",
          "tiny", "tiny", "a longer second", "much longer second", "longest second answer"]
KNOWN = {"q0", "q1", "q2"}  # pairs where the scripted judge recognises the better (longer) answer


def read_prompt(text: str) -> tuple[str, str, str]:
    m = re.fullmatch(r"Q: (.*)\n<A>(.*)</A>\n<B>(.*)</B>\nWhich is better\?", text, re.S)
    assert m, text
    return m.group(1), m.group(2), m.group(3)


def scripted(unknown: str, known: set[str] = KNOWN):
    """A judge that picks the longer answer on ``known`` prompts and says ``unknown`` otherwise."""
    calls: list[str] = []

    def fn(text: str) -> str:
        calls.append(text)
        prompt, a, b = read_prompt(text)
        if prompt in known:
            return "Slot A is longer, so [[A]]" if len(a) > len(b) else "Verdict: B"
        return unknown

    fn.calls = calls
    return fn


def test_first_slot_bias_is_measured_exactly():
    """Pairs q0, q1 (first longer) and q2 (second longer) are known, q3..q7 are not, and on them the
    judge always answers A (pure first-position bias).

    q0, q1: original order A; swapped, the longer answer sits in slot B, raw B, mapped back A.
            Consistent, P(first better) = (1 + 1)/2 = 1.
    q2:     original B; swapped raw A, mapped back B. Consistent, P = 0.
    q3..q7: original A (v1 = A); swapped raw A, mapped back B (v2 = B). Inconsistent, and slot 1 won
            both times, so each favours the first slot. P = (1 + 0)/2 = 0.5.
    consistency_rate = 3/8 = 0.375; inconsistent = 5; prefers_first_slot = 5/5 = 1.0,
    prefers_second_slot = 0/5 = 0.0; win_rate_first = (1 + 1 + 0 + 5 * 0.5)/8 = 4.5/8 = 0.5625.
    """
    fn = scripted("A")
    judge = PairwiseJudge(CallableBackend(fn), template=TEMPLATE)
    report = swap_consistency(judge, PROMPTS, FIRST, SECOND)
    assert len(fn.calls) == 16
    assert report.n == 8 and report.swapped
    assert report.consistency_rate == 0.375
    assert report.inconsistent == 5
    assert report.prefers_first_slot == 1.0
    assert report.prefers_second_slot == 0.0
    assert report.unparsed == 0
    assert report.win_rate_first == 0.5625
    assert [p.p_first for p in report.pairs] == [1.0, 1.0, 0.0] + [0.5] * 5
    assert [(p.verdict, p.swapped_verdict) for p in report.pairs] == [("A", "A"), ("A", "A"), ("B", "B")] + [("A", "B")] * 5
    assert report.as_dict() == {
        "n": 8, "swapped": True, "consistency_rate": 0.375, "inconsistent": 5, "prefers_first_slot": 1.0,
        "prefers_second_slot": 0.0, "unparsed": 0, "win_rate_first": 0.5625,
    }
    json.dumps(report.as_dict(pairs=True))  # JSON-ready, with the per-pair details


def test_second_slot_bias_is_measured_exactly():
    """As above, but the judge answers B on q3..q7: v1 = B, swapped raw B mapped back A, so slot 2 won
    both times. consistency_rate = 3/8, prefers_second_slot = 1.0, prefers_first_slot = 0.0, and
    win_rate_first = (1 + 1 + 0 + 5 * (0 + 1)/2)/8 = 0.5625 again (the bias averages out)."""
    report = swap_consistency(PairwiseJudge(CallableBackend(scripted("B")), template=TEMPLATE),
                              PROMPTS, FIRST, SECOND)
    assert report.consistency_rate == 0.375
    assert report.inconsistent == 5
    assert report.prefers_first_slot == 0.0
    assert report.prefers_second_slot == 1.0
    assert report.win_rate_first == 0.5625


def test_consistent_judge_has_no_inconsistent_pairs():
    """A judge that knows every pair picks the longer answer in both orders: consistency 1.0 and no
    inconsistent pair, so both slot shares are 0.0 (the documented value for "none to share").
    The longer answer is first in q0, q1, q3, q4: win_rate_first = 4/8 = 0.5."""
    report = swap_consistency(PairwiseJudge(CallableBackend(scripted("A", known=set(PROMPTS))), template=TEMPLATE),
                              PROMPTS, FIRST, SECOND)
    assert report.consistency_rate == 1.0
    assert report.inconsistent == 0
    assert report.prefers_first_slot == 0.0 and report.prefers_second_slot == 0.0
    assert [p.p_first for p in report.pairs] == [1, 1, 0, 1, 1, 0, 0, 0]
    assert report.win_rate_first == 0.5


def test_tie_in_one_order_is_inconsistent_but_favours_no_slot():
    """The judge says tie when the longer answer is in slot A and A otherwise. For a pair whose first
    answer is longer: original tie (v1 = tie), swapped raw A mapped back B (v2 = B): inconsistent,
    neither slot won twice; P = (0.5 + 0)/2 = 0.25. Second answer longer: original A, swapped tie:
    P = (1 + 0.5)/2 = 0.75. consistency 0, both slot shares 0 (they add up to at most 1)."""
    def fn(text: str) -> str:
        _, a, b = read_prompt(text)
        return "[[C]]" if len(a) > len(b) else "[[A]]"

    report = swap_consistency(PairwiseJudge(CallableBackend(fn), template=TEMPLATE), ["p", "p"],
                              ["longer", "s"], ["s", "longer"])
    assert [p.p_first for p in report.pairs] == [0.25, 0.75]
    assert [(p.verdict, p.swapped_verdict) for p in report.pairs] == [("tie", "B"), ("A", "tie")]
    assert report.consistency_rate == 0.0 and report.inconsistent == 2
    assert report.prefers_first_slot == 0.0 and report.prefers_second_slot == 0.0


def test_unparsed_verdicts_are_counted_and_left_out_of_consistency():
    """Slot A holding "x" makes the judge babble, anything else gets [[A]].
    Pair (x, y): original unparsed (0.5), swapped raw A mapped back B (0): P = 0.25, and the pair is
    left out of the consistency rate. Pair (u, v): original A, swapped A -> B: inconsistent, slot 1.
    consistency_rate = 0/1 = 0.0, unparsed = 1 output, prefers_first_slot = 1/1."""
    def fn(text: str) -> str:
        return "hmm, hard to say" if read_prompt(text)[1] == "x" else "[[A]]"

    report = swap_consistency(PairwiseJudge(CallableBackend(fn), template=TEMPLATE), ["p", "p"], ["x", "u"], ["y", "v"])
    assert [p.p_first for p in report.pairs] == [0.25, 0.5]
    assert report.pairs[0].verdict is None and report.pairs[0].consistent is None
    assert report.unparsed == 1
    assert report.consistency_rate == 0.0 and report.prefers_first_slot == 1.0

    nothing = swap_consistency(CallableBackend(lambda t: "no verdict here"), ["p"] * 3, ["a"] * 3, ["b"] * 3)
    assert nothing.unparsed == 6
    assert math.isnan(nothing.consistency_rate) and nothing.as_dict()["consistency_rate"] is None
    assert nothing.win_rate_first == 0.5


# ---------------------------------------------------------------------------------------------
# PairwiseJudge as a Scorer
# ---------------------------------------------------------------------------------------------


def longer_wins(text: str) -> str:
    _, a, b = read_prompt(text)
    return "[[A]]" if len(a) > len(b) else "[[B]]" if len(b) > len(a) else "[[C]]"


def test_pairwise_compare_probabilities_with_and_without_swap():
    judge = PairwiseJudge(CallableBackend(longer_wins), template=TEMPLATE)
    assert isinstance(judge, Scorer)
    assert judge.compare(["p"] * 3, ["long answer", "s", "same"], ["s", "long answer", "same"]) == [1.0, 0.0, 0.5]

    # First-slot-biased judge without the swap: its bias goes straight into the probabilities.
    fn = scripted("A")
    biased = PairwiseJudge(CallableBackend(fn), template=TEMPLATE, swap=False)
    assert biased.compare(PROMPTS, FIRST, SECOND) == [1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert len(fn.calls) == 8
    assert not biased.last_report.swapped and math.isnan(biased.last_report.consistency_rate)
    # With the swap the same judge gives 0.5 on the pairs it does not know.
    biased.swap = True
    assert biased.compare(PROMPTS, FIRST, SECOND) == [1.0, 1.0, 0.0] + [0.5] * 5


def test_pairwise_score_is_the_win_probability_against_the_anchor():
    fn = scripted("A", known={"p"})
    judge = PairwiseJudge(CallableBackend(fn), template=TEMPLATE)
    assert judge.score(["p", "p"], ["some answer", ""]) == [1.0, 0.5]  # "" against the empty anchor: a tie
    assert read_prompt(fn.calls[0])[1:] == ("some answer", "")
    assert read_prompt(fn.calls[2])[1:] == ("", "some answer")  # the swapped order
    anchored = PairwiseJudge(CallableBackend(longer_wins), template=TEMPLATE, anchor="medium answer")
    assert anchored.score(["p"] * 3, ["a rather longer answer", "short", "medium answer"]) == [1.0, 0.0, 0.5]
    assert anchored.score([], []) == []


def test_pairwise_bad_inputs_are_user_errors():
    judge = PairwiseJudge(CallableBackend(longer_wins), template=TEMPLATE)
    with pytest.raises(UserError, match="3, 2, 2 items"):
        judge.compare(["p"] * 3, ["a", "b"], ["c", "d"])
    with pytest.raises(UserError, match="first item 0 is a tuple"):
        judge.compare(["p"], [("a",)], ["c"])
    with pytest.raises(UserError, match="returned 1 judge outputs for 4 prompts"):
        PairwiseJudge(CallableBackend(lambda ps: ["A"], batched=True)).compare(["p"] * 2, ["a"] * 2, ["b"] * 2)
    with pytest.raises(UserError, match="judge output 0 is a int"):
        PairwiseJudge(CallableBackend(lambda p: 3)).compare(["p"], ["a"], ["b"])
    with pytest.raises(UserError, match="complete"):
        PairwiseJudge(object())


# ---------------------------------------------------------------------------------------------
# PointwiseJudge
# ---------------------------------------------------------------------------------------------

POINT_TEMPLATE = "Rate from {low} to {high}.\nQ: {prompt}\nR: {response}"


def rate_by_length(text: str) -> str:
    """Rating = the response's length, capped at 10; "?" makes it refuse."""
    response = text.split("\nR: ", 1)[1]
    return "I won't rate this." if response == "?" else f"Fine. Rating: [[{min(len(response), 10)}]]"


def test_pointwise_scores_and_fallback():
    judge = PointwiseJudge(CallableBackend(rate_by_length), template=POINT_TEMPLATE)
    assert isinstance(judge, Scorer)
    assert judge.score(["p"] * 4, ["abc", "abcdefghijklmno", "?", "a"]) == [3.0, 10.0, 5.5, 1.0]
    assert judge.last_report.unparsed == 1 and judge.last_report.ratings[2] is None
    zero = PointwiseJudge(CallableBackend(rate_by_length), template=POINT_TEMPLATE, fallback=0.0)
    assert zero.score(["p"], ["?"]) == [0.0]


def test_pointwise_template_shows_the_scale():
    seen: list[str] = []
    judge = PointwiseJudge(CallableBackend(lambda t: seen.append(t) or "[[4]]"), template=POINT_TEMPLATE, low=0, high=5)
    assert judge.score(["p"], ["r"]) == [4.0]
    assert seen == ["Rate from 0 to 5.\nQ: p\nR: r"]
    default = PointwiseJudge(CallableBackend(lambda t: seen.append(t) or "[[4]]"))
    default.score(["p"], ["r"])
    assert "scale of 1 to 10" in seen[-1] and "Rating: [[N]]" in seen[-1]
    with pytest.raises(UserError, match="low must be below high"):
        PointwiseJudge(CallableBackend(rate_by_length), low=5, high=5)


def test_pointwise_compare():
    """Ratings 3 vs 1 -> 1; 1 vs 3 -> 0; 2 vs 2 -> 0.5; unparsed vs 3 -> 0.5 (no evidence)."""
    judge = PointwiseJudge(CallableBackend(rate_by_length), template=POINT_TEMPLATE)
    assert judge.compare(["p"] * 4, ["abc", "a", "ab", "?"], ["a", "abc", "cd", "abc"]) == [1.0, 0.0, 0.5, 0.5]
    assert judge.last_report.unparsed == 1


# ---------------------------------------------------------------------------------------------
# HFBackend on a tiny model
# ---------------------------------------------------------------------------------------------


def test_hf_backend_runs_a_pairwise_judge_end_to_end(tiny_model_dir):
    """One test (one model load): the prompt is a user message in the chat template (plain text
    without one), the backend returns strings, and an untrained model's verdicts count as unparsed."""
    backend = HFBackend.from_pretrained(str(tiny_model_dir), max_new_tokens=4, batch_size=4)
    tok = backend.generator.tok
    assert tok.decode(backend.prompt_ids("hi")) == "<|user|>hi<|end|><|assistant|>"
    plain_tok = load_tokenizer(str(tiny_model_dir))
    plain_tok.chat_template = None
    plain = plain_tok.decode(HFBackend(load_model(str(tiny_model_dir)), plain_tok).prompt_ids("hi"))
    assert plain.endswith("hi") and "<|user|>" not in plain

    # a short template keeps this fast on CPU; the default template is checked with the stub server
    judge = PairwiseJudge(backend, template=TEMPLATE)
    probs = judge.compare(["Say hi."] * 2, ["hi", "hello there"], ["hey", "yo"])
    # an untrained model writes no readable verdict: four unparsed outputs, each pair 0.5
    assert probs == [0.5, 0.5]
    assert judge.last_report.unparsed == 4
    raw = [o for p in judge.last_report.pairs for o in (p.raw, p.raw_swapped)]
    assert len(raw) == 4 and all(isinstance(o, str) for o in raw)  # what backend.complete returned


def test_a_judge_prompt_with_no_room_to_answer_is_a_prompt_problem(tiny_model_dir):
    """The tiny judge's context is 2048 tokens; its chat template adds <|user|>, <|end|> and
    <|assistant|> (3 tokens) and its tokenizer writes a digit or sign as one token. Pointwise
    template '7' * k + '{prompt}{response}' on the prompt '1+1=' (4 tokens) with an empty answer
    is k + 7 tokens; with max_new_tokens 2 it fits while k + 9 <= 2048, so k = 2039 is the
    longest. Pairwise '7' * k + '{prompt}{first}{second}': the same count. A judge without a
    known context (a function) has nothing to check."""
    backend = HFBackend.from_pretrained(str(tiny_model_dir), max_new_tokens=2)
    for k, fits in ((2039, True), (2040, False)):
        for judge in (PointwiseJudge(backend, template="7" * k + "{prompt}{response}"),
                      PairwiseJudge(backend, template="7" * k + "{prompt}{first}{second}")):
            problem = judge.prompt_problem("1+1=")
            assert problem is None if fits else problem == (
                "the judge's prompt for it is 2047 tokens before any answer is put in, and with the judge's "
                "max_new_tokens 2 exceeds its context of 2048 tokens (shorten the template)")
    assert PointwiseJudge(CallableBackend(lambda p: "7"), template="7" * 5000 + "{prompt}{response}"
                          ).prompt_problem("1+1=") is None
    # a tokenizer's model_max_length below the positions is the context, as `alignlab sample` reads it
    from alignlab.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(str(tiny_model_dir))
    tokenizer.model_max_length = 100
    short = HFBackend(load_model(str(tiny_model_dir)), tokenizer, max_new_tokens=2)
    for k, fits in ((91, True), (92, False)):
        problem = PointwiseJudge(short, template="7" * k + "{prompt}{response}").prompt_problem("1+1=")
        assert problem is None if fits else problem.endswith("exceeds its context of 100 tokens (shorten the template)")


# ---------------------------------------------------------------------------------------------
# OpenAIBackend against a local stub server
# ---------------------------------------------------------------------------------------------


class StubState:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.queue: list[tuple[int, bytes]] = []  # scripted (status, body) answers, then the judge
        self.delay = 0.0
        self.delays: list[float] = []  # the delays of the first requests, then ``delay``
        self.judge = lambda content: "[[C]]"


class StubHandler(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (the name http.server calls)
        state: StubState = self.server.state
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with state.lock:
            state.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            scripted_answer = state.queue.pop(0) if state.queue else None
            delay = state.delays.pop(0) if state.delays else state.delay
        if delay:
            time.sleep(delay)
        if scripted_answer is not None and scripted_answer[0] == 0:  # drop the connection, answering nothing
            self.close_connection = True
            return
        if scripted_answer is not None and scripted_answer[0] == -1:  # a reply cut short: 10 of 100 bytes
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b'{"choices"')
            self.close_connection = True
            return
        if self.path != "/v1/chat/completions":
            status, payload = 404, b"no such route"
        elif scripted_answer is not None:
            status, payload = scripted_answer
        else:
            content = state.judge(body["messages"][0]["content"])
            status = 200
            payload = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout test)

    def log_message(self, *args):
        pass


@pytest.fixture
def stub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StubHandler)
    server.daemon_threads = True
    server.state = StubState()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    server.state.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield server.state
    server.shutdown()
    server.server_close()


def default_template_longer_wins(content: str) -> str:
    """Reads the two answers out of the default template; the longer wins, after an explanation that
    names both assistants."""
    a = re.search(r"\[The Start of Assistant A's Answer\]\n(.*)\n\[The End of Assistant A's Answer\]", content, re.S)
    b = re.search(r"\[The Start of Assistant B's Answer\]\n(.*)\n\[The End of Assistant B's Answer\]", content, re.S)
    assert a and b, content
    verdict = "A" if len(a.group(1)) > len(b.group(1)) else "B"
    return f"Assistant A and Assistant B both try. Assistant {verdict} gives more detail.\n\n[[{verdict}]]"


def test_openai_backend_pairwise_judge_with_swap(stub, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    stub.judge = default_template_longer_wins
    backend = OpenAIBackend(stub.base_url + "/", "judge-x", api_key="sk-test", max_tokens=64, workers=3)
    judge = PairwiseJudge(backend)
    probs = judge.compare(["p1", "p2", "p3"], ["a long answer", "s", "mid"], ["s", "a long answer", "midi"])
    assert probs == [1.0, 0.0, 0.0]
    assert judge.last_report.consistency_rate == 1.0
    assert len(stub.requests) == 6
    for request in stub.requests:
        assert request["path"] == "/v1/chat/completions"
        assert request["auth"] == "Bearer sk-test"
        body = request["body"]
        assert body["model"] == "judge-x" and body["temperature"] == 0.0 and body["max_tokens"] == 64
        assert len(body["messages"]) == 1 and body["messages"][0]["role"] == "user"
    sent = sorted(r["body"]["messages"][0]["content"] for r in stub.requests)
    expected = sorted(render(PAIRWISE_TEMPLATE, prompt=p, first=x, second=y)
                      for p, a, b in zip(["p1", "p2", "p3"], ["a long answer", "s", "mid"], ["s", "a long answer", "midi"],
                                         strict=True)
                      for x, y in ((a, b), (b, a)))
    assert sent == expected
    assert "sk-test" not in repr(backend)


def test_openai_backend_api_key_from_the_environment(stub, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "env-key")
    assert OpenAIBackend(stub.base_url, "m").complete(["hi"]) == ["[[C]]"]
    monkeypatch.delenv("OPENAI_API_KEY")
    OpenAIBackend(stub.base_url, "m").complete(["hi"])
    assert [r["auth"] for r in stub.requests] == ["Bearer env-key", None]


def test_openai_backend_retries_429_and_5xx(stub):
    stub.queue = [(500, b"overloaded"), (429, b"slow down")]
    assert OpenAIBackend(stub.base_url, "m", retries=2, backoff=0.0).complete(["hi"]) == ["[[C]]"]
    assert len(stub.requests) == 3
    stub.queue = [(503, b"down\nmore detail")] * 2
    with pytest.raises(UserError) as e:
        OpenAIBackend(stub.base_url, "m", retries=1, backoff=0.0).complete(["hi"])
    assert "failed after 2 tries: HTTP 503" in str(e.value) and "down" in str(e.value)
    assert "\n" not in str(e.value) and "more detail" not in str(e.value)


def test_openai_backend_http_400_is_a_user_error_without_retry(stub):
    stub.queue = [(400, b'{"error": {"message": "model m not found"}}\nsecond line')]
    with pytest.raises(UserError) as e:
        OpenAIBackend(stub.base_url, "m", retries=3, backoff=0.0).complete(["hi"])
    message = str(e.value)
    assert stub.base_url + "/chat/completions" in message and "HTTP 400" in message
    assert "model m not found" in message and "second line" not in message
    assert len(stub.requests) == 1


def test_openai_backend_bad_answers_are_user_errors_after_the_retries(stub):
    backend = OpenAIBackend(stub.base_url, "m", retries=1, backoff=0.0)
    stub.queue = [(200, b"<html>oops</html>")] * 2
    with pytest.raises(UserError, match=r"chat/completions failed after 2 tries: the answer is not JSON: <html>oops"):
        backend.complete(["hi"])
    stub.queue = [(200, b'{"choices": []}')] * 2
    with pytest.raises(UserError, match=r"after 2 tries: the answer has no choices\[0\]\.message\.content"):
        backend.complete(["hi"])
    assert len(stub.requests) == 4
    stub.queue = [(200, b'{"choices": [{"message": {"content": null}}]}')]
    assert backend.complete(["hi"]) == [""]  # an empty verdict: the judges' accept decides (below)
    stub.delay = 1.0
    with pytest.raises(UserError) as e:
        OpenAIBackend(stub.base_url, "m", timeout=0.2, retries=2, backoff=0.0).complete(["hi"])
    assert str(e.value) == f"judge request to {stub.base_url}/chat/completions failed after 3 tries: timed out after 0.2 s"
    assert len(stub.requests) == 5 + 3


def test_openai_backend_asks_again_after_a_timeout_or_a_garbage_body(stub):
    """The first request times out (the server answers after 1 s, the client waits 0.3 s), the
    second gets an HTML page, the third the judge's answer: one output, three requests."""
    stub.delays = [1.0]
    stub.queue = [(200, b"ok"), (200, b"<html>busy</html>")]  # the first is never read (timed out)
    backend = OpenAIBackend(stub.base_url, "m", timeout=0.3, retries=2, backoff=0.0)
    assert backend.complete(["hi"]) == ["[[C]]"]
    assert len(stub.requests) == 3


def test_openai_backend_asks_again_for_an_answer_that_is_no_verdict(stub):
    """Given ``accept``, an answer it refuses is asked again; pairwise and pointwise judges give theirs."""
    answers = {"pair": ["I like both.", "", "[[A]]"], "rate": ["Rating: [[11]]", "Rating: [[7]]"]}

    def judge(content: str) -> str:
        return answers["rate" if content.startswith("Rate ") else "pair"].pop(0)

    stub.judge = judge
    backend = OpenAIBackend(stub.base_url, "m", retries=2, backoff=0.0)
    assert PairwiseJudge(backend, swap=False).score(["p"], ["r"]) == [1.0]
    assert len(stub.requests) == 3 and answers["pair"] == []
    point = PointwiseJudge(backend, template="Rate {response} to {prompt} from {low} to {high}.")
    assert point.score(["p"], ["r"]) == [7.0]  # 11 is out of the 1-10 scale: asked again
    assert len(stub.requests) == 5 and point.last_report.unparsed == 0


def test_openai_backend_waits_with_backoff_and_names_the_answer_that_is_no_verdict(stub, monkeypatch):
    """A judge that never gives a verdict is asked 1 + retries times, waiting backoff·2^k between
    tries (0.5 s, 1 s, 2 s: recorded, not slept), then fails with one line naming its answer."""
    import alignlab.rewards.http_judge as http_judge

    waits: list[float] = []
    monkeypatch.setattr(http_judge.time, "sleep", waits.append)
    stub.judge = lambda content: "Both answers are lovely.\nReally."
    judge = PairwiseJudge(OpenAIBackend(stub.base_url, "m", retries=3, backoff=0.5), swap=False)
    with pytest.raises(UserError) as e:
        judge.score(["p"], ["r"])
    assert str(e.value) == (f"judge request to {stub.base_url}/chat/completions failed after 4 tries: answered "
                            "'Both answers are lovely.', which is not a verdict")
    assert waits == [0.5, 1.0, 2.0] and len(stub.requests) == 4
    stub.judge = lambda content: ""
    with pytest.raises(UserError, match=r"failed after 1 try: answered nothing, which is not a verdict$"):
        PairwiseJudge(OpenAIBackend(stub.base_url, "m", retries=0), swap=False).score(["p"], ["r"])
    assert waits == [0.5, 1.0, 2.0]


def test_a_judge_that_fails_in_online_training_names_the_reward_the_prompt_and_the_sample(stub):
    """Through ``score_samples`` (what an online round calls): the judge answers garbage for one
    response only; the batch fails, each sample is asked alone, and the error names the one at fault."""
    from alignlab.training.rollout import RewardError, RewardTerm, score_samples

    stub.judge = lambda content: "no idea" if "second answer" in content else "[[A]]"
    judge = PairwiseJudge(OpenAIBackend(stub.base_url, "m", retries=1, backoff=0.0), swap=False, name="openai:j")
    where = ["prompt row 4, sample 1", "prompt row 4, sample 2", "prompt row 9, sample 1"]
    with pytest.raises(RewardError) as e:
        score_samples([RewardTerm("openai:j", judge)], ["p", "p", "q"], ["first answer", "second answer", "third"],
                      where, [2, 2, 1])
    assert str(e.value) == (f"reward 'openai:j': prompt row 4, sample 2: judge request to "
                            f"{stub.base_url}/chat/completions failed after 2 tries: answered 'no idea', which is "
                            "not a verdict")


def test_openai_backend_refused_connection_and_bad_settings():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    with pytest.raises(UserError, match=rf"{re.escape(url)}/chat/completions failed: cannot connect"):
        OpenAIBackend(url, "m", retries=3, backoff=5.0).complete(["hi"])  # not retried: no 5 s wait
    with pytest.raises(UserError, match="must start with http"):
        OpenAIBackend("localhost:8000/v1", "m")
    with pytest.raises(UserError, match="retries"):
        OpenAIBackend("http://localhost:8000/v1", "m", retries=-1)


def test_openai_spec_sets_the_timeout_retries_backoff_and_workers(stub):
    """``openai:URL,model=m,timeout=0.2,retries=1,backoff=0,workers=2``: a server that answers
    after 1 s is asked twice (1 + retries), each request given up after 0.2 s, and the judge then
    fails in one line naming 2 tries; well under the 1 s a request would take. The defaults would
    have waited 120 s for each of 4 tries. A bad value is named with its option."""
    stub.delay = 1.0
    judge = load_scorer(f"openai:{stub.base_url},model=m,timeout=0.2,retries=1,backoff=0,workers=2,swap=false")
    backend = judge.backend
    assert (backend.timeout, backend.retries, backend.backoff, backend.workers) == (0.2, 1, 0.0, 2)
    t0 = time.perf_counter()
    with pytest.raises(UserError, match=r"failed after 2 tries"):
        judge.compare(["p"], ["a"], ["b"])
    assert time.perf_counter() - t0 < 0.9
    assert len(stub.requests) == 2
    with pytest.raises(UserError, match=r"retries must be a whole number, got '1.5'"):
        load_scorer(f"openai:{stub.base_url},model=m,retries=1.5")
    with pytest.raises(UserError, match=r"judge timeout must be > 0 seconds, got 0.0"):
        load_scorer(f"openai:{stub.base_url},model=m,timeout=0")
    with pytest.raises(UserError, match=r"unknown option 'tiemout' \(options: backoff, model, retries, swap, "
                                        r"timeout, workers\)"):
        load_scorer(f"openai:{stub.base_url},model=m,tiemout=3")


def test_openai_backend_asks_again_after_a_dropped_connection_or_a_cut_reply(stub):
    """The server closes the first connection without answering and cuts the second reply short
    (10 of 100 bytes); both are asked again, as a timeout is, and the third request's verdict is
    the answer. With retries=1 the same two faults end in one line naming the last. (A refused
    connection is still not asked again: ``test_openai_backend_refused_connection_and_bad_settings``.)"""
    stub.queue = [(0, b""), (-1, b"")]
    backend = OpenAIBackend(stub.base_url, "m", retries=2, backoff=0.0)
    assert backend.complete(["hi"]) == ["[[C]]"]
    assert len(stub.requests) == 3
    stub.queue = [(0, b""), (-1, b"")]
    with pytest.raises(UserError, match=r"failed after 2 tries: the connection was dropped \(IncompleteRead\)"):
        OpenAIBackend(stub.base_url, "m", retries=1, backoff=0.0).complete(["hi"])

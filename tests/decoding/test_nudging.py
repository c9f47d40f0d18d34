"""Nudging: which words the nudger A writes and which the base model B writes, worked out by hand
on character-level models whose next-token probabilities are tables over the answer's text."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from alignlab.decoding.nudging import Nudging, split_words
from alignlab.errors import UserError
from alignlab.generation.base import SamplingParams

ALPHABET = " !,.>?GHOWY\n" + "abcdefghijklmnopqrstuvwxyz"
EOS = "<eos>"
V = len(ALPHABET) + 2  # 40 tokens: BOS, EOS and one per character
GREEDY = SamplingParams(temperature=0, max_new_tokens=64)


class Chars:
    """One token per character. ``order`` numbers the characters (the default: BOS 0, EOS 1, then
    ALPHABET in order); decoding leaves BOS and EOS out."""

    chat_template = None

    def __init__(self, order=None):
        ids = order or {"<bos>": 0, EOS: 1, **{c: i + 2 for i, c in enumerate(ALPHABET)}}
        self.bos_token_id, self.eos_token_id = ids["<bos>"], ids[EOS]
        self.id = {c: i for c, i in ids.items() if len(c) == 1}
        self.char = {i: c for c, i in self.id.items()}

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [self.bos_token_id] * add_special_tokens + [self.id[c] for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(self.char.get(i, "") for i in ids)


# another numbering: letters, then the other characters, then BOS and EOS (it too numbers " " before
# "!" before "?", so B's ties below break the same way)
OTHER = Chars({**{c: i for i, c in enumerate(sorted(ALPHABET, key=lambda c: (not c.isalpha(), c)))},
               "<bos>": V - 2, EOS: V - 1})


class LikeSentencePiece(Chars):
    """Decodes as SentencePiece tokenizers do: without the leading space of the decoded text."""

    def decode(self, ids, skip_special_tokens=True):
        return super().decode(ids).removeprefix(" ")


class TableLM(torch.nn.Module):
    """Next-token probabilities ``table(prompt, answer)`` -> {character or EOS: probability} at each
    position after the prompt, the text before ">" (the answer: the text after it); the tokens the
    table leaves out share the rest of the mass equally (none when the listed ones sum to 1)."""

    def __init__(self, tokenizer, table):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.tok, self.table = tokenizer, table

    def forward(self, input_ids):
        rows = []
        for t in range(input_ids.shape[1]):
            prompt, opened, answer = self.tok.decode(input_ids[0, :t + 1].tolist()).partition(">")
            listed = self.table(prompt, answer) if opened else {}  # inside the prompt: uniform
            rest = (1 - sum(listed.values())) / (V - len(listed))
            probs = torch.full((V,), rest, dtype=torch.float64)
            for c, p in listed.items():
                probs[self.tok.eos_token_id if c == EOS else self.tok.id[c]] = p
            rows.append(torch.log(probs).float())
        return SimpleNamespace(logits=torch.stack(rows)[None])


SCRIPTS = {"q": ["Hi there cats run fast", "Hi there! Go on", "Hi there! Yo, bye"], "r": ["We go to sea and sky", "We run home"],
           "e": ["Ok then yes"], "f": ["Ok then yes"]}


def nudger_table(prompt, answer):
    """A, sure of each character: it follows the first of its prompt's scripts that goes on from the
    answer and ends (EOS) where none does; for prompt "s" it opens with "Yo" and writes "ha ha ha
    ...", "h" after anything but the letters of "Yo ha"."""
    if prompt == "s":
        return {{"": "Y", "Y": "o", "o": " ", "h": "a", "a": " "}.get(answer[-1:], "h"): 1.0}
    for s in SCRIPTS[prompt]:
        if s.startswith(answer) and len(s) > len(answer):
            return {s[len(answer)]: 1.0}
    return {EOS: 1.0}


UNSURE = {"z": 0.3}  # B's top-1 where the table says nothing: "z", 0.3 (the 39 others get 0.7/39 each)
SURE = {("q", "Hi there"): {"!": 0.5, "?": 0.5}, ("q", "Hi there!"): {" ": 0.5, "!": 0.5}, ("q", "Hi there! "): {"Y": 0.9},
        ("q", "Hi there! Y"): {"o": 0.9}, ("r", "We"): {" ": 0.35}, ("r", "We "): {"r": 0.9},
        ("r", "We r"): {"u": 0.9}, ("r", "We ru"): {"n": 0.9}, ("e", "Ok"): {EOS: 0.8}, ("f", "Ok"): {EOS: 0.35}}


def base_table(prompt, answer):
    if prompt == "s" and answer.endswith("ha"):
        return {"!": 0.9}
    return SURE.get((prompt, answer), UNSURE)


def nudging(base_tok=None, nudger_tok=None, **kwargs):
    base_tok, nudger_tok = base_tok or Chars(), nudger_tok or Chars()
    return Nudging(TableLM(base_tok, base_table), base_tok, TableLM(nudger_tok, nudger_table), nudger_tok,
                   **{"threshold": 0.4, **kwargs})


def answer(method, prompt, params=GREEDY):
    (sample,), = method.generate([prompt], 1, params)
    return sample


def test_words_keep_the_whitespace_before_them():
    assert split_words("Hi  there\nyou ") == ["Hi", "  there", "\nyou", " "]
    assert split_words(" a") == [" a"] and split_words("") == [] and split_words("  ") == ["  "]


def test_the_nudger_writes_where_the_base_is_unsure_and_ends_the_answer():
    """γ 0.4, chunks of 16. Round 1: A writes "Hi there cats ru" (16 characters; no EOS): words Hi,
    " there", " cats", " ru". "Hi" is taken; at "Hi" B's top-1 is "z" at 0.3 < 0.4 (and not a
    prefix of " there"): " there" is taken; at "Hi there" B's top-1 is "!" at 0.5 >= 0.4: B takes
    over. B keeps "!" and then " " (0.5), "Y", "o" (0.9); at "Hi there! Yo" its top-1 is 0.3: the
    token is dropped. Round 2: A goes on along its third script, ", bye", then EOS within the
    chunk: taken whole, and the answer ends, finished.
    Answer "Hi there! Yo, bye", 17 characters: 8 + 5 = 13 from A (words Hi, there, ",", bye: 4).
    Forward tokens (prompt: BOS q > = 3): A 3 + ... + 18 (16 steps) = 168 and 15 + ... + 20 (6
    steps) = 105, 273 in all; B: checks at "Hi" (5) and "Hi there" (11), its steps at 12, 13, 14,
    15 (54) and the log-prob pass over 3 + 17 + EOS = 21: 91.
    B's log-probs: "H" at the empty answer 0.7/39, "!" and " " 0.5, "Y" and "o" 0.9, its EOS 0.7/39."""
    method = nudging()
    s = answer(method, "q>")
    assert s.text == "Hi there! Yo, bye" and s.finished
    tok = Chars()
    assert s.token_ids == tuple(tok.id[c] for c in s.text) + (tok.eos_token_id,)
    assert s.prompt_ids == (0, tok.id["q"], tok.id[">"])
    want = {0: 0.7 / 39, 8: 0.5, 9: 0.5, 10: 0.9, 11: 0.9, 17: 0.7 / 39}
    for i, p in want.items():
        assert s.logprobs[i] == pytest.approx(math.log(p), abs=1e-6), i
    r = method.last_report
    assert (r.rounds, r.nudged_words, r.nudged_tokens, r.answer_tokens) == (2, 4, 13, 17)
    assert r.nudged_share == pytest.approx(13 / 17, abs=1e-15)
    assert (r.forward_tokens_nudger, r.forward_tokens_base, r.forward_tokens) == (273, 91, 364)


def test_a_top_1_exactly_at_the_threshold_is_the_base_models():
    """At "Hi there" B's top-1 is exactly 0.5 ("!" and "?" tie; "!" comes first), and at "Hi there!"
    (" " and "!"). γ = 0.5: B is sure enough (>=) at both and writes "! Yo", as at γ 0.4 (were it
    not at the second, A would go on from "Hi there!" with " Go on"). γ just above 0.5: A's " cats" is taken too
    (B unsure at "Hi there cats", 0.3), the chunk's last word " ru" is not; round 2: A writes " run
    fast" and EOS: all 22 characters are A's."""
    assert answer(nudging(threshold=0.5), "q>").text == "Hi there! Yo, bye"
    method = nudging(threshold=math.nextafter(0.5, 1))
    assert answer(method, "q>").text == "Hi there cats run fast"
    assert (method.last_report.nudged_tokens, method.last_report.answer_tokens) == (22, 22)


@pytest.mark.parametrize("limit,text,nudged,forward_a,forward_b", [
    (17, "Hi there! Yo, bye", 13, 273, 90), (16, "Hi there! Yo, by", 12, 273, 89), (10, "Hi there! ", 8, 168, 41)])
def test_an_answer_past_the_token_limit_is_cut_there_unfinished(limit, text, nudged, forward_a, forward_b):
    """The answer of the first test has 17 tokens and its end token: a limit of 17 keeps the text
    and drops the end token (unfinished), 16 cuts the last character; 8 + 5 (or 4) of them are A's.
    Both run as in the first test, B's log-prob pass over 3 + 17 (16) tokens: 16 + 54 + 20 = 90
    (89). At 10, B stops at the limit after "! " (its one step at 12: 5 + 11 + 12 and the pass,
    13: 41) and round 2 does not start (A: 168 only)."""
    method = nudging()
    s = answer(method, "q>", SamplingParams(temperature=0, max_new_tokens=limit))
    assert (s.text, s.finished, len(s.token_ids), len(s.logprobs)) == (text, False, limit, limit)
    r = method.last_report
    assert (r.nudged_tokens, r.answer_tokens, r.forward_tokens_nudger, r.forward_tokens_base) == \
        (nudged, limit, forward_a, forward_b)


def test_the_base_takes_over_when_its_token_begins_the_nudgers_next_word():
    """A writes "We go to sea and" (16 characters). At "We" B's top-1 is " " at 0.35 < 0.4, but " "
    begins A's next word " go": B takes over with it, then "r", "u", "n" (0.9), and is unsure at
    "We run". A's second script goes on: " home", EOS. "We run home": 2 + 5 of 11 from A."""
    method = nudging()
    assert answer(method, "r>").text == "We run home"
    assert (method.last_report.nudged_tokens, method.last_report.answer_tokens) == (7, 11)


def test_the_answer_stops_when_the_same_nudge_comes_a_fourth_time_or_at_the_limits():
    """Round 1: A writes "Yo ha ha ha ha h"; B is unsure at "Yo" (0.3) and sure of "!" after "ha"
    (0.9): nudge "Yo ha", B "!", then unsure. From "...!" A writes "ha ha ha ha ha h": rounds 2, 3
    and 4 nudge "ha", B "!". Round 5's nudge is the three rounds' before it: the answer stops at
    "Yo ha!ha!ha!ha!", unfinished, after 5 rounds, 5 words and 11 of 15 tokens from A. With
    max_rounds 2: "Yo ha!ha!". With max_new_tokens 7: round 2's "ha" passes the limit (8 tokens)
    and B writes nothing; the answer is cut to its first 7 tokens, "Yo ha!h", 6 of them A's."""
    method = nudging()
    s = answer(method, "s>")
    r = method.last_report
    assert (s.text, s.finished, r.rounds, r.nudged_words, r.nudged_tokens) == ("Yo ha!ha!ha!ha!", False, 5, 5, 11)
    assert answer(nudging(max_rounds=2), "s>").text == "Yo ha!ha!"
    method = nudging()
    s = answer(method, "s>", SamplingParams(temperature=0, max_new_tokens=7))
    assert (s.text, s.finished, len(s.token_ids), len(s.logprobs)) == ("Yo ha!h", False, 7, 7)
    assert (method.last_report.nudged_tokens, method.last_report.answer_tokens) == (6, 7)


def test_the_base_models_end_of_sequence_ends_the_answer_only_when_it_is_sure():
    """Chunks of 4, A's script "Ok then yes". Round 1: "Ok t", words Ok, " t". At "Ok" B's top-1 is
    EOS: at 0.8 B takes over with it and the answer "Ok" ends, finished (B's EOS kept, log 0.8).
    At 0.35 (< 0.4; EOS begins no word) "Ok" is taken and the cut " t" left; round 2: " the", a
    single word, taken; round 3: "n ye": "n" taken (B unsure at "Ok then"); round 4: " yes";
    round 5: A's EOS first, nothing added: "Ok then yes", finished, 4 words, 5 rounds."""
    method = nudging(chunk=4)
    s = answer(method, "e>")
    tok = Chars()
    assert (s.text, s.finished, s.token_ids) == ("Ok", True, (tok.id["O"], tok.id["k"], tok.eos_token_id))
    assert s.logprobs[-1] == pytest.approx(math.log(0.8), abs=1e-6)
    s = answer(method, "f>")
    assert (s.text, s.finished, s.token_ids[-1]) == ("Ok then yes", True, tok.eos_token_id)
    assert (method.last_report.rounds, method.last_report.nudged_words) == (5, 4)


@pytest.mark.parametrize("base_tok,nudger_tok", [(OTHER, Chars()), (Chars(), OTHER), (OTHER, OTHER),
                                                (LikeSentencePiece(), LikeSentencePiece())])
def test_the_models_may_have_different_tokenizers(base_tok, nudger_tok):
    """The words pass as text: with either model on another numbering of the characters (its EOS
    and BOS ids too), or with tokenizers that drop the leading space of what they decode (A's
    " home" and B's " " that begins " go" keep theirs: the new tokens are decoded after the text
    before them), the answers and the counts are those of the shared tokenizer; the returned ids
    are the base tokenizer's."""
    prompts = ["q>", "r>", "s>"]
    same = nudging()
    want = same.generate(prompts, 1, GREEDY)
    method = nudging(base_tok, nudger_tok)
    got = method.generate(prompts, 1, GREEDY)
    assert [row[0].text for row in got] == [row[0].text for row in want]
    for (s,), (w,) in zip(got, want, strict=True):
        assert s.token_ids == tuple(base_tok(s.text, add_special_tokens=False)["input_ids"]) + \
            (base_tok.eos_token_id,) * s.finished and s.finished == w.finished
        assert s.logprobs == pytest.approx(w.logprobs, abs=1e-6)
    assert vars(method.last_report) == vars(same.last_report)


def test_an_answer_does_not_depend_on_its_batch_and_copies_are_equal():
    """Greedy: each prompt alone, in a batch, in another order, as token ids, or n = 2 gives the same answer."""
    method = nudging()
    prompts = ["q>", "r>", "s>"]
    together = method.generate(prompts, 2, GREEDY)
    assert all(row[0] == row[1] for row in together)
    alone = [method.generate([p], 1, GREEDY)[0][0] for p in prompts]
    backwards = method.generate(prompts[::-1], 1, GREEDY)[::-1]
    as_ids = method.generate_ids([method.prompt_ids(p) for p in prompts], 1, GREEDY)
    for row, a, b, c in zip(together, alone, backwards, as_ids, strict=True):
        assert row[0] == a == b[0] == c[0]


class Boom(torch.nn.Module):
    def forward(self, input_ids):
        raise AssertionError("a model ran")


@pytest.mark.parametrize("params,message", [(SamplingParams(temperature=0.7), "decodes greedily"),
                                            (SamplingParams(temperature=0, stop_token_ids=(5,)), "stop_token_ids")])
def test_sampling_settings_it_cannot_honour_are_refused_before_a_model_runs(params, message):
    method = Nudging(Boom(), Chars(), Boom(), Chars())
    with pytest.raises(UserError, match=message):
        method.generate(["q>"], 1, params)
    with pytest.raises(UserError, match=message):
        method.generate_ids([(0,)], 1, params)


class NoEnd(Chars):
    def __init__(self):
        super().__init__()
        self.eos_token_id = None


class Shouting(Chars):
    def decode(self, ids, skip_special_tokens=True):
        return super().decode(ids).upper()


@pytest.mark.parametrize("kwargs,message", [
    ({"threshold": 0}, "threshold must be in"), ({"threshold": 1.5}, "threshold must be in"),
    ({"threshold": float("nan")}, "threshold must be in"), ({"chunk": 0}, "chunk must be"),
    ({"max_rounds": 0}, "max_rounds must be"), ({"repeats": 1.5}, "repeats must be"),
    ({"base_tokenizer": NoEnd()}, "base model's tokenizer has no end-of-sequence"),
    ({"nudger_tokenizer": Shouting()}, "nudger model's tokenizer does not give back"),
])
def test_bad_settings(kwargs, message):
    args = {"base": Boom(), "base_tokenizer": Chars(), "nudger": Boom(), "nudger_tokenizer": Chars(), **kwargs}
    with pytest.raises(UserError, match=message):
        Nudging(**args)


def test_a_threshold_of_1_is_allowed():
    """γ = 1: B writes only the tokens it is certain of (the interval (0, 1] is closed at 1)."""
    assert Nudging(Boom(), Chars(), Boom(), Chars(), threshold=1).threshold == 1.0

"""URIAL: the prefix and the query block the model continues, and answers cut where the block ends."""

from __future__ import annotations

import pytest

from alignlab.decoding.urial import DEFAULT_PREFIX, InContext, cut_at_stops, read_prefix
from alignlab.errors import UserError
from alignlab.generation.base import Sample, SamplingParams


class Chars:
    """A tokenizer with one token per character (id = code point)."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


class Echo:
    """A generator whose answer to a context is ``answer`` (one token per character); it records the contexts."""

    numbers_prompts = True

    def __init__(self, answer):
        self.answer, self.tok, self.seen = answer, Chars(), []

    def prompt_ids(self, prompt):
        return tuple(ord(c) for c in prompt)

    def generate(self, prompts, n, params, start=0):
        self.seen += list(prompts)
        ids = tuple(ord(c) for c in self.answer)
        return [[Sample(self.answer, self.prompt_ids(p), ids, False, tuple(-0.5 for _ in ids)) for _ in range(n)]
                for p in prompts]

    def update_weights(self, model):
        pass


def test_the_query_follows_the_prefix_in_an_open_answer_block():
    gen = Echo("42")
    urial = InContext(gen, "PREFIX", Chars())
    urial.generate(["12+30="], 1, SamplingParams())
    assert gen.seen == ["PREFIX\n\n# Query:\n```\n12+30=\n```\n\n# Answer:\n```\n"]


def test_an_answer_is_cut_where_the_model_closes_the_block_or_starts_a_new_query():
    """'42\\n```\\n\\n# Query' keeps '42': its first 2 tokens (of 12), their log-probs, finished;
    an answer with no stop is left as it is."""
    gen = Echo("42\n```\n\n# Query")
    (answer,), = InContext(gen, "P", Chars()).generate(["q"], 1, SamplingParams())
    assert answer.text == "42" and answer.token_ids == (ord("4"), ord("2")) and answer.finished
    assert answer.logprobs == (-0.5, -0.5)
    plain = Sample("no stop here", (1,), tuple(ord(c) for c in "no stop here"), False)
    assert cut_at_stops(plain, Chars(), ("```",)) is plain
    early = Sample("a # Query: b", (1,), tuple(ord(c) for c in "a # Query: b"), False)
    assert cut_at_stops(early, Chars(), ("```", "# Query")).text == "a"


def test_the_prefix_file(tmp_path):
    assert "# Query:" in read_prefix(None) and read_prefix(None) == DEFAULT_PREFIX.read_text().rstrip()
    with pytest.raises(UserError, match="not found"):
        read_prefix(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(UserError, match="is empty"):
        read_prefix(tmp_path / "empty.txt")
    with pytest.raises(UserError, match=r"\{query\} placeholder"):
        InContext(Echo("x"), "P", Chars(), template="no placeholder")

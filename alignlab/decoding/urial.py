"""URIAL: in-context alignment of a base model (Lin et al. 2024, "The Unlocking Spell on Base LLMs:
Rethinking Alignment via In-Context Learning"; ALGORITHMS.md §7.6).

``InContext(base, prefix)`` is a ``Generator`` that shows the model a fixed prefix (a preamble and a
few stylistic query/answer examples) before each query, in the same block format, and opens the
answer block: the model continues it. The answer ends where the model closes the block or starts
a new query (the first of ``stops`` in the text, which is cut there, with the tokens that made
it), or at the token limit. The prefix is a text file the user can replace (``prefixes/urial.txt``
is the shipped one, written for this project: the paper's exact strings are not reproduced); a
conversation prompt is shown as its last user message. The paper decodes greedily with a
repetition penalty of 1.1; the samplers here have no repetition penalty, so ``--temperature 0``
is the closest setting.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from alignlab.data.records import Text
from alignlab.errors import UserError
from alignlab.generation.base import Generator, Sample, SamplingParams
from alignlab.rewards.base import reward_prompt

DEFAULT_PREFIX = Path(__file__).parent / "prefixes" / "urial.txt"
QUERY = "\n\n# Query:\n```\n{query}\n```\n\n# Answer:\n```\n"
STOPS = ("```", "# Query")


def read_prefix(path: str | Path | None) -> str:
    """The prefix file's text (the shipped one when ``path`` is None); a one-line error for a
    file that is missing or empty."""
    file = Path(path).expanduser() if path is not None else DEFAULT_PREFIX
    if file.is_dir():
        raise UserError(f"urial: prefix '{file}' is a folder; give the prefix's text file")
    if not file.is_file():
        raise UserError(f"urial: prefix file '{file}' not found")
    text = file.read_text(encoding="utf-8").rstrip()
    if not text:
        raise UserError(f"urial: prefix file '{file}' is empty")
    return text


def cut_at_stops(sample: Sample, tokenizer, stops: Sequence[str]) -> Sample:
    """``sample`` ending before the first of ``stops`` in its text: the text cut there and the
    tokens (and their log-probs) that decode to the kept text; finished when a stop was found."""
    hit = min((i for i in (sample.text.find(s) for s in stops) if i >= 0), default=-1)
    if hit < 0:
        return sample
    kept = sample.text[:hit].rstrip()
    ids = sample.token_ids
    k = len(ids)
    while k > 0 and not kept.startswith(tokenizer.decode(list(ids[:k]), skip_special_tokens=True)):
        k -= 1  # the longest prefix of the tokens whose text is a prefix of the kept text
    return replace(sample, text=kept, token_ids=ids[:k], finished=True, logprobs=sample.logprobs[:k],
                   sampling_logprobs=sample.sampling_logprobs[:k])


@dataclass
class InContextReport:
    forward_tokens: int = 0  # of the latest call: every sequence's context (the prefix too) and new tokens


class InContext:
    """A ``Generator``: the base generator answering each query after ``prefix`` (see the module docstring)."""

    def __init__(self, base: Generator, prefix: str, tokenizer=None, template: str = QUERY,
                 stops: Sequence[str] = STOPS):
        if "{query}" not in template:
            raise UserError("urial: the query template needs a {query} placeholder")
        self.base, self.prefix, self.template, self.stops = base, prefix, template, tuple(stops)
        self.tok = tokenizer if tokenizer is not None else getattr(base, "tok", None)
        if self.tok is None:
            raise UserError("urial: the base generator has no tokenizer to cut answers with; pass one")
        self.numbers_prompts = getattr(base, "numbers_prompts", False)
        self.last_report = InContextReport()

    def render(self, prompt: Text) -> str:
        return self.prefix + self.template.format(query=reward_prompt(prompt))

    def prompt_ids(self, prompt: Text) -> tuple[int, ...]:
        return self.base.prompt_ids(self.render(prompt))

    def update_weights(self, model) -> None:
        self.base.update_weights(model)

    def generate(self, prompts: Sequence[Text], n: int, params: SamplingParams, start: int = 0) -> list[list[Sample]]:
        got = self.base.generate([self.render(p) for p in prompts], n, params, start=start)
        return self._cut(got)

    def generate_ids(self, contexts: Sequence[tuple[int, ...]], n: int, params: SamplingParams,
                     start: int = 0) -> list[list[Sample]]:
        queries = [self.tok.decode(list(c), skip_special_tokens=True) for c in contexts]
        return self.generate(queries, n, params, start=start)

    def _cut(self, got: list[list[Sample]]) -> list[list[Sample]]:
        self.last_report = InContextReport(sum(len(s.prompt_ids) + len(s.token_ids) for group in got for s in group))
        return [[cut_at_stops(s, self.tok, self.stops) for s in group] for group in got]

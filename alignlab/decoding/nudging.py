"""Nudging: a small aligned model writes the words a base model is unsure of (Fei et al. 2024,
"Nudging: Inference-time Alignment via Model Collaboration"; ALGORITHMS.md §7.3).

``Nudging(base, base_tokenizer, nudger, nudger_tokenizer, threshold)`` is a ``Generator``. The base
model B (unaligned, e.g. pretrained) writes the answer where it is sure of its next token; the
nudger A (small, aligned) writes it where B is not. The rule: **A nudges iff max_v p_B(v | prefix)
< γ** (``threshold``: 0.3 is the paper's function default, 0.4 the setting of its README runs).
Greedy throughout, as in the paper:
1. A continues the answer by up to ``chunk`` (16) tokens; the text is split into words, each with
   the whitespace before it. The first word is always taken. Before each next word B is asked for
   its next token at the answer so far: if B is sure (top-1 ≥ γ) or its token is a prefix of the
   word (B would write it too), B takes over with that token; else the word is taken. A chunk's
   last word is never taken (the chunk may have cut it) unless it is the chunk's only word.
2. B continues greedily and keeps each token while its top-1 probability is ≥ γ; the first token
   below γ is dropped and step 1 follows.
The answer opens with step 1 (the paper's loop starts with the nudger). It ends when A ends its
chunk with its end-of-sequence token (the chunk is then taken whole, as in the paper), when B keeps
its end-of-sequence token (by the rule: B was sure of it), at ``max_new_tokens`` base tokens (a
longer answer is cut there, unfinished), after ``max_rounds`` (150) rounds of step 1, or when a
round's nudging words are those of each of the ``repeats`` (3) rounds before it (the paper's stop
for repeated nudges; they are not written a fourth time). The paper's API code lets A go on after
B's end-of-sequence token, drops repeated base completions and trims a repeated ending; none of
that is done here.

The models pass words as text, so A and B may have different tokenizers: each sees the prompt
rendered with its own chat template (``alignlab.generation.prompts.prompt_ids``) followed by the
answer so far encoded with its own tokenizer. Words are cut before their leading whitespace, so a
nudge never leaves the answer ending in a space that a GPT-2-style tokenizer would join to the next
word. Each tokenizer must give back the text it encodes (checked once).

A returned ``Sample``'s ``text`` is the answer; ``prompt_ids`` and ``token_ids`` are in B's
tokenization (the answer re-encoded, with B's end-of-sequence token when it finished, whichever
model ended it) and ``logprobs`` are B's log-probs of those tokens, from one teacher-forced forward
pass; ``sampling_logprobs`` stay empty (A's words were not drawn from B). Greedy decoding is the
method: a temperature above 0 or ``stop_token_ids`` (one tokenizer's ids) are refused, and the
``n`` answers of a prompt are one answer, computed once.

Why by hand: it needs B's top-1 probability at points A chose and both models on text, which no
sampler engine exposes; each step runs a model over the whole sequence (no cache), simple and exact
at the testbed's sizes. ``last_report`` counts both models' forward tokens (B's log-prob pass
included), the rounds, and the share of the answers' base tokens that came from A.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from alignlab.data.records import Text
from alignlab.errors import UserError
from alignlab.generation.base import Sample, SamplingParams
from alignlab.generation.prompts import prompt_ids as render_prompt
from alignlab.logprobs import gather_logps

WORD_RE = re.compile(r"\s*\S+|\s+$")  # a word with the whitespace before it; trailing whitespace alone
_PROBE = "a b\nc"


def split_words(text: str) -> list[str]:
    """``text`` as words, each with the whitespace before it: ``"Hi  there\\nyou "`` ->
    ``["Hi", "  there", "\\nyou", " "]``; they join back to ``text``."""
    return WORD_RE.findall(text)


@dataclass
class NudgingReport:
    forward_tokens_base: int = 0  # every step's whole sequence, and the log-prob pass
    forward_tokens_nudger: int = 0
    rounds: int = 0  # of step 1, over all answers
    nudged_words: int = 0
    answer_tokens: int = 0  # the answers' base tokens, end-of-sequence token left out
    nudged_tokens: int = 0  # of which in the nudger's words

    @property
    def forward_tokens(self) -> int:
        return self.forward_tokens_base + self.forward_tokens_nudger

    @property
    def nudged_share(self) -> float:
        return self.nudged_tokens / self.answer_tokens if self.answer_tokens else 0.0


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _added_text(tokenizer, before: list[int], new: list[int]) -> str:
    """The text ``new`` adds after ``before``, decoded together: a character split across tokens
    comes out whole, and a tokenizer that drops the leading space of what it decodes (SentencePiece's
    do) keeps the space before a word."""
    if not new:
        return ""
    head = tokenizer.decode(before, skip_special_tokens=True)
    whole = tokenizer.decode(before + new, skip_special_tokens=True)
    return whole[len(head):] if whole.startswith(head) else tokenizer.decode(new, skip_special_tokens=True)


class Nudging:
    """A ``Generator``: base model B's answers nudged by model A where B is unsure (see the module docstring)."""

    numbers_prompts = True  # greedy: an answer depends on its prompt alone
    greedy_only = True  # an evaluation asks it for greedy answers

    def __init__(self, base, base_tokenizer, nudger, nudger_tokenizer, threshold: float = 0.3, chunk: int = 16,
                 max_rounds: int = 150, repeats: int = 3):
        if not (isinstance(threshold, int | float) and math.isfinite(threshold) and 0 < threshold <= 1):
            raise UserError(f"nudging: the threshold must be in (0, 1], got {threshold}")
        for name, value in (("chunk", chunk), ("max_rounds", max_rounds), ("repeats", repeats)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"nudging: {name} must be a whole number >= 1, got {value}")
        for role, tok in (("base", base_tokenizer), ("nudger", nudger_tokenizer)):
            if tok.eos_token_id is None:
                raise UserError(f"nudging: the {role} model's tokenizer has no end-of-sequence token")
            back = tok.decode(_encode(tok, _PROBE), skip_special_tokens=True)
            if back != _PROBE:
                raise UserError(f"nudging: the {role} model's tokenizer does not give back the text it encodes "
                                f"({_PROBE!r} -> {back!r}); nudging passes the answer between the models as text")
        self.model, self.tok, self.nudger, self.nudger_tok = base, base_tokenizer, nudger, nudger_tokenizer
        self.threshold, self.chunk, self.max_rounds, self.repeats = float(threshold), chunk, max_rounds, repeats
        self.last_report = NudgingReport()

    def prompt_ids(self, prompt: Text) -> tuple[int, ...]:
        return render_prompt(self.tok, prompt)

    def update_weights(self, model) -> None:
        """Decode with ``model`` as the base model from now on."""
        self.model = model

    def generate(self, prompts: Sequence[Text], n: int, params: SamplingParams, start: int = 0) -> list[list[Sample]]:
        self._check(params)
        return self._run([(self.prompt_ids(p), render_prompt(self.nudger_tok, p)) for p in prompts], n, params)

    def generate_ids(self, contexts: Sequence[tuple[int, ...]], n: int, params: SamplingParams,
                     start: int = 0) -> list[list[Sample]]:
        """Prompts as base-model token ids; the nudger reads them as the base tokenizer's text
        (special tokens included), encoded with its own tokenizer: exact when the two share one."""
        self._check(params)
        pairs = []
        for c in contexts:
            ids = _encode(self.nudger_tok, self.tok.decode(list(c), skip_special_tokens=False))
            pairs.append((tuple(c), tuple(ids or render_prompt(self.nudger_tok, ""))))
        return self._run(pairs, n, params)

    @staticmethod
    def _check(params: SamplingParams) -> None:
        if not params.greedy:
            raise UserError(f"nudging decodes greedily, as the paper does: set the temperature to 0, not "
                            f"{params.temperature}")
        if params.stop_token_ids:
            raise UserError("nudging ends at either model's end-of-sequence token; stop_token_ids (one tokenizer's "
                            "ids) are not supported")

    def _run(self, pairs, n: int, params: SamplingParams) -> list[list[Sample]]:
        report = NudgingReport()
        out = [[self._answer(ctx_b, ctx_a, params.max_new_tokens, report)] * n for ctx_b, ctx_a in pairs]
        self.last_report = report
        return out

    def _top(self, nudger: bool, ids: list[int], report: NudgingReport) -> tuple[int, float]:
        """The model's most likely next token after ``ids`` and its probability."""
        model = self.nudger if nudger else self.model
        seq = torch.tensor([ids], device=next(model.parameters()).device)
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=seq).logits[0, -1].float(), -1)
        if nudger:
            report.forward_tokens_nudger += len(ids)
        else:
            report.forward_tokens_base += len(ids)
        v = int(torch.argmax(probs))
        return v, float(probs[v])

    def _answer(self, ctx_b: tuple[int, ...], ctx_a: tuple[int, ...], max_new: int, report: NudgingReport) -> Sample:
        eos_a, eos_b, gamma = self.nudger_tok.eos_token_id, self.tok.eos_token_id, self.threshold
        answer, parts, nudges, finished = "", [], [], False  # parts: (from the nudger, text), in order
        for _ in range(self.max_rounds):
            if len(_encode(self.tok, answer)) >= max_new:
                break
            report.rounds += 1
            # 1. the nudger writes a chunk; its words are taken while B is unsure
            before = _encode(self.nudger_tok, answer)
            new: list[int] = []
            ended = False
            while len(new) < self.chunk:
                v, _ = self._top(True, list(ctx_a) + before + new, report)
                if v == eos_a:
                    ended = True
                    break
                new.append(v)
            text = _added_text(self.nudger_tok, before, new)
            if ended:
                answer += text
                parts.append((True, text))
                report.nudged_words += len(split_words(text))
                finished = True
                break
            words = split_words(text)
            take, handover = min(len(words), 1), None
            for k in range(1, len(words)):
                take = k
                at = _encode(self.tok, answer + "".join(words[:k]))
                v, p = self._top(False, list(ctx_b) + at, report)
                piece = _added_text(self.tok, at, [v])
                if p >= gamma or (piece and words[k].startswith(piece)):
                    handover = v
                    break
            nudge = "".join(words[:take])
            nudges.append(nudge)
            if len(nudges) > self.repeats and all(w == nudge for w in nudges[-self.repeats - 1:-1]):
                break
            answer += nudge
            parts.append((True, nudge))
            report.nudged_words += take
            if handover is None:
                continue
            # 2. B goes on from its handover token (taken whatever its probability) while it is sure
            before = _encode(self.tok, answer)
            room, new, v, p = max_new - len(before), [], handover, 1.0
            while len(new) < room and p >= gamma:
                if v == eos_b:
                    finished = True
                    break
                new.append(v)
                if len(new) < room:
                    v, p = self._top(False, list(ctx_b) + before + new, report)
            text = _added_text(self.tok, before, new)
            answer += text
            parts.append((False, text))
            if finished:
                break
        return self._sample(ctx_b, answer, parts, finished, max_new, report)

    def _sample(self, ctx_b, answer: str, parts, finished: bool, max_new: int, report: NudgingReport) -> Sample:
        """The answer in B's tokens (cut at ``max_new`` with the end token), B's log-probs of them,
        and the count of its tokens that came from A."""
        ids = _encode(self.tok, answer)
        if len(ids) + finished > max_new:
            ids, finished = ids[:max_new], False
            answer = _added_text(self.tok, list(ctx_b), ids)
        at = 0
        for from_nudger, text in parts:
            end = min(at + len(text), len(answer))
            if from_nudger and end > at:
                report.nudged_tokens += len(_encode(self.tok, answer[:end])) - len(_encode(self.tok, answer[:at]))
            at = end
        report.answer_tokens += len(ids)
        token_ids = ids + [self.tok.eos_token_id] * finished
        logprobs: tuple[float, ...] = ()
        if token_ids:
            seq = torch.tensor([list(ctx_b) + token_ids], device=next(self.model.parameters()).device)
            with torch.no_grad():
                logits = self.model(input_ids=seq).logits[:, len(ctx_b) - 1:-1]
            logprobs = tuple(gather_logps(logits, torch.tensor([token_ids], device=seq.device))[0].tolist())
            report.forward_tokens_base += seq.shape[1]
        return Sample(answer, tuple(ctx_b), tuple(token_ids), finished, logprobs)

"""Records to token ids.

Conversations are rendered with the tokenizer's chat template; strings as plain text, with the
response followed by EOS. The prompt and each piece of the response are tokenized separately
(as TRL does), so a response's tokens never depend on how the prompt ends, and the prompt can be
shared by both responses of a pair.

Truncation is explicit:
- ``max_prompt_length`` (optional): a longer prompt keeps its last tokens (those nearest the
  response). Counted in ``RenderResult.truncated_prompts``.
- ``max_length``: prompt plus response. A longer response is cut at the end (it loses its EOS)
  and counted in ``RenderResult.truncated_responses``. A prompt that leaves no room for a single
  response token is a bad row (field 'prompt'), reported like any other: an error by default,
  skipped and counted with ``skip_invalid``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from alignlab.data.records import (
    Conversation,
    JointRecord,
    Message,
    NegativeRecord,
    PairRecord,
    RankedRecord,
    SFTRecord,
    Text,
    UnpairedRecord,
    is_conversation,
)
from alignlab.errors import RowIssue, UserError


@dataclass(frozen=True)
class Response:
    """Token ids of a response and a 0/1 mask of the ids that carry loss."""

    ids: tuple[int, ...]
    mask: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.ids)


Seq = tuple[tuple[int, ...], Response]  # one row of a batch: prompt ids and the response


@dataclass(frozen=True)
class TokenizedSFT:
    prompt_ids: tuple[int, ...]
    completion: Response
    row: int = 0
    source: str = ""  # the data file of the row (a folder of files numbers each file's rows from 1)

    def sequences(self) -> list[Seq]:
        return [(self.prompt_ids, self.completion)]


# Every preference example lists the rows it puts in a batch (``sequences``) and may carry the
# reference model's log-probs of those rows, computed once before training (``ref``: summed,
# one per row; ``ref_tokens``: per token, for losses that need them).


@dataclass(frozen=True)
class TokenizedPair:
    prompt_ids: tuple[int, ...]
    chosen: Response
    rejected: Response
    row: int = 0
    rejected_prompt_ids: tuple[int, ...] | None = None  # joint preference: the rejected side's prompt
    strength: float | None = None
    score_gap: float | None = None  # score_chosen − score_rejected, when the data has scores (reward margins)
    group: float | None = None  # 1.0: pair of the first set, 0.0: of the second (mixtures of two sets)
    ref: tuple[float, ...] | None = None
    ref_tokens: tuple[tuple[float, ...], ...] | None = None
    source: str = ""  # the data file of the row (a folder of files numbers each file's rows from 1)

    def sequences(self) -> list[Seq]:
        other = self.prompt_ids if self.rejected_prompt_ids is None else self.rejected_prompt_ids
        return [(self.prompt_ids, self.chosen), (other, self.rejected)]


@dataclass(frozen=True)
class TokenizedUnpaired:
    """A labelled response; ``kl_completion`` is another example's response to this prompt
    (the mismatched pair KTO's reference point is estimated from), fixed before training."""

    prompt_ids: tuple[int, ...]
    completion: Response
    label: bool
    row: int = 0
    kl_completion: Response | None = None
    udm_weight: float = 1.0
    ref: tuple[float, ...] | None = None
    ref_tokens: tuple[tuple[float, ...], ...] | None = None
    source: str = ""  # the data file of the row (a folder of files numbers each file's rows from 1)

    def sequences(self) -> list[Seq]:
        rows = [(self.prompt_ids, self.completion)]
        return rows + ([(self.prompt_ids, self.kl_completion)] if self.kl_completion is not None else [])


@dataclass(frozen=True)
class TokenizedRanked:
    """A prompt with responses ordered best first and their scores (non-increasing)."""

    prompt_ids: tuple[int, ...]
    completions: tuple[Response, ...]
    scores: tuple[float, ...]
    row: int = 0
    ref: tuple[float, ...] | None = None
    ref_tokens: tuple[tuple[float, ...], ...] | None = None
    source: str = ""  # the data file of the row (a folder of files numbers each file's rows from 1)

    def sequences(self) -> list[Seq]:
        return [(self.prompt_ids, c) for c in self.completions]


@dataclass(frozen=True)
class TokenizedNegative:
    """A dispreferred response and the samples drawn from the reference for its prompt."""

    prompt_ids: tuple[int, ...]
    rejected: Response
    row: int = 0
    samples: tuple[Response, ...] = ()
    ref: tuple[float, ...] | None = None
    ref_tokens: tuple[tuple[float, ...], ...] | None = None
    source: str = ""  # the data file of the row (a folder of files numbers each file's rows from 1)

    def sequences(self) -> list[Seq]:
        return [(self.prompt_ids, self.rejected)] + [(self.prompt_ids, s) for s in self.samples]


@dataclass
class RenderResult:
    examples: list = field(default_factory=list)
    issues: list[RowIssue] = field(default_factory=list)
    truncated_prompts: int = 0
    truncated_responses: int = 0

    def summary(self) -> str:
        parts = []
        if self.truncated_prompts:
            parts.append(f"{self.truncated_prompts} prompts truncated to max_prompt_length (kept their end)")
        if self.truncated_responses:
            parts.append(f"{self.truncated_responses} responses truncated to fit max_length")
        return "; ".join(parts)


class Renderer:
    """Turns records into token ids for one tokenizer and one set of length limits."""

    def __init__(self, tokenizer, max_length: int, max_prompt_length: int | None = None):
        if max_length < 2:
            raise UserError(f"max_length must be at least 2, got {max_length}")
        if max_prompt_length is not None and max_prompt_length < 1:
            raise UserError(f"max_prompt_length must be at least 1, got {max_prompt_length}")
        self.tok = tokenizer
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        # An encoder's tokenizer (BERT's) has no EOS: its separator ends a response instead.
        self.eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else getattr(tokenizer, "sep_token_id", None)
        # A response needs a token before it to be predicted from; an empty prompt gets this one.
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        self.start_ids = (start,) if start is not None else ()

    # -- low level -------------------------------------------------------------------------
    def _ids(self, text: str) -> tuple[int, ...]:
        return tuple(self.tok(text, add_special_tokens=False)["input_ids"])

    def _template(self, messages: Conversation, add_generation_prompt: bool) -> str:
        if self.tok.chat_template is None:
            raise UserError(
                f"the data is conversational but the tokenizer of '{self.tok.name_or_path}' has no chat "
                "template; use a tokenizer with one, or give the data as plain strings"
            )
        if not messages and not add_generation_prompt:
            return ""
        return self.tok.apply_chat_template(
            [m.as_dict() for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _prompt_ids(self, prompt: Text) -> tuple[int, ...]:
        if is_conversation(prompt):
            text = self._template(prompt, add_generation_prompt=False)
            ids = self._ids(text) if text else ()
        else:
            ids = tuple(self.tok(prompt, add_special_tokens=True)["input_ids"]) if prompt else ()
        return ids or self.start_ids

    def _conversation_response(self, prompt: Conversation, response: Conversation) -> Response:
        """Render ``response`` after ``prompt`` turn by turn; loss on assistant content only."""
        ids: list[int] = []
        mask: list[int] = []
        history = tuple(prompt)
        done = self._template(history, add_generation_prompt=False)
        for message in response:
            pieces = []
            if message.role == "assistant":
                pieces.append((self._opener(history, message), 0))
            history = history + (message,)
            full = self._template(history, add_generation_prompt=False)
            pieces.append((full, 1 if message.role == "assistant" else 0))
            for text, loss in pieces:
                if not text.startswith(done):
                    raise _TemplateError()
                piece = self._ids(text[len(done):]) if len(text) > len(done) else ()
                ids.extend(piece)
                mask.extend([loss] * len(piece))
                done = text
        return Response(tuple(ids), tuple(mask))

    def _opener(self, history: Conversation, message) -> str:
        """The conversation so far plus the template's assistant opener (which carries no loss).

        Templates refuse an empty conversation, so with no history the opener is found from a
        probe conversation, and used only if the template renders ``message`` starting with it.
        """
        if history:
            return self._template(history, add_generation_prompt=True)
        probe = (Message("user", "probe"),)
        closed, opened = self._template(probe, False), self._template(probe, True)
        opener = opened[len(closed):] if opened.startswith(closed) else ""
        return opener if self._template((message,), False).startswith(opener) else ""

    def _text_response(self, response: str) -> Response:
        ids = self._ids(response) + ((self.eos,) if self.eos is not None else ())
        return Response(ids, (1,) * len(ids))

    def _response(self, prompt: Text, response: Text) -> Response:
        if is_conversation(response):
            return self._conversation_response(prompt if is_conversation(prompt) else (), response)
        return self._text_response(response)

    # -- fitting to the length limits ----------------------------------------------------------
    def _fit_prompt(self, ids: tuple[int, ...], result: RenderResult) -> tuple[int, ...]:
        if self.max_prompt_length is not None and len(ids) > self.max_prompt_length:
            result.truncated_prompts += 1
            ids = ids[-self.max_prompt_length:]
        return ids

    def _fit_response(self, prompt_len: int, resp: Response, result: RenderResult) -> Response:
        room = self.max_length - prompt_len
        if len(resp) > room:
            result.truncated_responses += 1
            resp = Response(resp.ids[:room], resp.mask[:room])
        return resp

    def _prompt_too_long(self, rec, n: int) -> RowIssue:
        return RowIssue(
            rec.source, rec.row, "prompt",
            f"prompt is {n} tokens, which leaves no room for a response within max_length={self.max_length}"
            " (raise max_length or set max_prompt_length)",
        )

    # -- public ----------------------------------------------------------------------------------
    def render(self, records: list) -> RenderResult:
        """Tokenize SFT or pair records; bad rows become issues, nothing is dropped silently."""
        result = RenderResult()
        for rec in records:
            try:
                ex = self._render_one(rec, result)
            except _TemplateError:
                result.issues.append(RowIssue(
                    rec.source, rec.row, None,
                    "the chat template does not render this conversation turn by turn as a prefix of the "
                    "whole; it cannot be split into prompt and response tokens",
                ))
                continue
            except UserError:
                raise
            except Exception as e:  # the tokenizer's chat template refused this row (e.g. a system role)
                first = (str(e).splitlines() or [type(e).__name__])[0]
                result.issues.append(RowIssue(rec.source, rec.row, None, f"the chat template failed: {first}"))
                continue
            if isinstance(ex, RowIssue):
                result.issues.append(ex)
            else:
                result.examples.append(ex)
        return result

    def _render_one(self, rec, result: RenderResult):
        if isinstance(rec, SFTRecord):
            prompt = self._fit_prompt(self._prompt_ids(rec.prompt), result)
            if len(prompt) >= self.max_length:
                return self._prompt_too_long(rec, len(prompt))
            completion = self._fit_response(len(prompt), self._response(rec.prompt, rec.completion), result)
            if not any(completion.mask):
                return RowIssue(rec.source, rec.row, "completion", "no response token is left to train on after truncation")
            return TokenizedSFT(prompt, completion, rec.row, source=rec.source)
        if isinstance(rec, PairRecord):
            got = self._prompted(rec, rec.prompt, {"chosen": rec.chosen, "rejected": rec.rejected}, result)
            if isinstance(got, RowIssue):
                return got
            prompt, (chosen, rejected) = got
            gap = None if rec.score_chosen is None or rec.score_rejected is None else rec.score_chosen - rec.score_rejected
            return TokenizedPair(prompt, chosen, rejected, rec.row, strength=rec.strength, score_gap=gap,
                                 source=rec.source)
        if isinstance(rec, JointRecord):
            got_c = self._prompted(rec, rec.prompt_chosen, {"chosen": rec.chosen}, result, "prompt_chosen")
            got_r = self._prompted(rec, rec.prompt_rejected, {"rejected": rec.rejected}, result, "prompt_rejected")
            for got in (got_c, got_r):
                if isinstance(got, RowIssue):
                    return got
            return TokenizedPair(got_c[0], got_c[1][0], got_r[1][0], rec.row, rejected_prompt_ids=got_r[0],
                                 source=rec.source)
        if isinstance(rec, UnpairedRecord):
            got = self._prompted(rec, rec.prompt, {"completion": rec.completion}, result)
            return got if isinstance(got, RowIssue) else TokenizedUnpaired(got[0], got[1][0], rec.label, rec.row,
                                                                           source=rec.source)
        if isinstance(rec, RankedRecord):
            texts = {f"completions[{i}]": c for i, c in enumerate(rec.completions)}
            got = self._prompted(rec, rec.prompt, texts, result)
            if isinstance(got, RowIssue):
                return got
            return TokenizedRanked(got[0], tuple(got[1]), tuple(rec.scores), rec.row, source=rec.source)
        if isinstance(rec, NegativeRecord):
            got = self._prompted(rec, rec.prompt, {"rejected": rec.rejected}, result)
            return got if isinstance(got, RowIssue) else TokenizedNegative(got[0], got[1][0], rec.row, source=rec.source)
        raise TypeError(f"cannot render {type(rec).__name__}")

    def _prompted(self, rec, prompt_text: Text, responses: dict[str, Text], result: RenderResult,
                  prompt_field: str = "prompt") -> tuple[tuple[int, ...], list[Response]] | RowIssue:
        """A prompt's ids and its responses fitted within the limits, or the row's issue."""
        prompt = self._fit_prompt(self._prompt_ids(prompt_text), result)
        if len(prompt) >= self.max_length:
            issue = self._prompt_too_long(rec, len(prompt))
            return RowIssue(issue.source, issue.row, prompt_field, issue.message)
        fitted = []
        for name, text in responses.items():
            resp = self._fit_response(len(prompt), self._response(prompt_text, text), result)
            if not any(resp.mask):
                return RowIssue(rec.source, rec.row, name, "no response token is left after truncation")
            fitted.append(resp)
        return prompt, fitted

    def response_ids(self, text: str) -> Response:
        """A plain-text response as it is trained on (text then EOS); used for generated samples."""
        return self._text_response(text)


class _TemplateError(Exception):
    pass

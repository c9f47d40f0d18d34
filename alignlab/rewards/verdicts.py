"""Judge prompts and verdicts: templates with placeholders, and parsers that read a verdict out of
free text.

Templates follow MT-Bench ("Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena", Zheng et al.
2023): a pairwise judge ends with ``[[A]]``, ``[[B]]`` or ``[[C]]`` (a tie), a pointwise judge with
``Rating: [[N]]``. Judges do not always obey, so ``parse_pairwise`` and ``parse_rating`` also read
labelled statements ("Verdict: B"), comparisons ("Response 2 is better", "A > B"), a bare letter
on the first or last line, fractions ("7/10"); text they cannot read gives ``None``, never an error.
"""

from __future__ import annotations

import re
from typing import Literal

from alignlab.errors import UserError

Verdict = Literal["A", "B", "tie"]

# ---------------------------------------------------------------------------------------------
# Templates
# ---------------------------------------------------------------------------------------------

PAIRWISE_TEMPLATE = """\
Act as an impartial judge. Compare the two responses below, given by two AI assistants to the \
user question shown, and decide which one follows the user's instructions and answers the \
question better: consider helpfulness, relevance, accuracy, depth and level of detail. Do not \
let the order in which the responses are shown, their length, or the assistants' names affect \
your decision. Explain your comparison briefly, then output your final verdict in exactly this \
format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, and "[[C]]" for a tie.

[User Question]
{prompt}

[The Start of Assistant A's Answer]
{first}
[The End of Assistant A's Answer]

[The Start of Assistant B's Answer]
{second}
[The End of Assistant B's Answer]"""

POINTWISE_TEMPLATE = """\
Act as an impartial judge. Evaluate the quality of the response below, given by an AI \
assistant to the user question shown: consider helpfulness, relevance, accuracy, depth and \
level of detail. Explain your evaluation briefly, then rate the response on a scale of {low} to \
{high} in exactly this format: "Rating: [[N]]", where N is a number from {low} to {high}.

[User Question]
{prompt}

[The Start of Assistant's Answer]
{response}
[The End of Assistant's Answer]"""

_PLACEHOLDER = re.compile(r"\{(prompt|first|second|response|low|high)\}")
_NEEDS = {"pairwise": ("prompt", "first", "second"), "pointwise": ("prompt", "response")}
_FORBIDS = {"pairwise": ("response", "low", "high"), "pointwise": ("first", "second")}


def check_template(template: str, kind: Literal["pairwise", "pointwise"]) -> str:
    """``template`` unchanged; a UserError when it lacks a placeholder ``kind`` needs or holds one of
    the other kind's.

    Pairwise templates need ``{prompt}``, ``{first}``, ``{second}``; pointwise templates need
    ``{prompt}``, ``{response}`` and may use ``{low}``, ``{high}`` (the rating scale).
    """
    if not isinstance(template, str):
        raise UserError(f"{kind} judge template must be a string, got {type(template).__name__}")
    present = set(_PLACEHOLDER.findall(template))
    missing = [p for p in _NEEDS[kind] if p not in present]
    if missing:
        needs = ", ".join("{" + p + "}" for p in _NEEDS[kind])
        raise UserError(f"{kind} judge template is missing {', '.join('{' + p + '}' for p in missing)} "
                        f"(it needs {needs})")
    wrong = [p for p in _FORBIDS[kind] if p in present]
    if wrong:
        raise UserError(f"{kind} judge template has {', '.join('{' + p + '}' for p in wrong)}, "
                        f"which a {kind} judge does not fill")
    return template


def render(template: str, **values: object) -> str:
    """Fill ``{name}`` placeholders in one pass.

    Only the judge placeholders are replaced; every other brace stays as written (no ``{{``
    escaping needed), and braces inside the filled-in texts are never read as placeholders.
    """
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), template)


# ---------------------------------------------------------------------------------------------
# Verdict parsing
# ---------------------------------------------------------------------------------------------

# Names of a response slot, matched in lowercased text. The first alternatives ("response 2",
# "assistant a", "(b)", "the first one") are unambiguous anywhere; a bare letter is only accepted
# where the surrounding pattern says a verdict is being given.
_NAMED = r"(?:assistant|response|answer|option|output|candidate|model)\s*[\(\[]?\s*[ab12]\b[\)\]]?"
_ORDINAL = r"(?:the\s+)?(?:first|second)\b(?:\s+(?:response|answer|one|assistant|option|output))?"
_PAREN = r"[\(\[]\s*[ab12]\s*[\)\]]"
_STRICT_SLOT = rf"(?:{_NAMED}|{_ORDINAL}|{_PAREN})"
_SLOT = rf"(?:{_STRICT_SLOT}|\b[ab]\b)"
# Where a verdict is being announced, a bare letter must end the clause ("Answer: B.", "the verdict
# is a because ..."), so that "the answer is a bit long" or "prefer a concise answer" name no slot.
_END = r"(?=\s*(?:$|[.,;:!()\-\n]|(?:because|since|as)\b))"
_END_SLOT = rf"(?:{_STRICT_SLOT}|[ab]{_END})"
_TIE = r"(?:(?:a\s+)?tie|draw|neither|equal|c|\(c\))"

_BRACKET = re.compile(r"\[\[\s*(a|b|c|tie)\s*\]\]")
_BRACKET_CMP = re.compile(r"\[\[\s*(a|b)\s*(>>?|=|<<?)\s*(a|b)\s*\]\]")  # arena-hard style [[A>B]]
_LABEL = r"\b(?:final\s+)?(?:verdict|answer|decision|choice|winner|judge?ment|result|output|preference|conclusion)\b"
# "Verdict: B", "The answer is (a).", "final verdict - tie", "Output (b)": a label, then a slot that
# ends the clause ("Answer (a) lists three steps" names a response, it gives no verdict).
_LABELLED = re.compile(rf"{_LABEL}\s*(?:is\b|[:=\-–—])?\s*(?:that\s+)?(?:the\s+)?(?P<v>{_TIE}|{_SLOT}){_END}")
_ADVERB = r"(?:(?:clearly|much|slightly|significantly|far|somewhat|overall|definitely|marginally|considerably|"\
          r"generally|the|a\s+bit)\s+)*"
_GOOD = r"(?:better|superior|preferred|preferable|stronger|more\s+(?:helpful|accurate|correct|relevant)|" \
        r"the\s+winner|best)"
_BAD = r"(?:worse|inferior|weaker|less\s+(?:helpful|accurate|correct|relevant)|worst)"
_COPULA = r"(?:is|was|seems|looks|appears|would\s+be)"
_IS_GOOD = re.compile(rf"(?P<v>{_SLOT})\s+{_COPULA}\s+(?:to\s+be\s+)?{_ADVERB}{_GOOD}\b")
_IS_BAD = re.compile(rf"(?P<v>{_SLOT})\s+{_COPULA}\s+{_ADVERB}{_BAD}\b")
_WINS = re.compile(rf"(?P<v>{_SLOT})\s+(?:wins|outperforms|is\s+the\s+winner)\b")
_BETTER_IS = re.compile(rf"\b(?:better|best|stronger|preferred|winning|superior)\s+"
                        rf"(?:response|answer|one|assistant|option|output|choice)?\s*(?:is\b|[:=])\s*(?P<v>{_END_SLOT})")
_PREFER = re.compile(rf"\b(?:prefer|prefers|preferred|choose|chose|pick|picked|select|selected|favou?r(?:\s+of)?|go\s+with|"
                     rf"recommend)\s+(?:the\s+)?(?P<v>{_END_SLOT})")
_COMPARE = re.compile(r"\b(a|b)\s*(>>?|<<?)\s*(a|b)\b")
_TIE_PHRASE = re.compile(r"\b(?:it'?s\s+a\s+tie|is\s+a\s+tie|(?:both|the\s+two)\s+(?:responses?\s+|answers?\s+|"
                         r"assistants?\s+)?(?:are|were)\s+(?:equally|similarly|about\s+equally)\b|"
                         r"equally\s+(?:good|bad|helpful|strong|weak|valid|accurate)|"
                         r"neither\s+(?:response\s+|answer\s+|assistant\s+|one\s+)?is\s+(?:clearly\s+)?better|"
                         r"no\s+clear\s+winner)")
# A line that is only a verdict ("B", "(a)", "Response 2.", "Tie"), or a verdict opening the text
# and followed by punctuation ("A. Because ...", "(b) - it answers ...").
_BARE_LINE = re.compile(rf"^\s*(?P<v>{_STRICT_SLOT}|[ab]|tie|c|\(c\))\s*[.!]?\s*$")
_LEADING = re.compile(r"^\s*(?P<v>[\(\[]\s*[abc]\s*[\)\]]|[abc])\s*(?:[.,;!\-–—)]|$)")


def _normalize(text: str) -> str:
    """Lowercase, markdown emphasis and quotes removed, runs of spaces collapsed (newlines kept)."""
    text = re.sub(r"[*_`#\"“”]", "", text.lower())
    return re.sub(r"[ \t\r\f\v]+", " ", text)


def _slot(phrase: str) -> Verdict | None:
    """The slot a matched phrase names: "A" for a/1/first, "B" for b/2/second, "tie" for a tie."""
    p = phrase.strip()
    if re.match(r"(?:a\s+)?(?:tie|draw|neither|equal)\b|\(?c\)?$", p):
        return "tie"
    if re.search(r"\bfirst\b", p):
        return "A"
    if re.search(r"\bsecond\b", p):
        return "B"
    letters = re.findall(r"(?<![a-z0-9])([ab12])(?![a-z0-9])", p)
    return {"a": "A", "1": "A", "b": "B", "2": "B"}[letters[-1]] if letters else None


def flip(v: Verdict | None) -> Verdict | None:
    return {"A": "B", "B": "A", "tie": "tie", None: None}[v]


def _last(matches: list[tuple[int, Verdict | None]]) -> Verdict | None:
    found = [m for m in matches if m[1] is not None]
    return max(found, key=lambda m: m[0])[1] if found else None


def parse_pairwise(text: str) -> Verdict | None:
    """The verdict of a pairwise judge output: "A" (the response in slot A/1/first is better), "B",
    "tie", or None when the text gives no readable verdict.

    Case, markdown emphasis and extra whitespace are ignored. When several statements are found,
    the strongest kind wins, and within a kind the last one (the judge's final word):

    1. a bracketed verdict: "[[A]]", "[[B]]", "[[C]]" (tie, MT-Bench), "[[tie]]", "[[A>B]]", "[[B>>A]]",
       "[[A=B]]";
    2. a labelled statement: "Verdict: B", "Final answer: tie", "The answer is (a)", "Output (b)";
    3. a bare verdict: a last (else first) line that is only "A", "(b)", "Response 2", "the second
       one", "Tie", or a letter opening the text before punctuation ("A. Because ..."); a line
       ending in a colon ("Assistant A:") is a heading, not a verdict;
    4. a comparison: "Response 2 is better", "Assistant A is clearly superior", "I prefer the first",
       "B is worse" (so A), "The better response is B", "A > B", "Both are equally good" (tie).
    """
    if not isinstance(text, str):
        return None
    t = _normalize(text)
    for pattern in (_BRACKET_CMP, _BRACKET):
        found = list(pattern.finditer(t))
        if found:
            m = found[-1]
            if pattern is _BRACKET:
                return _slot(m.group(1))
            left, op, right = m.groups()
            if op == "=" or left == right:
                return "tie"
            winner = left if op.startswith(">") else right
            return "A" if winner == "a" else "B"
    if (v := _last([(m.start(), _slot(m.group("v"))) for m in _LABELLED.finditer(t)])) is not None:
        return v
    lines = [line.strip(" .!-–—>") for line in t.splitlines() if line.strip(" .!-–—>")]
    for line in (lines[-1:] + lines[:1]) if lines else []:  # the last line, then the first
        if (m := _BARE_LINE.match(line)) is not None and (v := _slot(m.group("v"))) is not None:
            return v
    if (m := _LEADING.match(t)) is not None:
        return _slot(m.group("v"))
    compared: list[tuple[int, Verdict | None]] = []
    for p in (_IS_GOOD, _WINS, _BETTER_IS, _PREFER):
        compared += [(m.start(), _slot(m.group("v"))) for m in p.finditer(t)]
    compared += [(m.start(), flip(_slot(m.group("v")))) for m in _IS_BAD.finditer(t)]
    for m in _COMPARE.finditer(t):
        left, op, right = m.groups()
        if left != right:
            winner = left if op.startswith(">") else right
            compared.append((m.start(), "A" if winner == "a" else "B"))
    compared += [(m.start(), "tie") for m in _TIE_PHRASE.finditer(t)]
    return _last(compared)


_NUM = r"(-?\d+(?:\.\d+)?)"
_OUT_OF = rf"\s*(?:/|out\s+of)\s*{_NUM}"  # "/10", "out of 10"
_RATING_BRACKET = re.compile(rf"\[\[\s*{_NUM}(?:{_OUT_OF})?\s*\]\]")
_RATING_LABEL = re.compile(rf"\b(?:rating|score|grade|overall)\s*(?:is|of|:|=|-)?\s*\[?\s*{_NUM}\s*\]?"
                           rf"(?:{_OUT_OF})?")
_RATING_GIVE = re.compile(rf"\b(?:give|rate|rated|giving)\s+(?:it|this|the\s+response|the\s+answer)?\s*"
                          rf"(?:an?\s+|as\s+)?{_NUM}(?:{_OUT_OF})?")
_RATING_FRACTION = re.compile(rf"(?<![\w.]){_NUM}{_OUT_OF}")
_RATING_ALONE = re.compile(rf"^\s*{_NUM}\s*\.?\s*$")


def parse_rating(text: str, low: float = 1, high: float = 10) -> float | None:
    """The rating in a pointwise judge output, or None when there is none or it lies outside
    ``[low, high]``.

    Kinds, strongest first, the last statement of the strongest kind found deciding: "[[8.5]]" /
    "Rating: [[7]]" / "[[7/10]]"; "Rating: 7", "Score = 6/10", "I would give it an 8"; a fraction
    "7/10" or "7 out of 10" whose denominator is ``high`` (another denominator is not our scale and
    is not read); a text that is only a number. The chosen rating out of range gives None; a weaker
    kind is not consulted then.
    """
    if not isinstance(text, str):
        return None
    t = _normalize(text)
    for pattern in (_RATING_BRACKET, _RATING_LABEL, _RATING_GIVE, _RATING_FRACTION, _RATING_ALONE):
        found = list(pattern.finditer(t))
        if pattern is _RATING_FRACTION:
            found = [m for m in found if float(m.group(2)) == high]
        if not found:
            continue
        groups = found[-1].groups()
        value = float(groups[0])
        if len(groups) > 1 and groups[1] is not None and float(groups[1]) != high:
            return None  # "4/5" on a 1-10 scale: a rating, but not on our scale
        return value if low <= value <= high else None
    return None

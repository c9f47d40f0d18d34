"""Sentence-level BLEU against one or more reference answers, as a reward (BLEUBERI).

Chang et al. 2025, "BLEUBERI: BLEU is a surprisingly effective reward for instruction following"
(ALGORITHMS.md 6.3, 8.6): the reward of a response is its smoothed sentence BLEU against the
prompt's references, in [0, 1]; an empty response gets 0. BLEU here is sacrebleu's
``sentence_bleu`` (default: exponential smoothing, 13a tokenization, effective n-gram order)
divided by 100, so the reward equals ``sacrebleu.sentence_bleu(response, refs).score / 100``.
BLEUBERI itself computes the same statistic through Hugging Face ``evaluate``'s BLEU with
``smooth=True`` (add-one smoothing); ``smooth_method="add-k"`` with ``smooth_value=1`` comes closest.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from alignlab.errors import UserError
from alignlab.rewards.base import Scorer, check_lengths

SMOOTH_METHODS = ("exp", "floor", "add-k", "none")


class BleuReward(Scorer):
    """BLEU of each response against its prompt's references (a mapping prompt → references, or
    a function of the prompt). A prompt without references is a UserError naming it."""

    def __init__(self, references: Mapping[str, Sequence[str]] | Callable[[str], Sequence[str]],
                 smooth_method: str = "exp", smooth_value: float | None = None, tokenize: str = "13a",
                 lowercase: bool = False, name: str = "bleu"):
        try:
            import sacrebleu  # noqa: F401
        except ImportError:
            raise UserError("the BLEU reward needs sacrebleu: pip install sacrebleu") from None
        if smooth_method not in SMOOTH_METHODS:
            raise UserError(f"bleu: smooth_method must be one of {', '.join(SMOOTH_METHODS)}, got '{smooth_method}'")
        self.references = references
        self.kwargs = {"smooth_method": smooth_method, "smooth_value": smooth_value, "tokenize": tokenize,
                       "lowercase": lowercase}
        self.name = name

    @classmethod
    def from_file(cls, path: str | Path, **kwargs) -> BleuReward:
        """References from a JSONL file of ``{"prompt": ..., "references": [...]}`` rows (a single
        ``"reference"`` string also works); a bad row is a UserError naming the file and line."""
        refs: dict[str, list[str]] = {}
        p = Path(path)
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"bleu references '{path}': cannot read: {e}") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}, line {n}: not valid JSON: {e.msg}") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                raise UserError(f"{path}, line {n}, field 'prompt': expected an object with a string prompt")
            given = row.get("references", row.get("reference"))
            given = [given] if isinstance(given, str) else given
            if not isinstance(given, list) or not given or not all(isinstance(r, str) for r in given):
                raise UserError(f"{path}, line {n}, field 'references': expected a non-empty list of strings")
            if not all(r.strip() for r in given):
                raise UserError(f"{path}, line {n}, field 'references': an empty reference (every answer would "
                                "score 0 against it); give its text or leave it out")
            refs.setdefault(row["prompt"], []).extend(given)
        if not refs:
            raise UserError(f"bleu references '{path}': no rows")
        return cls(refs, name=f"bleu:{path}", **kwargs)

    def refs_for(self, prompt: str) -> list[str]:
        refs = self.references(prompt) if callable(self.references) else self.references.get(prompt)
        if not refs:
            raise UserError(f"{self.name}: {_no_refs(prompt)}")
        return list(refs)

    def prompt_problem(self, prompt: str) -> str | None:
        """A prompt the references mapping lacks (a function of the prompt is asked when scoring)."""
        if callable(self.references) or self.references.get(prompt):
            return None
        return _no_refs(prompt)

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        import sacrebleu

        check_lengths(self.name, prompts, responses)
        out = []
        for p, r in zip(prompts, responses, strict=True):
            refs = self.refs_for(p)
            out.append(0.0 if not r.strip() else sacrebleu.sentence_bleu(r, refs, **self.kwargs).score / 100.0)
        return out


def _no_refs(prompt: str) -> str:
    return f"no reference answer for the prompt {prompt[:80]!r}"

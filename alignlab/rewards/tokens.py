"""Token ids of (prompt, response) pairs for scorers that run a model, rendered as training does.

A plain-string prompt is tokenized with the tokenizer's special tokens, and the response follows
with EOS (an encoder's separator when it has no EOS), exactly as ``data/render.py`` renders
training data; so a reward model or a DPO policy scores text the way it was trained on it. A
prompt too long for ``max_length`` keeps its end; a response that does not fit is cut at the end.
"""

from __future__ import annotations

from collections.abc import Sequence

from alignlab.data.records import SFTRecord
from alignlab.data.render import Renderer, Response
from alignlab.errors import UserError

MIN_RESPONSE_ROOM = 16  # tokens a long prompt leaves for the response


def render_pairs(tokenizer, prompts: Sequence[str], responses: Sequence[str],
                 max_length: int) -> list[tuple[tuple[int, ...], Response]]:
    """(prompt ids, response) per pair, each within ``max_length`` tokens."""
    keep = max(1, max_length - MIN_RESPONSE_ROOM)
    renderer = Renderer(tokenizer, max_length, keep)
    records = [SFTRecord(p, r, source="scorer input", row=i + 1)
               for i, (p, r) in enumerate(zip(prompts, responses, strict=True))]
    for rec in records:
        if not isinstance(rec.prompt, str) or not isinstance(rec.completion, str):
            raise UserError(f"scorer input, item {rec.row}: prompts and responses must be strings")
    result = renderer.render(records)
    if result.issues:
        raise UserError(str(result.issues[0]))
    return [(e.prompt_ids, e.completion) for e in result.examples]

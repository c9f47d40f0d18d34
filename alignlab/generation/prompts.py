"""How a prompt becomes the token ids a model sees before its response (every backend's
``prompt_ids``), and ``RendersPrompts``: the part of the ``Generator`` protocol every backend
shares (render the prompts, then sample from their token ids)."""

from __future__ import annotations

from collections.abc import Sequence

from alignlab.data.records import Text, is_conversation
from alignlab.errors import UserError


def prompt_ids(tokenizer, prompt: Text) -> tuple[int, ...]:
    """A conversation is rendered with the tokenizer's chat template and the assistant turn
    opened; a plain string is tokenized with the tokenizer's special tokens. An empty prompt
    becomes the beginning-of-sequence token (the end-of-sequence token where there is none)."""
    if is_conversation(prompt):
        if tokenizer.chat_template is None:
            raise UserError("the prompts are conversations but the tokenizer has no chat template")
        text = tokenizer.apply_chat_template([m.as_dict() for m in prompt], tokenize=False,
                                             add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(prompt, add_special_tokens=True)["input_ids"] if prompt else []
    if not ids:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = [start]
    return tuple(ids)


class RendersPrompts:
    """``prompt_ids`` and ``generate`` for a backend with a tokenizer ``tok`` and a
    ``generate_ids(contexts, n, params, start)``; ``_bar`` for one with a ``progress`` label."""

    def _bar(self, total: int):
        """A progress bar of sequences done, labelled ``self.progress`` (off when it is None)."""
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=self.progress, unit="seq", leave=False, dynamic_ncols=True,
                    disable=self.progress is None)

    def prompt_ids(self, prompt: Text) -> tuple[int, ...]:
        """Token ids of ``prompt`` as the model should see it before its response."""
        return prompt_ids(self.tok, prompt)

    def generate(self, prompts: Sequence[Text], n: int, params, start: int = 0) -> list:
        """``n`` samples for each prompt, in prompt order (``Generator.generate``)."""
        return self.generate_ids([self.prompt_ids(p) for p in prompts], n, params, start)

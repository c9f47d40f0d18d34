"""Renderer: records to token ids with the tiny byte-level tokenizer and its chat template.

The tiny tokenizer has one token per byte plus special tokens, and the chat template renders each
message as ``<|role|>content<|end|>``, with ``<|assistant|>`` as the generation prompt. ``<|end|>``
is also EOS.
"""

from __future__ import annotations

import pytest

from alignlab.data.records import Message, PairRecord, SFTRecord
from alignlab.data.render import Renderer, TokenizedPair, TokenizedSFT
from alignlab.errors import RowIssue, UserError
from alignlab.models import build_tiny_tokenizer


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()


def decode(tok, ids) -> str:
    return tok.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)


def byte_ids(tok, text: str) -> tuple[int, ...]:
    """The tiny tokenizer's ids of a plain string: one byte-level token per UTF-8 byte."""
    ids = tuple(tok(text, add_special_tokens=False)["input_ids"])
    assert len(ids) == len(text.encode("utf-8"))
    return ids


def template(tok, messages, add_generation_prompt: bool = False) -> str:
    return tok.apply_chat_template(
        [m.as_dict() for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
    )


def user(text: str) -> Message:
    return Message("user", text)


def assistant(text: str) -> Message:
    return Message("assistant", text)


def render_one(renderer: Renderer, record):
    res = renderer.render([record])
    assert res.issues == []
    assert len(res.examples) == 1
    return res.examples[0]


# -- plain text ----------------------------------------------------------------------------------

def test_plain_pair_prompt_tokens_and_responses_end_with_eos(tok):
    ex = render_one(Renderer(tok, max_length=64), PairRecord("Say hi:", " hi", " bye now", source="s", row=7))
    assert isinstance(ex, TokenizedPair)
    assert ex.row == 7
    assert ex.prompt_ids == byte_ids(tok, "Say hi:")
    assert decode(tok, ex.prompt_ids) == "Say hi:"
    assert ex.chosen.ids == byte_ids(tok, " hi") + (tok.eos_token_id,)
    assert ex.rejected.ids == byte_ids(tok, " bye now") + (tok.eos_token_id,)
    assert ex.chosen.mask == (1,) * 4
    assert ex.rejected.mask == (1,) * 9
    assert decode(tok, ex.chosen.ids) == " hi<|end|>"


def test_plain_sft_completion_ends_with_eos(tok):
    ex = render_one(Renderer(tok, max_length=64), SFTRecord("Q: 1+1?", " A: 2", row=3))
    assert isinstance(ex, TokenizedSFT)
    assert ex.row == 3
    assert ex.prompt_ids == byte_ids(tok, "Q: 1+1?")
    assert ex.completion.ids == byte_ids(tok, " A: 2") + (tok.eos_token_id,)
    assert ex.completion.mask == (1,) * 6


def test_non_ascii_text_is_one_token_per_byte(tok):
    ex = render_one(Renderer(tok, max_length=64), PairRecord("café", "é", "e"))
    assert len(ex.prompt_ids) == 5
    assert decode(tok, ex.prompt_ids) == "café"
    assert len(ex.chosen) == 3  # two bytes + EOS
    assert decode(tok, ex.chosen.ids) == "é<|end|>"


@pytest.mark.parametrize("record", [PairRecord("", "yes", "no"), SFTRecord("", "text")])
def test_empty_plain_prompt_gets_the_bos_start_token(tok, record):
    ex = render_one(Renderer(tok, max_length=64), record)
    assert tok.bos_token_id is not None
    assert ex.prompt_ids == (tok.bos_token_id,)


def test_empty_conversational_prompt_gets_the_bos_start_token(tok):
    ex = render_one(Renderer(tok, max_length=64), PairRecord((), (assistant("a"),), (assistant("b"),)))
    assert ex.prompt_ids == (tok.bos_token_id,)


# -- conversations -------------------------------------------------------------------------------

def test_conversational_pair_prompt_and_responses(tok):
    prompt = (Message("system", "Be brief."), user("What is 2+2?"))
    chosen = (assistant("4"),)
    rejected = (assistant("five"),)
    ex = render_one(Renderer(tok, max_length=128), PairRecord(prompt, chosen, rejected))

    assert decode(tok, ex.prompt_ids) == template(tok, prompt)
    assert decode(tok, ex.prompt_ids) == "<|system|>Be brief.<|end|><|user|>What is 2+2?<|end|>"

    opener = tok.convert_tokens_to_ids("<|assistant|>")
    end = tok.convert_tokens_to_ids("<|end|>")
    assert decode(tok, ex.chosen.ids) == "<|assistant|>4<|end|>"
    assert ex.chosen.ids == (opener,) + byte_ids(tok, "4") + (end,)
    assert ex.chosen.mask == (0, 1, 1)
    assert decode(tok, ex.rejected.ids) == "<|assistant|>five<|end|>"
    assert ex.rejected.mask == (0, 1, 1, 1, 1, 1)

    # prompt + response is exactly the template's rendering of the whole conversation.
    assert decode(tok, ex.prompt_ids + ex.chosen.ids) == template(tok, prompt + chosen)
    assert decode(tok, ex.prompt_ids + ex.rejected.ids) == template(tok, prompt + rejected)


def test_multi_turn_completion_masks_user_turns(tok):
    prompt = (user("Hi"),)
    completion = (assistant("Hey."), user("Bye"), assistant("Ciao!"))
    ex = render_one(Renderer(tok, max_length=128), SFTRecord(prompt, completion))
    c = ex.completion

    assert decode(tok, c.ids) == "<|assistant|>Hey.<|end|><|user|>Bye<|end|><|assistant|>Ciao!<|end|>"
    expected_mask = (
        (0,)  # <|assistant|>
        + (1,) * len("Hey.") + (1,)  # content + <|end|>
        + (0,) + (0,) * len("Bye") + (0,)  # the user turn, opener, content and <|end|>
        + (0,)  # <|assistant|>
        + (1,) * len("Ciao!") + (1,)
    )
    assert c.mask == expected_mask
    trained = [i for i, m in zip(c.ids, c.mask, strict=True) if m]
    assert decode(tok, trained) == "Hey.<|end|>Ciao!<|end|>"
    assert decode(tok, ex.prompt_ids + c.ids) == template(tok, prompt + completion)


def test_multi_turn_pair_concatenation_equals_template(tok):
    prompt = (Message("system", "s"), user("u1"), assistant("a1"), user("u2"))
    chosen = (assistant("good"), user("more?"), assistant("yes"))
    rejected = (assistant("bad"),)
    ex = render_one(Renderer(tok, max_length=256), PairRecord(prompt, chosen, rejected))
    assert decode(tok, ex.prompt_ids) == template(tok, prompt)
    assert decode(tok, ex.prompt_ids + ex.chosen.ids) == template(tok, prompt + chosen)
    assert decode(tok, ex.prompt_ids + ex.rejected.ids) == template(tok, prompt + rejected)
    assert sum(ex.chosen.mask) == len("good") + 1 + len("yes") + 1


def test_empty_conversational_prompt_masks_the_assistant_opener(tok):
    ex = render_one(Renderer(tok, max_length=64), SFTRecord((), (assistant("hi"),)))
    assert decode(tok, ex.completion.ids) == "<|assistant|>hi<|end|>"
    assert ex.completion.mask == (0, 1, 1, 1)


def test_template_that_is_not_prefix_wise_is_a_row_issue(tok):
    reversed_tok = build_tiny_tokenizer()
    reversed_tok.chat_template = (
        "{% for message in messages|reverse %}"
        "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
    )
    records = [PairRecord((user("q"),), (assistant("a"),), (assistant("b"),), source="f.jsonl", row=4)]
    res = Renderer(reversed_tok, max_length=64).render(records)
    assert res.examples == []
    assert len(res.issues) == 1
    issue = res.issues[0]
    assert (issue.source, issue.row, issue.field) == ("f.jsonl", 4, None)
    assert "prefix" in issue.message


# -- missing chat template -----------------------------------------------------------------------

@pytest.fixture
def tok_without_template():
    t = build_tiny_tokenizer()
    t.chat_template = None
    return t


def test_no_chat_template_with_empty_conversational_prompt_is_a_user_error(tok_without_template):
    record = PairRecord((), (assistant("a"),), (assistant("b"),))
    with pytest.raises(UserError, match="chat template"):
        Renderer(tok_without_template, max_length=64).render([record])


@pytest.mark.parametrize("record", [
    PairRecord((user("q"),), (assistant("a"),), (assistant("b"),)),
    SFTRecord((user("q"),), (assistant("a"),)),
])
def test_no_chat_template_with_conversational_prompt_is_a_user_error(tok_without_template, record):
    with pytest.raises(UserError, match="chat template"):
        Renderer(tok_without_template, max_length=64).render([record])


def test_no_chat_template_is_fine_for_plain_text(tok_without_template):
    ex = render_one(Renderer(tok_without_template, max_length=64), PairRecord("p", "c", "r"))
    assert ex.chosen.ids == byte_ids(tok_without_template, "c") + (tok_without_template.eos_token_id,)


# -- length limits -------------------------------------------------------------------------------

def test_max_length_below_two_is_a_user_error(tok):
    with pytest.raises(UserError, match="max_length"):
        Renderer(tok, max_length=1)


def test_max_prompt_length_keeps_the_end_of_the_prompt_and_counts(tok):
    renderer = Renderer(tok, max_length=64, max_prompt_length=4)
    res = renderer.render([
        PairRecord("abcdefgh", "x", "y"),  # 8 tokens -> "efgh", counted once for the pair
        PairRecord("wxyz", "x", "y"),  # exactly 4: untouched, not counted
        SFTRecord("0123456789", "z"),  # 10 tokens -> "6789"
    ])
    assert res.issues == []
    assert [decode(tok, e.prompt_ids) for e in res.examples] == ["efgh", "wxyz", "6789"]
    assert res.truncated_prompts == 2
    assert res.truncated_responses == 0
    assert "2 prompts truncated" in res.summary()


def test_max_prompt_length_on_a_conversation_keeps_its_end(tok):
    prompt = (user("hello"),)  # <|user|> h e l l o <|end|> : 7 tokens
    res = Renderer(tok, max_length=64, max_prompt_length=3).render([SFTRecord(prompt, (assistant("k"),))])
    assert decode(tok, res.examples[0].prompt_ids) == "lo<|end|>"
    assert res.truncated_prompts == 1


def test_long_response_is_cut_at_the_end_and_counted(tok):
    """max_length 8, prompt "ab" (2 tokens): room for 6 response tokens.

    chosen "abcdefghij" + EOS = 11 tokens -> "abcdef", EOS lost; rejected "xy" + EOS = 3 fits.
    """
    res = Renderer(tok, max_length=8).render([PairRecord("ab", "abcdefghij", "xy")])
    ex = res.examples[0]
    assert ex.chosen.ids == byte_ids(tok, "abcdef")
    assert tok.eos_token_id not in ex.chosen.ids
    assert ex.chosen.mask == (1,) * 6
    assert ex.rejected.ids == byte_ids(tok, "xy") + (tok.eos_token_id,)
    assert len(ex.prompt_ids) + len(ex.chosen) == 8
    assert res.truncated_responses == 1
    assert res.truncated_prompts == 0
    assert res.summary() == "1 responses truncated to fit max_length"


def test_both_responses_cut_count_twice(tok):
    res = Renderer(tok, max_length=5).render([PairRecord("ab", "cdef", "ghij")])
    ex = res.examples[0]
    assert decode(tok, ex.chosen.ids) == "cde"
    assert decode(tok, ex.rejected.ids) == "ghi"
    assert res.truncated_responses == 2


def test_response_that_exactly_fits_is_not_counted(tok):
    res = Renderer(tok, max_length=5).render([PairRecord("ab", "cd", "e")])  # 2 + 3 = 5
    assert res.examples[0].chosen.ids == byte_ids(tok, "cd") + (tok.eos_token_id,)
    assert res.truncated_responses == 0
    assert res.summary() == ""


def test_prompt_that_leaves_no_room_is_a_row_issue_and_nothing_else_is_dropped(tok):
    records = [
        PairRecord("ab", "c", "d", source="train.jsonl", row=1),
        PairRecord("abcdef", "c", "d", source="train.jsonl", row=2),  # 6 tokens = max_length
        PairRecord("abcde", "c", "d", source="train.jsonl", row=3),  # 5 tokens: room for 1
        SFTRecord("abcdefg", "c", source="train.jsonl", row=4),  # 7 tokens
    ]
    res = Renderer(tok, max_length=6).render(records)
    assert [e.row for e in res.examples] == [1, 3]
    assert len(res.issues) == 2
    for issue, row, n in zip(res.issues, (2, 4), (6, 7), strict=True):
        assert isinstance(issue, RowIssue)
        assert (issue.source, issue.row, issue.field) == ("train.jsonl", row, "prompt")
        assert f"{n} tokens" in issue.message
        assert "max_length=6" in issue.message
        assert str(issue).startswith(f"train.jsonl, row {row}, field 'prompt'")
    # Row 3 keeps one token of each response ("c" and "d", EOS cut): two truncations.
    row3 = res.examples[1]
    assert row3.chosen.ids == byte_ids(tok, "c")
    assert row3.rejected.ids == byte_ids(tok, "d")
    assert res.truncated_responses == 2


def test_max_prompt_length_rescues_a_long_prompt(tok):
    res = Renderer(tok, max_length=6, max_prompt_length=3).render([PairRecord("abcdef", "c", "d", row=2)])
    assert res.issues == []
    assert decode(tok, res.examples[0].prompt_ids) == "def"
    assert res.truncated_prompts == 1


def test_conversational_response_cut_to_its_opener_is_a_row_issue(tok):
    """Prompt "<|user|>q<|end|>" is 3 tokens; max_length 4 leaves one token, the masked opener."""
    record = PairRecord((user("q"),), (assistant("a"),), (assistant("b"),), source="c.jsonl", row=9)
    res = Renderer(tok, max_length=4).render([record])
    assert res.examples == []
    assert len(res.issues) == 1
    issue = res.issues[0]
    assert (issue.source, issue.row, issue.field) == ("c.jsonl", 9, "chosen")

"""Converting one raw row into a record: every accepted shape, and every way a row can be bad."""

from __future__ import annotations

import math

import pytest

from alignlab.data.records import Message, PairRecord, SFTRecord
from alignlab.data.rows.formats import check_columns, to_record
from alignlab.errors import RowIssue, UserError, command_line

SRC = "prefs.jsonl"


def convert(data, kind="pair", columns=None, row=7):
    return to_record(data, kind, source=SRC, row=row, columns=columns)


def msg(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def conv(*pairs: tuple[str, str]) -> tuple[Message, ...]:
    return tuple(Message(r, c) for r, c in pairs)


def only_issue(result) -> RowIssue:
    assert isinstance(result, list) and len(result) == 1, result
    issue = result[0]
    assert (issue.source, issue.row) == (SRC, 7)
    return issue


# ---------------------------------------------------------------- pairs


def test_standard_pair():
    rec = convert({"prompt": "2+2=", "chosen": "4", "rejected": "5", "extra": 1})
    assert rec == PairRecord(prompt="2+2=", chosen="4", rejected="5", source=SRC, row=7)


def test_standard_pair_with_empty_prompt():
    assert convert({"prompt": "", "chosen": "a", "rejected": "b"}) == PairRecord("", "a", "b", SRC, 7)


def test_conversational_pair():
    rec = convert(
        {
            "prompt": [msg("system", "be nice"), msg("user", "hi")],
            "chosen": [msg("assistant", "hello")],
            "rejected": [msg("assistant", "go away")],
        }
    )
    assert rec == PairRecord(
        prompt=conv(("system", "be nice"), ("user", "hi")),
        chosen=conv(("assistant", "hello")),
        rejected=conv(("assistant", "go away")),
        source=SRC,
        row=7,
    )
    assert rec.conversational


def test_conversational_pair_extra_message_keys_are_ignored():
    rec = convert(
        {
            "prompt": [{"role": "user", "content": "q", "name": None}],
            "chosen": [msg("assistant", "a")],
            "rejected": [msg("assistant", "b")],
        }
    )
    assert rec.prompt == conv(("user", "q"))


def test_empty_string_prompt_with_conversations_becomes_empty_conversation():
    rec = convert({"prompt": "", "chosen": [msg("assistant", "a")], "rejected": [msg("assistant", "b")]})
    assert rec.prompt == ()


def test_implicit_prompt_strings_cut_at_last_whitespace():
    rec = convert({"chosen": "The capital is Paris", "rejected": "The capital is Pisa"})
    assert rec == PairRecord("The capital is", " Paris", " Pisa", SRC, 7)


def test_implicit_prompt_strings_when_one_is_a_prefix_of_the_other():
    rec = convert({"chosen": "The answer is 4", "rejected": "The answer is 4 or 5"})
    assert (rec.prompt, rec.chosen, rec.rejected) == ("The answer is", " 4", " 4 or 5")


def test_implicit_prompt_strings_without_shared_words():
    rec = convert({"chosen": "Yes", "rejected": "Yesterday"})
    assert (rec.prompt, rec.chosen, rec.rejected) == ("", "Yes", "Yesterday")


def test_implicit_prompt_conversations_use_common_message_prefix():
    shared = [msg("user", "q1"), msg("assistant", "a1"), msg("user", "q2")]
    rec = convert(
        {"chosen": [*shared, msg("assistant", "good")], "rejected": [*shared, msg("assistant", "bad")]}
    )
    assert rec == PairRecord(
        prompt=conv(("user", "q1"), ("assistant", "a1"), ("user", "q2")),
        chosen=conv(("assistant", "good")),
        rejected=conv(("assistant", "bad")),
        source=SRC,
        row=7,
    )


def test_anthropic_hh_single_turn():
    rec = convert(
        {
            "chosen": "\n\nHuman: What is 2+2?\n\nAssistant: It is 4.",
            "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: It is 5.",
        }
    )
    assert rec == PairRecord("\n\nHuman: What is 2+2?\n\nAssistant:", " It is 4.", " It is 5.", SRC, 7)


def test_anthropic_hh_multi_turn_cuts_at_the_final_shared_assistant_marker():
    history = "\n\nHuman: hi\n\nAssistant: Hello!\n\nHuman: a joke?\n\nAssistant:"
    rec = convert({"chosen": history + " Knock knock.", "rejected": history + " No."})
    assert (rec.prompt, rec.chosen, rec.rejected) == (history, " Knock knock.", " No.")


def test_anthropic_hh_response_sharing_its_first_word_is_not_split():
    # The common prefix runs into the responses ("It is"); the cut stays at the marker.
    rec = convert(
        {"chosen": "Human: q\n\nAssistant: It is red.", "rejected": "Human: q\n\nAssistant: It is blue."}
    )
    assert (rec.prompt, rec.chosen, rec.rejected) == ("Human: q\n\nAssistant:", " It is red.", " It is blue.")


def test_anthropic_hh_kept_as_is_when_there_is_a_prompt_column():
    rec = convert({"prompt": "\n\nHuman: q\n\nAssistant:", "chosen": " a", "rejected": " b"})
    assert (rec.prompt, rec.chosen, rec.rejected) == ("\n\nHuman: q\n\nAssistant:", " a", " b")


# ---------------------------------------------------------------- sft


def test_sft_prompt_completion():
    assert convert({"prompt": "Q:", "completion": " A"}, "sft") == SFTRecord("Q:", " A", SRC, 7)


def test_sft_text():
    assert convert({"text": "once upon a time"}, "sft") == SFTRecord("", "once upon a time", SRC, 7)


def test_sft_conversational_prompt_completion():
    rec = convert({"prompt": [msg("user", "q")], "completion": [msg("assistant", "a")]}, "sft")
    assert rec == SFTRecord(conv(("user", "q")), conv(("assistant", "a")), SRC, 7)
    assert rec.conversational


def test_sft_messages_split_at_first_assistant_turn():
    rec = convert(
        {
            "messages": [
                msg("system", "s"),
                msg("user", "q1"),
                msg("assistant", "a1"),
                msg("user", "q2"),
                msg("assistant", "a2"),
            ]
        },
        "sft",
    )
    assert rec == SFTRecord(
        prompt=conv(("system", "s"), ("user", "q1")),
        completion=conv(("assistant", "a1"), ("user", "q2"), ("assistant", "a2")),
        source=SRC,
        row=7,
    )


def test_sft_messages_starting_with_assistant_has_empty_prompt():
    rec = convert({"messages": [msg("assistant", "hello")]}, "sft")
    assert (rec.prompt, rec.completion) == ((), conv(("assistant", "hello")))


# ---------------------------------------------------------------- column mapping


def test_pair_column_mapping():
    cols = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    rec = convert({"question": "q", "good": "g", "bad": "b", "prompt": "ignored"}, columns=cols)
    assert rec == PairRecord("q", "g", "b", SRC, 7)


def test_sft_column_mapping_to_messages():
    rec = convert({"conv": [msg("user", "q"), msg("assistant", "a")]}, "sft", columns={"messages": "conv"})
    assert rec == SFTRecord(conv(("user", "q")), conv(("assistant", "a")), SRC, 7)


def test_missing_mapped_column_names_the_users_column():
    issue = only_issue(
        convert({"question": "q", "good": "g"}, columns={"chosen": "good", "rejected": "worse"})
    )
    assert issue.field == "worse"
    assert "missing column 'worse' (mapped to 'rejected')" in issue.message
    assert "found: question, good" in issue.message


def test_mapped_prompt_column_is_required():
    issue = only_issue(convert({"chosen": "a", "rejected": "b"}, columns={"prompt": "q"}))
    assert issue.field == "q" and "missing column 'q'" in issue.message


def test_issues_name_the_mapped_column():
    issue = only_issue(
        convert({"good": "same", "bad": "same"}, columns={"chosen": "good", "rejected": "bad"})
    )
    assert issue.field == "bad"


@pytest.mark.parametrize(
    ("kind", "columns", "needle"),
    [
        ("pair", {"completion": "x"}, "unknown field 'completion' for pair data"),
        ("sft", {"chosen": "x"}, "unknown field 'chosen' for sft data"),
        ("pair", {"chosen": "x", "rejected": "x"}, "chosen, rejected are all mapped to column 'x'"),
        ("pair", {"chosen": 3}, "must be a non-empty string"),
        ("sft", {"messages": "m", "completion": "c"}, "not a mix"),
        ("dpo", None, "unknown data kind 'dpo'"),
    ],
)
def test_bad_column_mappings(kind, columns, needle):
    with pytest.raises(UserError, match=needle):
        check_columns(kind, columns)


def test_unknown_kind_in_to_record():
    with pytest.raises(UserError, match="unknown data kind"):
        convert({"text": "x"}, "rm")


# ---------------------------------------------------------------- bad rows

A = [msg("assistant", "a")]
B = [msg("assistant", "b")]

BAD_PAIRS = [
    ({"chosen": "a"}, "rejected", "missing field 'rejected' (found: chosen)"),
    (
        {"prompt": "p", "choosen": "a", "rejected": "b"},
        "chosen",
        "'choosen' looks like a misspelling of 'chosen'",
    ),
    (
        {"prompt": "p", "chosen": 3, "rejected": "b"},
        "chosen",
        "expected a string or a list of messages, got int",
    ),
    ({"prompt": "p", "chosen": {"x": 1}, "rejected": "b"}, "chosen", "got an object"),
    ({"prompt": 1.5, "chosen": "a", "rejected": "b"}, "prompt", "got float"),
    ({"prompt": None, "chosen": "a", "rejected": "b"}, "prompt", "missing value (null)"),
    ({"prompt": "p", "chosen": math.nan, "rejected": "b"}, "chosen", "missing value (NaN)"),
    ({"prompt": [], "chosen": ["hi"], "rejected": B}, "chosen", "message 1 is not an object (got str)"),
    ({"prompt": [], "chosen": [{"content": "a"}], "rejected": B}, "chosen", "message 1 has no 'role'"),
    (
        {"prompt": [], "chosen": A, "rejected": [{"role": "assistant"}]},
        "rejected",
        "message 1 has no 'content'",
    ),
    (
        {"prompt": [], "chosen": A, "rejected": [msg("assistant", 5)]},
        "rejected",
        "message 1: content must be a string, got int",
    ),
    (
        {"prompt": [], "chosen": A, "rejected": [{"role": "assistant", "content": None}]},
        "rejected",
        "content must be a string, got null",
    ),
    (
        {"prompt": [msg("user", "q"), msg("bot", "x")], "chosen": A, "rejected": B},
        "prompt",
        "message 2: unknown role 'bot' (allowed: system, user, assistant, tool)",
    ),
    (
        {"prompt": "p", "chosen": A, "rejected": B},
        "prompt",
        "mixed kinds in one row: 'chosen' is a list of messages but 'prompt' is a string",
    ),
    ({"prompt": [], "chosen": A, "rejected": "b"}, "rejected", "mixed kinds in one row"),
    ({"prompt": "p", "chosen": "  \n", "rejected": "b"}, "chosen", "empty response"),
    ({"prompt": "p", "chosen": "a", "rejected": ""}, "rejected", "empty response"),
    ({"prompt": [], "chosen": [], "rejected": B}, "chosen", "empty response (no messages)"),
    (
        {"prompt": [], "chosen": [msg("assistant", " ")], "rejected": B},
        "chosen",
        "the assistant turns are blank",
    ),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "rejected", "chosen and rejected are identical"),
    (
        {"prompt": [], "chosen": A, "rejected": [msg("assistant", "b"), msg("user", "more?")]},
        "rejected",
        "conversation does not end with an assistant turn (last role: user)",
    ),
    ({"chosen": "same", "rejected": "same"}, "rejected", "chosen and rejected are identical"),
    ({"chosen": "Yes ", "rejected": "Yes sir"}, "chosen", "leaves only white space of 'chosen'"),
    ({"chosen": "Sure thing ok", "rejected": "Sure "}, "rejected", "leaves only white space of 'rejected'"),
    (
        {"chosen": A, "rejected": [*A, msg("user", "x"), msg("assistant", "y")]},
        "chosen",
        "swallows the whole of 'chosen'",
    ),
    (
        {
            "chosen": [msg("user", "q"), msg("assistant", "a")],
            "rejected": [msg("user", "q"), msg("user", "b")],
        },
        "rejected",
        "does not end with an assistant turn",
    ),
    (
        {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c"},
        "chosen",
        "share no '\\n\\nAssistant:' turn",
    ),
    (
        {"chosen": "\n\nHuman: q\n\nAssistant:  ", "rejected": "\n\nHuman: q\n\nAssistant: b"},
        "chosen",
        "empty response",
    ),
]


@pytest.mark.parametrize(("row", "field", "needle"), BAD_PAIRS)
def test_bad_pair_rows(row, field, needle):
    issue = only_issue(convert(row))
    assert issue.field == field
    assert needle in issue.message


BAD_SFT = [
    ({"prompt": "p"}, "completion", "missing field 'completion' (found: prompt)"),
    ({"completion": "c"}, "prompt", "missing field 'prompt' (found: completion)"),
    ({"txt": "x"}, "completion", "'txt' looks like a misspelling of 'text'"),
    ({}, "completion", "found: no fields"),
    ({"text": ["x"]}, "text", "expected a string, got list"),
    ({"text": "   "}, "text", "empty text"),
    ({"text": None}, "text", "missing value (null)"),
    ({"prompt": "p", "completion": ""}, "completion", "empty response"),
    ({"prompt": "p", "completion": 0}, "completion", "got int"),
    ({"prompt": [msg("user", "q")], "completion": "a"}, "prompt", "mixed kinds"),
    ({"prompt": [], "completion": [msg("user", "q")]}, "completion", "does not end with an assistant turn"),
    ({"messages": "hello"}, "messages", "expected a list of messages, got a string"),
    ({"messages": [msg("user", "q")]}, "messages", "conversation has no assistant turn"),
    (
        {"messages": [msg("user", "q"), msg("assistant", "a"), msg("user", "q2")]},
        "messages",
        "conversation does not end with an assistant turn (last role: user)",
    ),
    ({"messages": [msg("user", "q"), msg("assistant", "")]}, "messages", "empty response"),
    ({"messages": [msg("user", "q"), {"role": "assistant"}]}, "messages", "message 2 has no 'content'"),
]


@pytest.mark.parametrize(("row", "field", "needle"), BAD_SFT)
def test_bad_sft_rows(row, field, needle):
    issue = only_issue(convert(row, "sft"))
    assert issue.field == field
    assert needle in issue.message


def test_every_bad_field_of_a_row_is_reported():
    result = convert({"prompt": 3, "chosen": None, "rejected": [msg("robot", "x")]})
    assert isinstance(result, list)
    assert [(i.field, i.row, i.source) for i in result] == [
        ("chosen", 7, SRC),
        ("rejected", 7, SRC),
        ("prompt", 7, SRC),
    ]
    assert "unknown role 'robot'" in result[1].message


def test_both_responses_missing():
    result = convert({"prompt": "p", "answer": "x"})
    assert [i.field for i in result] == ["chosen", "rejected"]


def test_both_empty_responses_are_reported():
    result = convert({"prompt": "p", "chosen": " ", "rejected": ""})
    assert [(i.field, i.message) for i in result] == [
        ("chosen", "empty response"),
        ("rejected", "empty response"),
    ]


def test_a_misspelling_is_suggested_only_for_a_real_typo():
    # 'choosen' is 'chosen' with one letter added: a typo, and said so.
    issue = only_issue(convert({"prompt": "p", "choosen": "a", "rejected": "b"}))
    assert issue.message == ("missing field 'chosen' (found: prompt, choosen, rejected; 'choosen' looks like a "
                             "misspelling of 'chosen')")
    # HelpSteer2's columns: 'complexity' is a rating, not 'completion' mistyped (it differs in three
    # letters: t, o, n against x, t, y), and no other column is near 'completion' either.
    row = {"prompt": "p", "response": "r", "helpfulness": 3, "correctness": 3, "coherence": 4, "complexity": 1,
           "verbosity": 1}
    completion, score = convert(row, "scored")
    assert (completion.field, score.field) == ("completion", "score")
    assert completion.message == ("missing field 'completion' (found: prompt, response, helpfulness, correctness, "
                                  "coherence, complexity, verbosity)")


# ---------------------------------------------------------------- prompts that would be lost


@pytest.mark.parametrize(
    ("row", "needle"),
    [
        (
            {"system": "", "question": "What is 2+2?", "chosen": "The answer is 4.", "rejected": "5"},
            "chosen and rejected share no prompt; unused columns: question, system; "
            "map one with columns={'prompt': 'NAME'}",
        ),
        (
            {"promt": "What is 2+2?", "chosen": "The answer is 4.", "rejected": "5"},
            "unused columns: promt ('promt' looks like a misspelling of 'prompt'); "
            "map one with columns={'prompt': 'NAME'}",
        ),
        (
            {"question": "q", "chosen": [msg("assistant", "a")], "rejected": [msg("assistant", "b")]},
            "chosen and rejected share no prompt; unused columns: question;",
        ),
    ],
)
def test_empty_implicit_prompt_with_other_columns_is_refused(row, needle):
    issue = only_issue(convert(row))
    assert issue.field == "prompt"
    assert needle in issue.message


def test_empty_implicit_prompt_names_the_mapped_response_columns():
    issue = only_issue(convert({"q": "x", "good": "a", "bad": "b"}, columns={"chosen": "good", "rejected": "bad"}))
    assert issue.field == "prompt"
    assert issue.message.startswith("good and bad share no prompt; unused columns: q;")


def test_implicit_prompt_with_other_columns_is_fine_when_it_is_not_empty():
    rec = convert({"id": 3, "chosen": "The sky is blue", "rejected": "The sky is green"})
    assert rec == PairRecord("The sky is", " blue", " green", SRC, 7)


def test_sft_text_beside_other_text_columns_is_refused():
    issue = only_issue(convert({"instruction": "Say hi.", "text": "Hi!", "input": " ", "id": 4}, "sft"))
    assert issue.field == "text"
    assert "other columns hold text: instruction;" in issue.message
    assert "columns={'prompt': 'NAME', 'completion': 'NAME'}, or map columns={'text': 'text'}" in issue.message
    with command_line():  # the command line is told the flags
        issue = only_issue(convert({"instruction": "Say hi.", "text": "Hi!", "input": " ", "id": 4}, "sft"))
    assert "--columns.prompt NAME --columns.completion NAME, or map --columns.text text" in issue.message


def test_sft_text_beside_a_misspelt_prompt_says_so():
    issue = only_issue(convert({"promt": "Say hi.", "text": "Hi!"}, "sft"))
    assert "other columns hold text: promt ('promt' looks like a misspelling of 'prompt')" in issue.message


def test_sft_text_with_only_non_text_or_blank_columns_or_mapped_explicitly_is_fine():
    assert convert({"text": "Hi!", "id": 4, "tags": ["a"], "note": ""}, "sft") == SFTRecord("", "Hi!", SRC, 7)
    rec = convert({"text": "Hi!", "source": "wiki"}, "sft", columns={"text": "text"})
    assert rec == SFTRecord("", "Hi!", SRC, 7)


# ---------------------------------------------------------------- UltraFeedback and HH variants


def test_ultrafeedback_string_prompt_with_whole_conversations():
    rec = convert(
        {
            "prompt": "What is 2+2?",
            "chosen": [msg("system", "Be brief."), msg("user", "What is 2+2?"), msg("assistant", "4")],
            "rejected": [msg("system", "Be brief."), msg("user", "What is 2+2?"), msg("assistant", "5")],
        }
    )
    assert rec == PairRecord(
        prompt=conv(("system", "Be brief."), ("user", "What is 2+2?")),
        chosen=conv(("assistant", "4")),
        rejected=conv(("assistant", "5")),
        source=SRC,
        row=7,
    )


@pytest.mark.parametrize(
    ("chosen_question", "needle"),
    [
        ("What is 2+2?", "'prompt' is not the content of any user turn that 'chosen' and 'rejected' share"),
        ("What is 3+3?", "are whole conversations that share no user turn"),
    ],
)
def test_ultrafeedback_prompt_that_does_not_fit_the_conversations(chosen_question, needle):
    row = {
        "prompt": "Name a color.",
        "chosen": [msg("user", chosen_question), msg("assistant", "4")],
        "rejected": [msg("user", "What is 2+2?"), msg("assistant", "5")],
    }
    issue = only_issue(convert(row))
    assert issue.field == "prompt"
    assert needle in issue.message


def test_human_transcript_with_single_newlines_uses_the_word_boundary_split():
    rec = convert({"chosen": "Human: What is 2+2?\nAssistant: 4", "rejected": "Human: What is 2+2?\nAssistant: 5"})
    assert rec == PairRecord("Human: What is 2+2?\nAssistant:", " 4", " 5", SRC, 7)

"""Conversation prompts in online training: the policy samples from the conversation rendered with
its tokenizer's chat template (the assistant turn opened), the reward reads its last user message,
and a tokenizer without a chat template or a conversation without a user message is a one-line
error naming the file and row before anything is sampled."""

from __future__ import annotations

import json

import pytest

from alignlab import train
from alignlab.errors import DataError
from alignlab.models import load_tokenizer
from alignlab.training.forward.policy_gradient import PolicyGradientForward
from tests.reliability.test_bad_input import _without_chat_template
from tests.training import online_rewards
from tests.training.test_online import metrics, online

RECORDS = "fn:tests.training.online_rewards:records_prompt"
SYSTEM_AND_USER = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+3?"}]
TWO_TURNS = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
             {"role": "user", "content": "Name a colour."}]
# The tiny tokenizer's template writes each message as <|role|>content<|end|>, then <|assistant|>.
RENDERED = {"What is 2+3?": "<|system|>Be brief.<|end|><|user|>What is 2+3?<|end|><|assistant|>",
            "Name a colour.": "<|user|>Hi<|end|><|assistant|>Hello!<|end|><|user|>Name a colour.<|end|><|assistant|>"}


def write_prompts(path, prompts) -> str:
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    return str(path)


def test_conversation_prompts_train_an_online_step(tmp_path, tiny_model_dir, monkeypatch):
    """Two conversations, 2 prompts × 4 samples in the one step: every completion continues its
    conversation's chat-template rendering, and the reward was given the last user messages."""
    data = write_prompts(tmp_path / "chats.jsonl", [SYSTEM_AND_USER, TWO_TURNS])
    tok = load_tokenizer(str(tiny_model_dir))
    seen = []
    real = PolicyGradientForward.__call__

    def keep(self, model, batch):
        seen.extend(batch.examples)
        return real(self, model, batch)

    monkeypatch.setattr(online_rewards, "SEEN_PROMPTS", [])
    monkeypatch.setattr(PolicyGradientForward, "__call__", keep)
    train(online(tiny_model_dir, tmp_path / "run", data=data, reward=[RECORDS], max_steps=1))

    rows = [m for m in metrics(tmp_path / "run") if "loss" in m]
    assert len(rows) == 1 and rows[0]["reward"] > 0
    assert sorted(online_rewards.SEEN_PROMPTS) == ["Name a colour."] * 4 + ["What is 2+3?"] * 4
    rendered = {tuple(tok(text, add_special_tokens=False)["input_ids"]): q for q, text in RENDERED.items()}
    assert len(seen) == 8 and {rendered.get(e.prompt_ids) for e in seen} == {"What is 2+3?", "Name a colour."}
    assert {e.row for e in seen} == {1, 2}
    for e in seen:  # the row's own conversation: row 1 is the system + user one
        assert rendered[e.prompt_ids] == ("What is 2+3?" if e.row == 1 else "Name a colour.")


def test_conversation_prompts_need_a_chat_template_and_a_user_message(tmp_path, tiny_model_dir):
    data = write_prompts(tmp_path / "mixed.jsonl", ["1+1=", SYSTEM_AND_USER, TWO_TURNS])
    plain_model = _without_chat_template(tmp_path, tiny_model_dir)
    with pytest.raises(DataError) as e:
        train(online(plain_model, tmp_path / "a", data=data))
    message = str(e.value)
    assert message.startswith(f"{data}, row 2, field 'prompt': a conversation prompt is rendered with the "
                              f"tokenizer's chat template, and the tokenizer of {plain_model} has none (and 1 more")
    assert "give text prompts, or a model whose tokenizer has a chat template" in message and "\n" not in message
    assert not (tmp_path / "a" / "metrics.jsonl").exists()

    no_user = write_prompts(tmp_path / "system.jsonl", [SYSTEM_AND_USER, [{"role": "system", "content": "Be brief."}]])
    with pytest.raises(DataError, match=r"system.jsonl, row 2, field 'prompt': the conversation has no user "
                                        r"message, so a reward has no question to read"):
        train(online(tiny_model_dir, tmp_path / "b", data=no_user))

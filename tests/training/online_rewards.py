"""Reward functions for the online-training tests (imported by name: ``fn:tests.training.online_rewards:...``)."""

from __future__ import annotations


def digits(prompt: str, response: str) -> float:
    """How many ASCII digits the response has: random completions differ in it, so advantages do too."""
    return float(sum(c in "0123456789" for c in response))


def letters(prompt: str, response: str) -> float:
    return float(sum(c.isalpha() for c in response))


def fails_on_x(prompt: str, response: str) -> float:
    """Raises on a response that contains an 'x'."""
    if "x" in response:
        raise ValueError("no x please")
    return 0.0


def fails_on_3_plus_3(prompt: str, response: str) -> float:
    """Raises on every answer to the prompt '3+3='."""
    if prompt == "3+3=":
        raise ValueError("not this one")
    return 0.0


def nan_on_x(prompt: str, response: str) -> float:
    return float("nan") if "x" in response else 0.0


SEEN_PROMPTS: list = []  # what ``records_prompt`` was given, in order


def records_prompt(prompt, response: str) -> float:
    """Keeps the prompt it is given (a test reads SEEN_PROMPTS); the response's length as reward."""
    SEEN_PROMPTS.append(prompt)
    return float(len(response))


def constant(prompt: str, response: str) -> float:
    """The same reward for every answer: every pair of answers ties."""
    return 1.0


def shared_with_prompt(prompt: str, response: str) -> float:
    """How many of the response's characters occur in the prompt: a reward of the pair, which
    changes when a completion is scored against another prompt."""
    return float(sum(c in prompt for c in response))


def has_digit(prompt: str, response: str) -> float:
    """1 when the response has an ASCII digit, else 0: a binary reward, so some groups tie."""
    return float(any(c in "0123456789" for c in response))


def digits_on_odd(prompt: str, response: str) -> float:
    """0.5 for every answer to a prompt whose first number is even (its group has no spread: every
    advantage 0), else ``digits``: dynamic sampling's tests see both kinds of group."""
    if int(prompt.split("+")[0]) % 2 == 0:
        return 0.5
    return digits(prompt, response)


def always_nan(prompt: str, response: str) -> float:
    return float("nan")


def odd_letters(prompt: str, response: str) -> float:
    """1 when the response has an odd number of letters, else 0: a binary reward near a coin flip,
    so a group of 4 often has two or three answers tied at the top (pass@k's advantage 0)."""
    return float(sum(c.isalpha() for c in response) % 2)


def astronomical(prompt: str, response: str) -> float:
    """1e300 per character: every value a finite float, their squares (1e600) not."""
    return 1e300 * (1 + len(response))


def huge(prompt: str, response: str) -> float:
    """1e100 per character: fine in float64's statistics, but a reward-sized advantage or value
    target of 1e100 does not fit float32 (largest about 3.4e38)."""
    return 1e100 * (1 + len(response))

"""Small data files of every shape, for training tests."""

from __future__ import annotations

import random
from pathlib import Path

from tests.conftest import BAD, GOOD, make_pairs, write_jsonl

ITEMS = ["lamp", "desk", "phone", "kettle", "bike"]


def pairs_rows(n: int, seed: int = 0) -> list[dict]:
    """Pairs with scores and a preference strength."""
    rng = random.Random(seed)
    rows = make_pairs(n, seed)
    for r in rows:
        r["score_chosen"], r["score_rejected"] = 8.0, float(rng.choice([2, 3, 4]))
        r["strength"] = rng.choice([0.7, 0.9, 1.0])
    return rows


def joint_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.sample(ITEMS, 2)
        rows.append({"prompt_chosen": f"Review the {a}.", "chosen": f"The {a} is {rng.choice(GOOD)}.",
                     "prompt_rejected": f"Review the {b}.", "rejected": f"The {b} is {rng.choice(BAD)}."})
    return rows


def unpaired_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        item, good = rng.choice(ITEMS), i % 2 == 0
        word = rng.choice(GOOD if good else BAD)
        rows.append({"prompt": f"Review the {item}.", "completion": f"The {item} is {word}.", "label": good})
    return rows


def ranked_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        item = rng.choice(ITEMS)
        k = rng.choice([3, 4])
        words = rng.sample(GOOD, 2) + rng.sample(BAD, k - 2)
        rows.append({"prompt": f"Review the {item}.", "completions": [f"The {item} is {w}." for w in words],
                     "scores": [float(k - i) for i in range(k)]})
    return rows


def negatives_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"prompt": f"Review the {it}.", "rejected": f"The {it} is {rng.choice(BAD)}."}
            for it in (rng.choice(ITEMS) for _ in range(n))]


ROWS = {"pair": pairs_rows, "joint": joint_rows, "unpaired": unpaired_rows, "ranked": ranked_rows,
        "negatives": negatives_rows, "sft": lambda n, seed=0: [{"prompt": r["prompt"], "completion": r["chosen"]}
                                                               for r in make_pairs(n, seed)]}


def write_shape(directory: Path, shape: str, n: int = 8, seed: int = 0) -> Path:
    return write_jsonl(directory / f"{shape}-{seed}.jsonl", ROWS[shape](n, seed))

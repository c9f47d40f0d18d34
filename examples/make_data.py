"""Write the small example datasets that ship in examples/ (run from the repo root).

Preference pairs in TRL's standard format: the prompt asks for a short review of an item; the
chosen response praises it with words from a positive list, the rejected one pans it with words
from a negative list. Which words and items appear is random, so the held-out file has
combinations the training file does not; a model can only rank them by learning the word lists.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

ITEMS = ["camera", "laptop", "novel", "film", "jacket", "lamp", "phone", "chair", "album", "game",
         "bike", "kettle", "watch", "tent", "desk", "printer", "sofa", "guitar", "blender", "drone"]
GOOD = ["great", "lovely", "superb", "solid", "reliable", "charming", "elegant", "sturdy", "brilliant", "handy"]
BAD = ["awful", "flimsy", "broken", "dull", "noisy", "clumsy", "ugly", "faulty", "useless", "shoddy"]
OPENERS = ["Write a short review of the {}.", "What do you think of the {}?", "Describe the {} in one line."]


def response(rng: random.Random, item: str, words: list[str]) -> str:
    a, b = rng.sample(words, 2)
    return f"I think this {item} is {a} and {b}."


def pair(rng: random.Random) -> dict:
    item = rng.choice(ITEMS)
    return {
        "prompt": rng.choice(OPENERS).format(item),
        "chosen": response(rng, item, GOOD),
        "rejected": response(rng, item, BAD),
    }


def main() -> None:
    rng = random.Random(1234)
    here = Path(__file__).parent
    for name, n in (("pairs_train.jsonl", 512), ("pairs_eval.jsonl", 64)):
        rows = [pair(rng) for _ in range(n)]
        (here / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    sft = [{"prompt": p["prompt"], "completion": p["chosen"]} for p in (pair(rng) for _ in range(256))]
    (here / "sft_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sft))


if __name__ == "__main__":
    main()

"""How a failing step names its data rows (``source.rows_text``)."""

from __future__ import annotations

from alignlab.training.source import rows_text


def test_rows_of_one_file_are_numbers_and_of_several_carry_their_file():
    assert rows_text([("p.jsonl", 3), ("p.jsonl", 5)]) == "data rows 3, 5"
    assert rows_text([("", 1), ("", 2)]) == "data rows 1, 2"  # a source that does not know the file
    assert rows_text([("d/a.jsonl", 2), ("d/b.jsonl", 2)]) == "d/a.jsonl row 2, d/b.jsonl row 2"
    assert rows_text([("p.jsonl", r) for r in range(1, 11)]) == "data rows 1, 2, 3, 4, 5, 6, 7, 8, ..."
    assert rows_text([("a", 1), ("b", 1), ("c", 1)], shown=2) == "a row 1, b row 1, ..."

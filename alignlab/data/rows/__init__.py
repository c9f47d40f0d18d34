"""Raw rows (dicts from JSONL/JSON/Parquet/CSV/Hugging Face datasets) -> typed records, with row-level errors.

``formats`` reads sft and pair rows, ``shapes`` the other kinds, and ``fields`` the single fields
of a row (texts, conversations, numbers, labels, lists) that both of them read. Every problem names
the source, the row and the user's column.
"""

"""Feedback data: typed records, loaders and validation."""

from alignlab.data.load import LoadResult, load_records, split_records
from alignlab.data.records import Conversation, Message, PairRecord, Record, SFTRecord, Text

__all__ = [
    "Conversation",
    "LoadResult",
    "Message",
    "PairRecord",
    "Record",
    "SFTRecord",
    "Text",
    "load_records",
    "split_records",
]

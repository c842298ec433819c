"""Cheap request features for output-length prediction.

Everything here is computable in the request path from what a chat API receives: the latest
user message (text and its token ids) and the conversation so far (role and token count of each
earlier turn). Text statistics look only at a bounded prefix and suffix of the prompt so that
a very long prompt costs no more than a short one.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

ASSISTANT_ROLES = frozenset({"gpt", "assistant", "chatgpt", "bing", "bard"})
USER_ROLES = frozenset({"human", "user"})

_WORD = re.compile(r"[a-z]+|\d+|[^\x00-\x7f]")
_UPPER = re.compile(r"[A-Z]")
_REQUESTED_SIZE = re.compile(
    r"(\d{1,5})\s*(?:-\s*\d{1,5}\s*)?(words?|sentences?|paragraphs?|lines?|characters?|points?|items?|examples?|ideas?|questions?|steps?|tips?|pages?)\b",
    re.IGNORECASE,
)
_LIST_LINE = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)])\s", re.MULTILINE)


@dataclass(frozen=True)
class PastTurn:
    """One earlier message of the conversation: its role and its length in tokens."""

    role: str
    n_tokens: int


@dataclass(frozen=True)
class ChatInput:
    """What the predictor sees of a request: the latest user message and the turns before it."""

    prompt: str
    prompt_tokens: int
    history: tuple[PastTurn, ...] = field(default_factory=tuple)

    @property
    def input_tokens(self) -> int:
        """Tokens of the whole conversation so far (template tokens not counted)."""
        return self.prompt_tokens + sum(t.n_tokens for t in self.history)


@dataclass(frozen=True)
class FeatureSpec:
    """Settings of the feature extractor; stored in the artifact so training and serving agree."""

    hash_buckets: int = 512
    head_words: int = 400
    tail_words: int = 100
    scan_chars: int = 2000

    @property
    def n_features(self) -> int:
        return len(DENSE_FEATURES) + 2 * self.hash_buckets

    def feature_names(self) -> list[str]:
        return (
            list(DENSE_FEATURES)
            + [f"head_word_{i}" for i in range(self.hash_buckets)]
            + [f"tail_word_{i}" for i in range(self.hash_buckets)]
        )


DENSE_FEATURES: tuple[str, ...] = (
    "prompt_tokens",
    "log2_prompt_tokens",
    "prompt_chars",
    "chars_per_token",
    "lines",
    "words_in_scan",
    "frac_non_ascii",
    "frac_digits",
    "frac_upper",
    "question_marks",
    "ends_with_question",
    "code_fences",
    "code_symbols",
    "list_lines",
    "requested_size",
    "requested_size_unit",
    "turn_index",
    "history_turns",
    "history_tokens",
    "input_tokens",
    "log2_input_tokens",
    "last_reply_tokens",
    "mean_reply_tokens",
    "max_reply_tokens",
    "min_reply_tokens",
    "last_user_tokens",
    "mean_user_tokens",
)
# Positions of the dense features in a row (one source of truth: DENSE_FEATURES).
_I_PROMPT_TOKENS = DENSE_FEATURES.index("prompt_tokens")
_I_LOG2_PROMPT_TOKENS = DENSE_FEATURES.index("log2_prompt_tokens")
_I_PROMPT_CHARS = DENSE_FEATURES.index("prompt_chars")
_I_CHARS_PER_TOKEN = DENSE_FEATURES.index("chars_per_token")
_I_LINES = DENSE_FEATURES.index("lines")
_I_WORDS_IN_SCAN = DENSE_FEATURES.index("words_in_scan")
_I_FRAC_NON_ASCII = DENSE_FEATURES.index("frac_non_ascii")
_I_FRAC_DIGITS = DENSE_FEATURES.index("frac_digits")
_I_FRAC_UPPER = DENSE_FEATURES.index("frac_upper")
_I_QUESTION_MARKS = DENSE_FEATURES.index("question_marks")
_I_ENDS_WITH_QUESTION = DENSE_FEATURES.index("ends_with_question")
_I_CODE_FENCES = DENSE_FEATURES.index("code_fences")
_I_CODE_SYMBOLS = DENSE_FEATURES.index("code_symbols")
_I_LIST_LINES = DENSE_FEATURES.index("list_lines")
_I_REQUESTED_SIZE = DENSE_FEATURES.index("requested_size")
_I_REQUESTED_SIZE_UNIT = DENSE_FEATURES.index("requested_size_unit")
_I_TURN_INDEX = DENSE_FEATURES.index("turn_index")
_I_HISTORY_TURNS = DENSE_FEATURES.index("history_turns")
_I_HISTORY_TOKENS = DENSE_FEATURES.index("history_tokens")
_I_INPUT_TOKENS = DENSE_FEATURES.index("input_tokens")
_I_LOG2_INPUT_TOKENS = DENSE_FEATURES.index("log2_input_tokens")
_I_LAST_REPLY_TOKENS = DENSE_FEATURES.index("last_reply_tokens")
_I_MEAN_REPLY_TOKENS = DENSE_FEATURES.index("mean_reply_tokens")
_I_MAX_REPLY_TOKENS = DENSE_FEATURES.index("max_reply_tokens")
_I_MIN_REPLY_TOKENS = DENSE_FEATURES.index("min_reply_tokens")
_I_LAST_USER_TOKENS = DENSE_FEATURES.index("last_user_tokens")
_I_MEAN_USER_TOKENS = DENSE_FEATURES.index("mean_user_tokens")
_UNITS = ("word", "sentence", "paragraph", "line", "character", "point", "item", "example", "idea", "question", "step", "tip", "page")
_DIGITS = "0123456789"
_CODE_SYMBOLS = "{};=<>()[]"


def word_bucket(word: str, buckets: int) -> int:
    """Stable (process-independent) hash bucket of a word."""
    return zlib.crc32(word.encode()) % buckets


# Hashing each word is most of the per-request feature cost; a prompt's words are mostly
# common ones, so a bounded memo of word -> bucket (per bucket count) makes it a dict lookup.
_BUCKET_MEMO: dict[int, dict[str, int]] = {}
_BUCKET_MEMO_LIMIT = 200_000


def word_bucket_counts(words: Sequence[str], buckets: int) -> np.ndarray:
    """How many of `words` fall in each of `buckets` hash buckets (same buckets as word_bucket)."""
    memo = _BUCKET_MEMO.setdefault(buckets, {})
    if len(memo) > _BUCKET_MEMO_LIMIT:
        memo.clear()
    ids = []
    for word in words:
        bucket = memo.get(word)
        if bucket is None:
            bucket = memo[word] = word_bucket(word, buckets)
        ids.append(bucket)
    return np.bincount(ids, minlength=buckets) if ids else np.zeros(buckets, dtype=np.int64)


def _text_stats(text: str, scan_chars: int, out: np.ndarray) -> None:
    scan = text if len(text) <= 2 * scan_chars else text[:scan_chars] + "\n" + text[-scan_chars:]
    n = max(len(scan), 1)
    out[_I_PROMPT_CHARS] = len(text)
    out[_I_LINES] = text.count("\n") + 1
    out[_I_FRAC_NON_ASCII] = (len(scan.encode()) - len(scan)) / n
    out[_I_FRAC_DIGITS] = sum(scan.count(d) for d in _DIGITS) / n
    out[_I_FRAC_UPPER] = len(_UPPER.findall(scan)) / n
    out[_I_QUESTION_MARKS] = scan.count("?")
    stripped = text.rstrip()
    out[_I_ENDS_WITH_QUESTION] = 1.0 if stripped.endswith("?") else 0.0
    out[_I_CODE_FENCES] = text.count("```")
    out[_I_CODE_SYMBOLS] = sum(scan.count(c) for c in _CODE_SYMBOLS) / n
    out[_I_LIST_LINES] = len(_LIST_LINE.findall(scan))
    size, unit = 0.0, -1.0
    for match in _REQUESTED_SIZE.finditer(scan):
        value = float(match.group(1))
        if value > size:
            size = value
            unit = float(_UNITS.index(match.group(2).lower().rstrip("s")))
    out[_I_REQUESTED_SIZE] = size
    out[_I_REQUESTED_SIZE_UNIT] = unit


def _history_stats(inp: ChatInput, out: np.ndarray) -> None:
    replies = [t.n_tokens for t in inp.history if t.role in ASSISTANT_ROLES]
    users = [t.n_tokens for t in inp.history if t.role in USER_ROLES]
    history_tokens = sum(t.n_tokens for t in inp.history)
    input_tokens = history_tokens + inp.prompt_tokens
    out[_I_TURN_INDEX] = len(users)
    out[_I_HISTORY_TURNS] = len(inp.history)
    out[_I_HISTORY_TOKENS] = history_tokens
    out[_I_INPUT_TOKENS] = input_tokens
    out[_I_LOG2_INPUT_TOKENS] = math.log2(input_tokens + 1)
    # NaN marks "no earlier reply": LightGBM learns a separate branch for missing values.
    out[_I_LAST_REPLY_TOKENS] = replies[-1] if replies else math.nan
    out[_I_MEAN_REPLY_TOKENS] = sum(replies) / len(replies) if replies else math.nan
    out[_I_MAX_REPLY_TOKENS] = max(replies) if replies else math.nan
    out[_I_MIN_REPLY_TOKENS] = min(replies) if replies else math.nan
    out[_I_LAST_USER_TOKENS] = users[-1] if users else math.nan
    out[_I_MEAN_USER_TOKENS] = sum(users) / len(users) if users else math.nan


def write_features(inp: ChatInput, spec: FeatureSpec, out: np.ndarray) -> None:
    """Fill `out` (length spec.n_features, zeroed by the caller) with the features of `inp`."""
    out[_I_PROMPT_TOKENS] = inp.prompt_tokens
    out[_I_LOG2_PROMPT_TOKENS] = math.log2(inp.prompt_tokens + 1)
    out[_I_CHARS_PER_TOKEN] = len(inp.prompt) / max(inp.prompt_tokens, 1)
    _text_stats(inp.prompt, spec.scan_chars, out)
    _history_stats(inp, out)
    head = _WORD.findall(inp.prompt[: spec.scan_chars].lower())
    tail = _WORD.findall(inp.prompt[-spec.scan_chars :].lower()) if len(inp.prompt) > spec.scan_chars else head
    out[_I_WORDS_IN_SCAN] = len(head)
    base = len(DENSE_FEATURES)
    buckets = spec.hash_buckets
    out[base : base + buckets] += word_bucket_counts(head[: spec.head_words], buckets)
    base += buckets
    out[base : base + buckets] += word_bucket_counts(tail[-spec.tail_words :], buckets)


def features(inp: ChatInput, spec: FeatureSpec) -> np.ndarray:
    """Feature row of one request, shape (1, n_features), float64 (as LightGBM predicts on)."""
    row = np.zeros((1, spec.n_features), dtype=np.float64)
    write_features(inp, spec, row[0])
    # Round through float32 as feature_matrix does, so serving sees exactly the training values.
    row[0] = row[0].astype(np.float32)
    return row


def feature_matrix(inputs: Sequence[ChatInput], spec: FeatureSpec) -> np.ndarray:
    """Feature rows of many requests (float32 to halve training memory)."""
    matrix = np.zeros((len(inputs), spec.n_features), dtype=np.float32)
    row = np.zeros(spec.n_features, dtype=np.float64)
    for i, inp in enumerate(inputs):
        row.fill(0.0)
        write_features(inp, spec, row)
        matrix[i] = row
    return matrix

"""Feature extraction and dataset rows of the output-length predictor."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from predictors.output_length.dataset import build_examples, split_by_conversation
from predictors.output_length.features import ChatInput, FeatureSpec, PastTurn, feature_matrix, features
from predictors.sharegpt import Conversation, Turn

SPEC = FeatureSpec(hash_buckets=32, head_words=20, tail_words=10, scan_chars=200)

turns = st.builds(PastTurn, role=st.sampled_from(["human", "gpt", "system"]), n_tokens=st.integers(0, 5000))
requests = st.builds(
    ChatInput, prompt=st.text(max_size=600), prompt_tokens=st.integers(0, 10_000),
    history=st.lists(turns, max_size=6).map(tuple),
)


@settings(max_examples=200, deadline=None)
@given(requests)
def test_features_are_deterministic_and_finite_except_missing_history(request: ChatInput) -> None:
    a, b = features(request, SPEC), features(request, SPEC)
    assert a.shape == (1, SPEC.n_features)
    np.testing.assert_array_equal(a, b)
    finite = np.isfinite(a[0])
    names = np.array(SPEC.feature_names())
    # Only the history statistics may be missing (NaN), and only when there is no such turn.
    assert set(names[~finite]) <= {"last_reply_tokens", "mean_reply_tokens", "max_reply_tokens",
                                   "min_reply_tokens", "last_user_tokens", "mean_user_tokens"}
    has_reply = any(t.role == "gpt" for t in request.history)
    assert finite[SPEC.feature_names().index("last_reply_tokens")] == has_reply


@settings(max_examples=50, deadline=None)
@given(st.lists(requests, min_size=1, max_size=5))
def test_matrix_rows_equal_single_rows(batch: list[ChatInput]) -> None:
    matrix = feature_matrix(batch, SPEC)
    for row, request in zip(matrix, batch):
        np.testing.assert_allclose(row, features(request, SPEC)[0].astype(np.float32))


def test_requested_size_and_history_features() -> None:
    request = ChatInput("Write a 500 word essay about rain.", 9, (PastTurn("human", 4), PastTurn("gpt", 30)))
    row = dict(zip(SPEC.feature_names(), features(request, SPEC)[0]))
    assert row["requested_size"] == 500
    assert row["turn_index"] == 1
    assert row["last_reply_tokens"] == 30
    assert row["input_tokens"] == 43
    assert math.isclose(row["log2_input_tokens"], math.log2(44), rel_tol=1e-6)  # float32 rows


def _conv(cid: str, *texts: str) -> Conversation:
    roles = ["human", "gpt"] * len(texts)
    return Conversation(cid, tuple(Turn(r, t) for r, t in zip(roles, texts)))


def word_count(texts):
    return [len(t.split()) for t in texts]


def test_examples_join_parts_and_tokenize_each_turn_once() -> None:
    calls: list[int] = []

    def counter(texts):
        calls.append(len(texts))
        return word_count(texts)

    convs = [_conv("a_0", "hi there", "hello you two"), _conv("a_1", "more please", "one two three four"),
             _conv("b", "question?", "")]
    examples = build_examples(convs, counter)
    assert calls == [6]  # one batch with every turn
    assert [e.reply_tokens for e in examples] == [3, 4]  # the empty reply makes no row
    assert examples[0].first_turn and not examples[1].first_turn
    assert [t.n_tokens for t in examples[1].request.history] == [2, 3]


def test_split_keeps_conversations_together_and_is_seeded() -> None:
    convs = [_conv(f"c{i}_{p}", "q " * (i + 1), "r " * (p + 1)) for i in range(60) for p in range(2)]
    examples = build_examples(convs, word_count)
    a, b = split_by_conversation(examples, seed=1), split_by_conversation(examples, seed=1)
    np.testing.assert_array_equal(a.test, b.test)
    parts = [{examples[i].group for i in idx} for idx in (a.train, a.calibration, a.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert len(a.train) + len(a.calibration) + len(a.test) == len(examples)

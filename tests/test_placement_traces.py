from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement.traces import (
    LengthMix,
    TraceRequest,
    load_trace,
    read_azure_csv,
    read_mooncake_jsonl,
    scale_rate,
    synthetic,
    truncate_to_context,
)

AZURE_CONV = Path("/work/shared/data/azure_llm_2023/AzureLLMInferenceTrace_conv.csv")


def test_azure_csv_times_are_relative_and_cross_midnight(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text(
        "TIMESTAMP,ContextTokens,GeneratedTokens\n"
        "2023-11-16 23:59:59.5000000,10,3\n"
        "2023-11-17 00:00:01.2500000,20,4\n"
        "2023-11-16 23:59:58.0000000,5,1\n"
    )
    trace = read_azure_csv(f)
    assert [r.arrival_s for r in trace] == pytest.approx([0.0, 1.5, 3.25])
    assert [(r.input_len, r.output_len) for r in trace] == [(5, 1), (10, 3), (20, 4)]


@pytest.mark.skipif(not AZURE_CONV.exists(), reason="shared Azure trace not present")
def test_whole_azure_conversation_trace():
    trace = load_trace(AZURE_CONV)
    assert len(trace) == 19366
    assert trace[0] == TraceRequest(0.0, 374, 44)
    assert trace[1].arrival_s == pytest.approx(50.9951690 - 46.6805900)
    arrivals = np.array([r.arrival_s for r in trace])
    assert np.all(np.diff(arrivals) >= 0)


def test_mooncake_jsonl_timestamps_are_milliseconds(tmp_path):
    f = tmp_path / "m.jsonl"
    f.write_text(
        '{"timestamp": 1000, "input_length": 100, "output_length": 5, "hash_ids": [0, 1]}\n'
        '{"timestamp": 3500, "input_length": 40, "output_length": 2, "hash_ids": [0]}\n'
    )
    trace = read_mooncake_jsonl(f)
    assert trace == [TraceRequest(0.0, 100, 5, (0, 1)), TraceRequest(2.5, 40, 2, (0,))]
    assert load_trace(f) == trace


def test_unknown_trace_type_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown trace type"):
        load_trace(tmp_path / "trace.parquet")


def test_poisson_rate_and_lengths_match_the_request():
    trace = synthetic(20000, rate=5.0, lengths=LengthMix(500, 0.5, 100, 0.5), seed=3)
    gaps = np.diff([r.arrival_s for r in trace])
    assert trace[0].arrival_s == 0.0
    assert 1 / gaps.mean() == pytest.approx(5.0, rel=0.03)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(1.0, rel=0.05)
    assert np.mean([r.input_len for r in trace]) == pytest.approx(500, rel=0.03)
    assert np.mean([r.output_len for r in trace]) == pytest.approx(100, rel=0.03)


def test_gamma_arrivals_have_the_requested_burstiness():
    trace = synthetic(20000, rate=2.0, arrival="gamma", cv=3.0, seed=1)
    gaps = np.diff([r.arrival_s for r in trace])
    assert 1 / gaps.mean() == pytest.approx(2.0, rel=0.1)
    assert np.std(gaps) / np.mean(gaps) == pytest.approx(3.0, rel=0.1)


def test_synthetic_is_deterministic_under_a_seed():
    assert synthetic(50, 1.0, seed=7) == synthetic(50, 1.0, seed=7)
    assert synthetic(50, 1.0, seed=7) != synthetic(50, 1.0, seed=8)


def test_scale_rate_compresses_gaps():
    trace = [TraceRequest(0.0, 1, 1), TraceRequest(4.0, 1, 1), TraceRequest(10.0, 1, 1)]
    assert [r.arrival_s for r in scale_rate(trace, 2.0)] == [0.0, 2.0, 5.0]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10000), st.integers(0, 5000)), max_size=30), st.integers(2, 4096))
def test_truncation_fits_the_context_and_counts_changes(lengths, max_len):
    trace = [TraceRequest(float(i), n, m) for i, (n, m) in enumerate(lengths)]
    out, changed = truncate_to_context(trace, max_len)
    assert len(out) == len(trace)
    assert changed == sum(a != b for a, b in zip(trace, out))
    for before, after in zip(trace, out):
        assert after.input_len >= 1 and after.output_len >= 1
        assert after.input_len + after.output_len <= max_len
        # the reply is kept whole whenever it fits with a 1-token prompt
        if 1 <= before.output_len <= max_len - 1:
            assert after.output_len == before.output_len
        if before.input_len >= 1 and before.output_len >= 1 and before.input_len + before.output_len <= max_len:
            assert after == before


def test_sampling_prefix_groups_keeps_whole_groups_and_their_reuse():
    from placement.traces import TraceRequest, sample_prefix_groups

    # 20 groups of 3 turns each, interleaved in time; each turn extends the one before
    trace = sorted((TraceRequest(arrival_s=turn * 100.0 + g, input_len=512 * (turn + 1), output_len=10,
                                 hash_ids=tuple(range(g * 10, g * 10 + turn + 1)))
                    for g in range(20) for turn in range(3)), key=lambda r: r.arrival_s)
    kept = sample_prefix_groups(trace, 0.25, seed=1)
    groups = {r.hash_ids[0] for r in kept}
    assert len(groups) == 5 and len(kept) == 15  # every turn of each kept group
    assert [r.arrival_s for r in kept] == sorted(r.arrival_s for r in kept)
    assert kept == sample_prefix_groups(trace, 0.25, seed=1)  # the seed decides
    with pytest.raises(ValueError, match="hash"):
        sample_prefix_groups([TraceRequest(0.0, 10, 10)], 0.5)
    with pytest.raises(ValueError, match="share"):
        sample_prefix_groups(trace, 0.0)

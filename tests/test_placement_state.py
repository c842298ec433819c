import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement.state import Request, WorkerState
from predictors.latency import load_profile_family


def _worker() -> WorkerState:
    return WorkerState(id="w0", profile=load_profile_family("llama-2-7b-a100").profile(1))


def _request(i: int, n: int, sequences: int = 1, rid: str | None = None) -> Request:
    return Request(id=rid or f"r{i}", arrival_s=0.0, input_len=n, pred_mean=10, pred_upper=20, slo_ttft_s=1,
                   slo_atgt_s=0.05, sequences=sequences)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4000), st.integers(0, 50), st.booleans(), st.integers(1, 3)),
                min_size=1, max_size=30))
def test_incremental_aggregates_match_a_recount(ops):
    worker = _worker()
    for i, (n, steps, finish_one, sequences) in enumerate(ops):
        worker.admit(_request(i, n, sequences))
        worker.start_decode(f"r{i}")
        worker.advance(steps)
        if finish_one and len(worker.residents) > 1:
            worker.remove(next(iter(worker.residents)))
        decoding = [r for r in worker.residents.values() if r.decode_from_step is not None]
        assert worker.batch_size == sum(r.request.sequences for r in decoding)
        assert worker.context_tokens == sum(r.request.sequences * (r.request.input_len + worker.generated(r.request.id))
                                            for r in decoding)
        assert worker.resident_sequences == sum(r.request.sequences for r in worker.residents.values())
    assert worker.queued_prefill_count == 0 and worker.queued_prefill_tokens == 0


_AGGREGATES = ("resident_sequences", "queued_prefill_tokens", "queued_prefill_sq", "queued_prefill_count",
               "queued_prompt_tokens", "decode_count", "context_tokens", "kv_final_tokens", "final_context_tokens",
               "kv_used_tokens", "prefill_load_s")


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 4), st.integers(1, 3000), st.integers(0, 40), st.floats(1, 200), st.integers(0, 3))
def test_a_request_for_n_samples_loads_a_worker_as_n_requests(sequences, n, steps, upper, phase):
    # n samples are n sequences of the engine: the same prefills, decode slots and KV
    one, many = _worker(), _worker()
    one.admit(_request(0, n, sequences))
    for k in range(sequences):
        many.admit(_request(0, n, rid=f"r0.{k}"))
    if phase >= 1:
        one.start_decode("r0")
        for k in range(sequences):
            many.start_decode(f"r0.{k}")
        one.advance(steps)
        many.advance(steps)
    if phase >= 2:
        one.set_estimate("r0", upper / 2, upper)
        for k in range(sequences):
            many.set_estimate(f"r0.{k}", upper / 2, upper)
    for name in _AGGREGATES:
        assert getattr(one, name) == pytest.approx(getattr(many, name)), name
    if phase == 3:
        one.remove("r0")
        for k in range(sequences):
            many.remove(f"r0.{k}")
        assert all(getattr(one, name) == 0 for name in _AGGREGATES if name != "prefill_load_s")


def test_queued_prefill_is_tracked_until_decode_starts():
    worker = _worker()
    worker.admit(_request(1, 100))
    worker.admit(_request(2, 50))
    assert (worker.queued_prefill_tokens, worker.queued_prefill_sq, worker.queued_prefill_count) == (150, 12500, 2)
    worker.start_decode("r1")
    worker.remove("r2")
    assert (worker.queued_prefill_tokens, worker.queued_prefill_count, worker.batch_size) == (0, 0, 1)

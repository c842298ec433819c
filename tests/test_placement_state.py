from hypothesis import given, settings
from hypothesis import strategies as st

from placement.state import Request, WorkerState
from predictors.latency import load_profile_family


def _worker() -> WorkerState:
    return WorkerState(id="w0", profile=load_profile_family("llama-2-7b-a100").profile(1))


def _request(i: int, n: int) -> Request:
    return Request(id=f"r{i}", arrival_s=0.0, input_len=n, pred_mean=10, pred_upper=20, slo_ttft_s=1, slo_atgt_s=0.05)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 4000), st.integers(0, 50), st.booleans()), min_size=1, max_size=30))
def test_incremental_aggregates_match_a_recount(ops):
    worker = _worker()
    for i, (n, steps, finish_one) in enumerate(ops):
        worker.admit(_request(i, n))
        worker.start_decode(f"r{i}")
        worker.advance(steps)
        if finish_one and len(worker.residents) > 1:
            worker.remove(next(iter(worker.residents)))
        decoding = [r for r in worker.residents.values() if r.decode_from_step is not None]
        assert worker.batch_size == len(decoding)
        assert worker.context_tokens == sum(r.request.input_len + worker.generated(r.request.id) for r in decoding)
    assert worker.queued_prefill_count == 0 and worker.queued_prefill_tokens == 0


def test_queued_prefill_is_tracked_until_decode_starts():
    worker = _worker()
    worker.admit(_request(1, 100))
    worker.admit(_request(2, 50))
    assert (worker.queued_prefill_tokens, worker.queued_prefill_sq, worker.queued_prefill_count) == (150, 12500, 2)
    worker.start_decode("r1")
    worker.remove("r2")
    assert (worker.queued_prefill_tokens, worker.queued_prefill_count, worker.batch_size) == (0, 0, 1)

"""The soak's bookkeeping: how a streamed reply's error is recognised, and memory growth."""

import json

from serve_app.tools.soak import SoakResult, stream_error_message


def test_stream_error_message_reads_only_error_events() -> None:
    error = json.dumps({"error": {"message": "worker failed", "type": "worker_failed", "code": 503}})
    assert stream_error_message(error) == "worker failed"
    # generated text that merely mentions "error" is not an error event
    chunk = json.dumps({"choices": [{"text": '"error"'}]})
    assert stream_error_message(chunk) is None
    assert stream_error_message("not json") is None
    assert stream_error_message("[1, 2]") is None


def test_memory_growth_per_process_alive_at_both_samples() -> None:
    result = SoakResult(memory_mb_after_warmup={"a": 100.0, "b": 50.0, "gone": 10.0},
                        memory_mb_at_end={"a": 105.0, "b": 60.0})
    growth = result.memory_growth()
    assert set(growth) == {"a", "b"}
    assert abs(growth["a"] - 0.05) < 1e-9 and abs(growth["b"] - 0.2) < 1e-9
    assert abs(result.to_dict()["max_memory_growth"] - 0.2) < 1e-9

"""The pure parts of hosting vLLM's serving layer: sampling parameters on their way to a
worker, and a worker's chunks as the `RequestOutput`s vLLM's serving layer reads."""

from __future__ import annotations

import pickle

import msgspec
import pytest

vllm_frontend = pytest.importorskip("serve_app.http.vllm_frontend")

from vllm.logprobs import Logprob  # noqa: E402
from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams  # noqa: E402

from serve_app.worker.worker_protocol import GenerateChunk  # noqa: E402


def test_sampling_params_survive_the_trip_to_the_worker() -> None:
    """Built-in types on the wire (a sim worker reads them without importing vLLM); the vLLM
    worker rebuilds the same parameters, structured outputs included."""
    params = SamplingParams(n=2, max_tokens=7, temperature=0.5, seed=3, stop=["\n\n"], logprobs=2,
                            logit_bias={42: 5.0}, ignore_eos=True,
                            structured_outputs=StructuredOutputsParams(json={"type": "object"}),
                            output_kind=RequestOutputKind.FINAL_ONLY)
    wire = pickle.loads(pickle.dumps(msgspec.to_builtins(params)))
    assert wire["max_tokens"] == 7 and wire["n"] == 2 and "vllm" not in pickle.dumps(wire).decode("latin-1")
    back = msgspec.convert(wire, SamplingParams)
    for name in ("n", "max_tokens", "temperature", "seed", "stop", "logprobs", "ignore_eos", "output_kind"):
        assert getattr(back, name) == getattr(params, name), name
    assert back.logit_bias == {42: 5.0}
    assert back.structured_outputs == params.structured_outputs


def _chunk(index: int, text: str, ids: list[int], finish: str | None = None, **kw) -> GenerateChunk:
    logprobs = [{t: Logprob(-1.0)} for t in ids]
    return GenerateChunk(text, ids, finish, index=index, logprobs=logprobs, **kw)


def test_chunks_become_deltas_and_one_merged_final_output() -> None:
    chunks = [_chunk(0, "a", [1], prompt_logprobs=[None, {7: Logprob(-0.5)}]), _chunk(1, "x", [9]),
              _chunk(0, "b", [2], "length", cached_tokens=0), _chunk(1, "y", [8], "stop", stop_reason=5)]
    streamed = vllm_frontend.OutputBuilder("r-0", [5, 7], sequences=2)
    deltas = [streamed.delta(c) for c in chunks]
    assert [d.outputs[0].text for d in deltas] == ["a", "x", "b", "y"]
    assert [d.finished for d in deltas] == [False, False, False, True]  # both sequences ended
    assert deltas[0].prompt_logprobs is not None and deltas[0].prompt_token_ids == [5, 7]
    assert streamed.final is None  # a stream keeps nothing

    merged = vllm_frontend.OutputBuilder("r-0", [5, 7], sequences=2)
    for chunk in chunks:
        merged.merge(chunk)
    final = merged.final
    assert final.finished and final.prompt_logprobs is not None and final.num_cached_tokens == 0
    by_index = {o.index: o for o in final.outputs}
    assert (by_index[0].text, list(by_index[0].token_ids), by_index[0].finish_reason) == ("ab", [1, 2], "length")
    assert (by_index[1].text, list(by_index[1].token_ids), by_index[1].stop_reason) == ("xy", [9, 8], 5)
    assert [list(p) for p in by_index[0].logprobs] == [[1], [2]]


def test_errors_keep_vllms_status_and_body() -> None:
    from vllm.exceptions import VLLMValidationError

    body, status = vllm_frontend.error_body(VLLMValidationError("bad max_tokens", parameter="max_tokens"))
    assert status == 400 and body["error"]["param"] == "max_tokens" and body["error"]["code"] == 400
    body, status = vllm_frontend.error_body(RuntimeError("boom"))
    assert status == 500


@pytest.mark.parametrize("model", ["PlacedCompletionRequest", "PlacedChatCompletionRequest"])
def test_fields_vllm_removed_are_refused_not_ignored(model: str) -> None:
    from pydantic import ValidationError

    request = getattr(vllm_frontend, model)
    body = {"prompt": "x"} if "Chat" not in model else {"messages": [{"role": "user", "content": "x"}]}
    assert "guided_json" in vllm_frontend.REMOVED_FIELDS
    with pytest.raises(ValidationError, match="guided_json"):
        request.model_validate({**body, "guided_json": {"type": "object"}})
    parsed = request.model_validate({**body, "guided_json": None, "slo_ttft_ms": 500})
    assert parsed.slo_ttft_ms == 500


def test_what_placement_does_not_carry_is_refused() -> None:
    from vllm.exceptions import VLLMValidationError

    calls = []
    client = vllm_frontend.PlacedEngineClient.__new__(vllm_frontend.PlacedEngineClient)
    client._generate = lambda *args: calls.append(args)
    with pytest.raises(VLLMValidationError, match="priority"):
        client.generate({"prompt_token_ids": [1, 2]}, SamplingParams(), "r", priority=3)
    client.generate({"prompt_token_ids": [1, 2]}, SamplingParams(), "r", priority=0, trace_headers=None)
    salted = {"prompt_token_ids": [1, 2], "cache_salt": "tenant-a"}
    client.generate(salted, SamplingParams(), "r")  # carried: the ingress reads it from the prompt
    assert len(calls) == 2 and calls[1][0] is salted


def test_short_renderer_jobs_run_inline_and_long_ones_on_the_pool() -> None:
    """A short prompt is tokenized on the caller's thread (no hand-off to vLLM's tokenizer
    thread); a long one, a long conversation or many token ids to detokenize go to the pool;
    a job's exception reaches its awaiting caller either way."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    from functools import partial

    limit = vllm_frontend.INLINE_RENDER_MAX_CHARS

    def thread_of(*_args: object, **_kwargs: object) -> int:
        return threading.get_ident()

    pool = ThreadPoolExecutor(max_workers=1)
    executor = vllm_frontend.ShortJobsInline(pool)
    here = threading.get_ident()
    short = {"prompt": "hello"}
    long = {"prompt": "x" * (limit + 1)}
    chat = [{"role": "user", "content": "y" * (limit // 2)} for _ in range(3)]
    assert executor.submit(partial(thread_of, short, None)).result() == here
    assert executor.submit(partial(thread_of, long, None)).result() != here
    assert executor.submit(partial(thread_of, conversation=chat)).result() != here
    assert executor.submit(partial(thread_of, list(range(limit)))).result() != here  # token ids
    assert executor.submit(partial(thread_of, list(range(10)))).result() == here

    def fails(_prompt: object) -> None:
        raise ValueError("bad prompt")

    with pytest.raises(ValueError, match="bad prompt"):
        executor.submit(partial(fails, short)).result()
    executor.shutdown()
    assert pool._shutdown


def test_the_frontend_renderer_runs_short_jobs_inline() -> None:
    """vLLM's renderer keeps the executor this was written against (else start-up logs that
    every prompt goes to the thread): a vLLM upgrade that changes it fails here."""
    from vllm.config import VllmConfig
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.renderers import renderer_from_config

    from serve_app.config import AppConfig
    from serve_app.worker.vllm_engine import engine_kwargs

    engine_args = AsyncEngineArgs(**engine_kwargs(AppConfig()))
    renderer = renderer_from_config(VllmConfig(model_config=engine_args.create_model_config()))
    assert vllm_frontend.inline_short_renders(renderer)
    assert isinstance(renderer._executor._inner, vllm_frontend.ShortJobsInline)
    assert not vllm_frontend.inline_short_renders(renderer)  # once only

"""Prefix caching in placement and the simulator: a worker's KV counts shared blocks once, a
simulated engine skips the cached part of a prefill and evicts under pressure, Aladdin places
by hits, and the prefix-affinity baseline follows Ray Serve LLM's rule."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from placement.policies import AladdinPolicy, PrefixAffinityPolicy
from placement.prefix_cache import Prefix, PrefixCache, pooled_hits
from placement.queue_order import make_queue_order
from placement.simulator import Cluster, EngineOptions, SimConfig, make_length_model
from placement.policies import make_policy
from placement.state import Request, WorkerState
from placement.traces import TraceRequest, trace_prefix
from predictors.latency import load_profile_family

PROFILE = load_profile_family("llama-3.1-8b-a100").profile(1)
BT = 512


def _prefix(*blocks: int) -> Prefix:
    # chained: a block's hash names the blocks before it
    return Prefix(BT, tuple(hash(blocks[: i + 1]) for i in range(len(blocks))))


def _request(rid: str, prefix: Prefix | None, input_len: int, out: int = 100, arrival_s: float = 0.0) -> Request:
    return Request(rid, arrival_s, input_len, out, out, slo_ttft_s=5.0, slo_atgt_s=0.1, prefix=prefix)


def _worker(cache: bool = True, profile=PROFILE) -> WorkerState:
    return WorkerState("w", profile, prefix_cache=PrefixCache() if cache else None)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5), st.integers(0, 3), st.integers(1, 4)), max_size=40))
def test_kv_aggregates_count_each_shared_block_once(ops):
    worker = _worker()
    admitted: dict[str, Request] = {}
    for add, who, family, length in ops:
        rid = f"r{who}"
        if add and rid not in admitted:
            request = _request(rid, _prefix(*[family] * length), BT * length + 7)
            worker.admit(request)
            admitted[rid] = request
        elif not add and rid in admitted:
            worker.remove(rid)
            del admitted[rid]
        blocks = {h for r in admitted.values() for h in r.prefix.hashes}
        distinct = sum(r.input_len - r.prefix.tokens for r in admitted.values()) + BT * len(blocks)
        assert worker.kv_used_tokens == distinct
        finals = sum(r.upper_final_tokens - r.prefix.tokens for r in admitted.values()) + BT * len(blocks)
        assert worker.kv_final_tokens == finals
        assert worker.final_context_tokens == sum(r.upper_final_tokens for r in admitted.values())


def test_a_cached_prefix_shortens_the_ttft_and_the_prefill_load():
    worker = _worker()
    first = _request("a", _prefix(1, 2, 3, 4), 4 * BT + 100)
    cold_ttft = worker.ttft_s(first.input_len)
    worker.admit(first)
    worker.start_decode("a")
    second = _request("b", _prefix(1, 2, 3, 9), 4 * BT + 50)
    cached, shared = worker.prefix_hit(second)
    assert (cached, shared) == (3 * BT, 3 * BT)
    assert worker.ttft_s(second.input_len, cached_tokens=cached) < 0.5 * cold_ttft
    assert worker.prefill_s(second, cached) < 0.5 * worker.prefill_s(second)


def _cluster(trace, policy, workers=1, profile=PROFILE, prefix_caching=True):
    return Cluster(trace, profile, policy, make_queue_order("fifo"), make_length_model("oracle"),
                   SimConfig(slo_ttft_s=5.0, slo_atgt_s=0.1, workers=workers,
                             engine=EngineOptions(prefix_caching=prefix_caching)))


def _trace(*requests: tuple[float, int, tuple[int, ...]], output_len: int = 20) -> list[TraceRequest]:
    return [TraceRequest(t, n, output_len, hashes) for t, n, hashes in requests]


def test_the_engine_skips_the_cached_prefill_and_off_means_as_before():
    trace = _trace((0.0, 8 * BT, tuple(range(8))), (30.0, 8 * BT + 300, tuple(range(8)) + (99,)))
    on = _cluster(trace, make_policy("rr")).run()
    assert [r.cached_tokens for r in on.records] == [0, 8 * BT]
    off = _cluster(trace, make_policy("rr"), prefix_caching=False).run()
    plain = _cluster([TraceRequest(r.arrival_s, r.input_len, r.output_len) for r in trace], make_policy("rr"),
                     prefix_caching=False).run()
    assert off.summary == plain.summary and off.summary.prefix_hit_rate is None
    assert on.records[1].ttft_s < 0.3 * off.records[1].ttft_s
    assert on.summary.prefix_hit_rate == 8 * BT / sum(r.input_len for r in trace)


def test_cached_blocks_are_evicted_when_the_kv_is_needed():
    small = PROFILE.model_copy(update={"kv": PROFILE.kv.model_copy(update={"num_blocks": 16 * BT // 16})})
    small = small.model_copy(update={"max_model_len": 16 * BT})
    # a (6 blocks), then b (12) needs all but ~3.8 of a's blocks' room: a's tail goes first
    # (freed last-block-first, as vLLM frees them), so a's prefix again finds its first 3
    trace = _trace((0.0, 6 * BT, tuple(range(6))), (20.0, 12 * BT, tuple(range(100, 112))),
                   (40.0, 6 * BT, tuple(range(6))))
    records = _cluster(trace, make_policy("rr"), profile=small).run().records
    assert [r.cached_tokens for r in records] == [0, 0, 3 * BT]
    roomy = _cluster(trace, make_policy("rr")).run().records
    assert [r.cached_tokens for r in roomy] == [0, 0, 6 * BT - 1]


def test_aladdin_puts_a_request_where_its_prefix_is_cached():
    # w1 holds the conversation's prefix; w0 is the tighter fit by load, so best fit alone
    # would pick it
    trace = _trace((0.0, 8 * BT, tuple(range(8))), (0.5, 2 * BT, (500, 501)), (0.6, 2 * BT, (600, 601)),
                   (20.0, 9 * BT, tuple(range(9))), output_len=2000)
    aware = _cluster(trace, AladdinPolicy(), workers=2).run().records
    assert aware[3].worker_id == aware[0].worker_id and aware[3].cached_tokens == 8 * BT
    assert aware[3].predicted_cached_tokens == 8 * BT
    blind = _cluster(trace, AladdinPolicy(prefix_aware=False), workers=2).run().records
    assert blind[3].predicted_cached_tokens == 0


def test_prefix_affinity_follows_the_routers_rule():
    policy = PrefixAffinityPolicy(seed=1)
    w0, w1 = WorkerState("w0", PROFILE), WorkerState("w1", PROFILE)
    first = _request("a", _prefix(1, 2, 3), 3 * BT)
    assert policy.choose(first, [w0, w1], 0.0) is w0  # equal tenants and queues: seeded tie
    w0.admit(first)
    # a match over the threshold wins even against a longer queue (the default never balances)
    assert policy.choose(_request("b", _prefix(1, 2, 9), 3 * BT), [w0, w1], 0.0) is w0
    # no match: the smallest tenant (w1 has had nothing routed to it)
    assert policy.choose(_request("c", _prefix(7), BT), [w0, w1], 0.0) is w1
    balanced = PrefixAffinityPolicy(seed=1, imbalanced_threshold=0)
    balanced.choose(first, [w0, w1], 0.0)  # w0 holds one resident more than w1: imbalanced
    # p2c: of the two, the one with fewer ongoing requests, whatever the match
    assert {balanced.choose(_request(f"d{i}", _prefix(1, 2, 3), 3 * BT), [w0, w1], 0.0).id for i in range(20)} == {"w1"}


def test_pooled_hits_reuse_earlier_prompts_within_the_room():
    prompts = [(_prefix(1, 2), 2 * BT + 5), (_prefix(1, 2, 3), 3 * BT), (None, 50), (_prefix(1, 2, 3), 3 * BT)]
    assert pooled_hits(prompts) == [0, 2 * BT, 0, 3 * BT - 1]
    # room for two blocks: the third prompt's tail block goes first, then its head survives
    assert pooled_hits(prompts, 2 * BT) == [0, 2 * BT, 0, 2 * BT]
    assert pooled_hits(prompts, 0) == [0, 0, 0, 0]
    assert trace_prefix(TraceRequest(0.0, 2 * BT + 10, 5, (4, 5, 6))) == Prefix(BT, (4, 5))


def test_admission_gives_a_cached_prompt_the_deadline_of_its_shorter_prefill():
    from placement.admission import Admission, AdmissionLimits
    from placement.live import LiveCluster
    from placement.policies import make_policies

    parts = make_policies("aladdin", admission=True)
    cluster = LiveCluster(PROFILE, parts.policy, loop=parts.loop, prefix_caching=True)
    admission = Admission(cluster, parts.wait_policy, AdmissionLimits())
    long_prompt = 40 * BT
    holder = cluster.worker("w0")
    holder.admit(_request("a", _prefix(*range(40)), long_prompt), now_s=0.0)
    cluster.worker("w1")
    again = _request("b", _prefix(*range(40), 99), long_prompt + BT)
    fresh = _request("c", _prefix(*range(200, 241)), long_prompt + BT)
    assert admission.deadline_s(again) - admission.deadline_s(fresh) > 0.5 * PROFILE.prefill_time_s([long_prompt])

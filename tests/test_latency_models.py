"""Latency/KV models: fitting, monotonicity, schema round-trips, helpers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from predictors.latency.fit import (
    DecodeSample,
    PrefillSample,
    fit_decode,
    fit_latency,
    fit_prefill,
    mape_pct,
    nnls_relative,
    split_held_out,
)
from predictors.latency.kv import gpu_kv_blocks, kv_bytes_per_token
from predictors.latency.profile import (
    DecodeModel,
    FitReport,
    KVCacheModel,
    PrefillModel,
    WorkerProfile,
    load_profile,
)

coef = st.floats(min_value=0, max_value=1e-2, allow_nan=False, allow_infinity=False)
lens = st.lists(st.integers(min_value=1, max_value=8192), min_size=1, max_size=32)


def make_profile(prefill: PrefillModel | None = None, decode: DecodeModel | None = None) -> WorkerProfile:
    return WorkerProfile(
        model="m",
        hardware="hw",
        tp=2,
        max_model_len=4096,
        source="test",
        prefill=prefill or PrefillModel(c0_s=0.01, c1_s_per_token=1e-4, c2_s_per_token_sq=1e-8),
        decode=decode or DecodeModel(d0_s=0.02, d1_s_per_seq=1e-4, d2_s_per_context_token=1e-7),
        kv=KVCacheModel(block_size=16, num_blocks=100, bytes_per_token=1024),
        fit=FitReport(prefill_mape_pct=1, decode_mape_pct=2, prefill_points=10, decode_points=10, held_out_fraction=0.25),
    )


def test_fit_recovers_known_prefill_coefficients() -> None:
    truth = PrefillModel(c0_s=0.005, cp_s_per_prompt=1.5e-3, c1_s_per_token=2e-5, c2_s_per_token_sq=3e-9)
    batches = [(n,) * b for n in (16, 128, 512, 2048) for b in (1, 2, 4)] + [(2048, 16), (512, 16, 16)]
    model = fit_prefill([PrefillSample(b, truth.time_s(b)) for b in batches])
    assert model.c0_s == pytest.approx(truth.c0_s, rel=1e-6)
    assert model.cp_s_per_prompt == pytest.approx(truth.cp_s_per_prompt, rel=1e-6)
    assert model.c1_s_per_token == pytest.approx(truth.c1_s_per_token, rel=1e-6)
    assert model.c2_s_per_token_sq == pytest.approx(truth.c2_s_per_token_sq, rel=1e-6)


def test_fit_recovers_known_decode_coefficients() -> None:
    truth = DecodeModel(d0_s=0.01, d1_s_per_seq=5e-5, d2_s_per_context_token=2e-8)
    points = [(b, b * c) for b in (1, 4, 16, 64) for c in (128, 1024)]
    model = fit_decode([DecodeSample(b, ctx, truth.step_s(b, ctx)) for b, ctx in points])
    assert model.d0_s == pytest.approx(truth.d0_s, rel=1e-6)
    assert model.d2_s_per_context_token == pytest.approx(truth.d2_s_per_context_token, rel=1e-6)


def test_nnls_clamps_negative_slopes_to_zero() -> None:
    # Time falling with tokens would fit a negative slope; NNLS must not.
    c = nnls_relative([[1, 1], [1, 2], [1, 3]], [3.0, 2.0, 1.0])
    assert all(x >= 0 for x in c)
    assert c[1] == 0


def test_fit_rejects_too_few_or_non_positive_samples() -> None:
    with pytest.raises(ValueError):
        fit_prefill([PrefillSample((10,), 1.0)])
    with pytest.raises(ValueError):
        fit_decode([DecodeSample(1, 10, 0.0), DecodeSample(2, 20, 1.0), DecodeSample(3, 30, 1.0)])


def test_held_out_split_and_report_use_points_not_fitted() -> None:
    truth = PrefillModel(c0_s=0.001, c1_s_per_token=1e-5, c2_s_per_token_sq=0)
    # The held-out point (index 1) is wildly off the line: only a truly held-out score sees it.
    prefill = [PrefillSample((n,), truth.time_s((n,))) for n in (16, 32, 64, 128, 256, 512, 1024, 2048)]
    prefill[1] = PrefillSample((32,), 10 * truth.time_s((32,)))
    decode = [DecodeSample(b, 100 * b, 0.01 + 1e-4 * b) for b in range(1, 9)]
    fitted, held = split_held_out(prefill, 4)
    assert prefill[1] in held and prefill[1] not in fitted
    result = fit_latency(prefill, decode, held_out_every=4)
    assert result.report.prefill_mape_pct > 40
    assert result.report.decode_mape_pct < 1e-3


def test_mape() -> None:
    assert mape_pct([1.1, 0.9], [1.0, 1.0]) == pytest.approx(10.0)
    with pytest.raises(ValueError):
        mape_pct([], [])


@given(c0=coef, c1=coef, c2=coef, base=lens, extra=st.integers(min_value=1, max_value=4096), idx=st.integers(0, 31))
def test_prefill_more_tokens_never_less_time(c0: float, c1: float, c2: float, base: list[int], extra: int, idx: int) -> None:
    model = PrefillModel(c0_s=c0, c1_s_per_token=c1, c2_s_per_token_sq=c2)
    longer = list(base)
    longer[idx % len(base)] += extra
    assert model.time_s(longer) >= model.time_s(base)
    assert model.time_s(base + [extra]) >= model.time_s(base)


@given(
    d0=coef, d1=coef, d2=coef,
    batch=st.integers(1, 512), ctx=st.integers(0, 10**6),
    more_batch=st.integers(0, 64), more_ctx=st.integers(0, 10**5),
)
def test_decode_more_work_never_less_time(d0: float, d1: float, d2: float, batch: int, ctx: int, more_batch: int, more_ctx: int) -> None:
    model = DecodeModel(d0_s=d0, d1_s_per_seq=d1, d2_s_per_context_token=d2)
    assert model.step_s(batch + more_batch, ctx + more_ctx) >= model.step_s(batch, ctx)


@settings(max_examples=50)
@given(
    samples=st.lists(
        st.tuples(lens, st.floats(min_value=1e-4, max_value=10)), min_size=4, max_size=20
    )
)
def test_fitted_prefill_is_monotone_on_arbitrary_data(samples: list[tuple[list[int], float]]) -> None:
    model = fit_prefill([PrefillSample(tuple(l), t) for l, t in samples])
    assert min(model.c0_s, model.c1_s_per_token, model.c2_s_per_token_sq) >= 0
    assert model.time_s([100, 200]) <= model.time_s([100, 201])


def test_negative_coefficients_are_rejected() -> None:
    with pytest.raises(ValidationError):
        PrefillModel(c0_s=0, c1_s_per_token=-1e-6, c2_s_per_token_sq=0)
    with pytest.raises(ValidationError):
        DecodeModel(d0_s=-1, d1_s_per_seq=0, d2_s_per_context_token=0)


def test_empty_batches_cost_nothing() -> None:
    p = make_profile()
    assert p.prefill_time_s([]) == 0.0
    assert p.decode_step_s(0, 0) == 0.0


def test_ttft_adds_queued_prefill_to_own_prefill() -> None:
    p = make_profile()
    queued = [300, 500]
    own = p.prefill_time_s([700])
    assert p.ttft_s(700) == pytest.approx(own)
    assert p.ttft_s(700, queued_tokens=sum(queued), queued_squared_tokens=sum(n * n for n in queued)) == pytest.approx(
        p.prefill_time_s(queued) + own
    )


def test_atgt_is_decode_step_time() -> None:
    p = make_profile()
    assert p.atgt_s(8, 8000) == pytest.approx(0.02 + 8e-4 + 8000e-7)


def test_kv_capacity_and_formulas() -> None:
    kv = KVCacheModel(block_size=16, num_blocks=100, bytes_per_token=1024)
    assert kv.capacity_tokens == 1600
    assert kv.blocks_for(17) == 2 and kv.blocks_for(16) == 1
    assert kv_bytes_per_token(num_layers=80, num_kv_heads=8, head_dim=128, dtype_bytes=2) == 327_680
    gib = 1024**3
    # 10 GiB x 0.9 - 4 GiB weights/2 GPUs... computed by hand: per GPU 9 - 2 - 1 = 6 GiB free.
    blocks = gpu_kv_blocks(
        gpu_memory_bytes=10 * gib, tp=2, num_params=2 * gib, bytes_per_token=1024,
        block_size=16, activation_reserve_bytes_per_gpu=1 * gib,
    )
    assert blocks == int(2 * 6 * gib // (1024 * 16))
    assert gpu_kv_blocks(gpu_memory_bytes=gib, tp=1, num_params=gib, bytes_per_token=1024) == 0


@given(tp=st.sampled_from([1, 2, 4, 8]), mem=st.integers(20, 200))
def test_kv_blocks_grow_with_memory_and_tp(tp: int, mem: int) -> None:
    gib = 1024**3
    args = dict(num_params=7 * 10**9, bytes_per_token=524_288)
    assert gpu_kv_blocks(gpu_memory_bytes=(mem + 1) * gib, tp=tp, **args) >= gpu_kv_blocks(gpu_memory_bytes=mem * gib, tp=tp, **args)
    assert gpu_kv_blocks(gpu_memory_bytes=mem * gib, tp=2 * tp, **args) >= gpu_kv_blocks(gpu_memory_bytes=mem * gib, tp=tp, **args)


def test_profile_json_round_trip(tmp_path) -> None:
    p = make_profile()
    path = p.save(tmp_path / "a" / "tp2.json")
    assert load_profile(path) == p
    assert p.family == "m-hw"


def test_profile_rejects_unknown_keys() -> None:
    data = make_profile().model_dump()
    data["prefill"]["c3"] = 1.0
    with pytest.raises(ValidationError):
        WorkerProfile.model_validate(data)

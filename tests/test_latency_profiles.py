"""Committed profiles and families, and the operator-data composition (when the data exists)."""

from __future__ import annotations

from pathlib import Path

import pytest

from predictors.latency.families import UnknownProfileFamily, list_profile_families, load_profile_family

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LONG_CONTEXT_FAMILIES = ["llama-3.1-8b-a100", "llama-3.1-70b-a100"]
GPU_FAMILIES = ["llama-2-7b-a100", "llama-2-7b-h100", "llama-2-70b-a100", "llama-2-70b-h100", *LONG_CONTEXT_FAMILIES]


def test_committed_families_load_and_are_consistent() -> None:
    names = list_profile_families()
    for name in GPU_FAMILIES + ["tiny-cpu"]:
        assert name in names
    for name in names:
        family = load_profile_family(name)
        assert family.tps
        for tp in family.tps:
            p = family.profile(tp)
            assert p.tp == tp and p.family == name
            assert p.kv.capacity_tokens > 0
            assert p.prefill_time_s([512]) > 0 and p.decode_step_s(1, 512) > 0


def test_unknown_family_error_lists_available() -> None:
    with pytest.raises(UnknownProfileFamily) as err:
        load_profile_family("no-such-model-tpu")
    assert "llama-2-7b-a100" in str(err.value)


def test_missing_tp_error_names_available() -> None:
    family = load_profile_family("llama-2-70b-a100")
    with pytest.raises(KeyError, match="available"):
        family.profile(3)


def test_gpu_profiles_scale_sensibly() -> None:
    """More GPUs per worker: faster steps and more KV room; H100 faster than A100."""
    for name in GPU_FAMILIES:
        family = load_profile_family(name)
        caps = [family.profile(tp).kv.capacity_tokens for tp in family.tps]
        assert caps == sorted(caps)
        small, big = family.profile(family.tps[0]), family.profile(family.tps[-1])
        assert big.prefill_time_s([2048]) < small.prefill_time_s([2048])
    for size in ("7b", "70b"):
        a100, h100 = load_profile_family(f"llama-2-{size}-a100"), load_profile_family(f"llama-2-{size}-h100")
        for tp in a100.tps:
            assert h100.profile(tp).prefill_time_s([2048]) < a100.profile(tp).prefill_time_s([2048])
            assert h100.profile(tp).decode_step_s(16, 16 * 1024) < a100.profile(tp).decode_step_s(16, 16 * 1024)


def test_kv_bytes_per_token_of_llama2() -> None:
    # 2 x 32 layers x 32 kv heads x 128 x 2 bytes and 2 x 80 x 8 x 128 x 2.
    assert load_profile_family("llama-2-7b-a100").profile(1).kv.bytes_per_token == 524_288
    assert load_profile_family("llama-2-70b-a100").profile(8).kv.bytes_per_token == 327_680


def test_llama_3_1_families_cover_their_tps_and_context() -> None:
    """8B at every TP, 70B where its 141 GB of weights fit; 131,072-token context wherever the
    KV cache holds it, else the cache's size (vLLM refuses a longer max_model_len)."""
    small, big = load_profile_family("llama-3.1-8b-a100"), load_profile_family("llama-3.1-70b-a100")
    assert small.tps == [1, 2, 4, 8] and big.tps == [2, 4, 8]
    for family in (small, big):
        for tp in family.tps:
            p = family.profile(tp)
            assert p.max_model_len == min(131072, p.kv.capacity_tokens)
    assert all(small.profile(tp).max_model_len == 131072 for tp in small.tps)
    assert big.profile(2).max_model_len < 131072 and big.profile(4).max_model_len == 131072


def test_gqa_kv_holds_about_4x_the_tokens_of_llama2_7b() -> None:
    """8 KV heads instead of 32: a quarter of the bytes per token, so ~4x the tokens per GiB of
    cache (a little less per worker: the 8B's weights take 2.6 GB more)."""
    llama2, llama3 = load_profile_family("llama-2-7b-a100"), load_profile_family("llama-3.1-8b-a100")
    assert llama3.profile(1).kv.bytes_per_token == 131_072 == llama2.profile(1).kv.bytes_per_token // 4
    for tp in llama2.tps:
        ratio = llama3.profile(tp).kv.capacity_tokens / llama2.profile(tp).kv.capacity_tokens
        assert 3.7 < ratio <= 4.0
    # TP1 holds a full 131k-token request more than three times over.
    assert llama3.profile(1).kv.capacity_tokens > 3 * 131072


def test_long_prompt_prefill_is_finite_and_superlinear() -> None:
    for name in LONG_CONTEXT_FAMILIES:
        family = load_profile_family(name)
        for tp in family.tps:
            p = family.profile(tp)
            lens = [n for n in (1024, 8192, 32768, 131072) if n <= p.max_model_len]
            times = [p.prefill_time_s([n]) for n in lens]
            assert all(0 < t < 600 for t in times)
            assert times == sorted(times)
            # Attention's squared term: a 4x longer prompt costs more than 4x.
            assert p.prefill.c2_s_per_token_sq > 0
            assert times[-1] / lens[-1] > times[0] / lens[0]


def test_long_context_decode_grows_with_context_and_batch() -> None:
    for name in LONG_CONTEXT_FAMILIES:
        family = load_profile_family(name)
        for tp in family.tps:
            p = family.profile(tp)
            contexts = [c for c in (1024, 4096, 16384, 32768, 131072) if c <= p.max_model_len]
            steps = [p.decode_step_s(1, c) for c in contexts]
            assert len(steps) >= 3 and steps == sorted(steps) and steps[0] < steps[-1]
            assert p.decode_step_s(1, 1024) < p.decode_step_s(8, 8 * 1024) < p.decode_step_s(16, 16 * 1024)


def test_llama_3_1_8b_matches_llama_2_7b_where_the_shapes_agree() -> None:
    """Same layers, hidden size and query heads: prefill and a short decode step within 15 %
    (the 8B's MLP is 30 % wider); the decode cost per context token ~4x lower (GQA reads a
    quarter of the KV bytes)."""
    llama2, llama3 = load_profile_family("llama-2-7b-a100"), load_profile_family("llama-3.1-8b-a100")
    for tp in llama2.tps:
        old, new = llama2.profile(tp), llama3.profile(tp)
        assert new.prefill_time_s([2048]) == pytest.approx(old.prefill_time_s([2048]), rel=0.15)
        assert new.decode_step_s(1, 1024) == pytest.approx(old.decode_step_s(1, 1024), rel=0.15)
        ratio = old.decode.d2_s_per_context_token / new.decode.d2_s_per_context_token
        assert 3.0 < ratio < 5.0


needs_data = pytest.mark.skipif(not (DATA / "vidur_profiles").is_dir(), reason="shared operator data not present")


@needs_data
def test_composition_matches_source_md_sanity_numbers() -> None:
    """vidur SOURCE.md: Llama-2-7b A100 TP1, linear ops + attention, ~36.9 ms for a 512-token
    prefill with vidur's (slower) attention and 9.8 / 31.7 ms decode at b=1 / 128, ctx 512."""
    from predictors.latency.ops_compose import GPUS, LLAMA_2, ComposedWorker

    w = ComposedWorker(DATA, LLAMA_2[0], GPUS[0], 1)
    assert w.prefill_s((128,)) * 1e3 == pytest.approx(12.9, rel=0.1)
    assert w.prefill_s((512,)) * 1e3 == pytest.approx(36.9, rel=0.1)
    assert w.decode_step_s(1, 512) * 1e3 == pytest.approx(9.8, rel=0.1)
    assert w.decode_step_s(128, 128 * 512) * 1e3 == pytest.approx(31.7, rel=0.15)
    # aiconfigurator SOURCE.md: A100 context attention 0.936 ms at isl=4096 (32/32 heads).
    assert w.context.sequence_s(4096) * 1e3 == pytest.approx(0.936, rel=0.02)


@needs_data
def test_committed_gpu_profiles_match_a_fresh_composition() -> None:
    from predictors.latency.ops_compose import GPUS, LLAMA_2, compose_profile

    fresh = compose_profile(DATA, LLAMA_2[1], GPUS[1], 4)
    assert fresh == load_profile_family("llama-2-70b-h100").profile(4)


@needs_data
def test_llama_3_1_8b_profile_is_the_composition_and_extrapolates_it() -> None:
    """The committed profile is what `aladdin profile --from-ops` fits now. The fit stops at the
    tables' reach (16,384-token prompts, 32,768-token decode contexts at TP1); beyond it the
    fitted prefill stays within 25 % of the composition's own extrapolation (attention
    quadratic, linear ops proportional to tokens) up to 131,072 tokens."""
    from predictors.latency.ops_compose import GPUS, LLAMA_3_1, ComposedWorker, compose_profile

    family = load_profile_family("llama-3.1-8b-a100")
    assert compose_profile(DATA, LLAMA_3_1[0], GPUS[0], 1) == family.profile(1)
    for tp in family.tps:
        w = ComposedWorker(DATA, LLAMA_3_1[0], GPUS[0], tp)
        assert w.context.longest_prompt == 16384
        for n in (32768, 65536, 131072):
            assert family.profile(tp).prefill_time_s([n]) == pytest.approx(w.prefill_s((n,)), rel=0.25)
    assert ComposedWorker(DATA, LLAMA_3_1[0], GPUS[0], 1).generation.longest_context == 32768


@needs_data
def test_decode_table_coverage_follows_the_timed_rows() -> None:
    """aiconfigurator timed 32 q / 8 kv heads up to 8 requests x 32,768 tokens or 64 x 4,096:
    past that the table only has its nearest row, so the decode grid leaves those points out."""
    from predictors.latency.ops_compose import GPUS, LLAMA_3_1, ComposedWorker

    generation = ComposedWorker(DATA, LLAMA_3_1[0], GPUS[0], 1).generation
    assert generation.covers(8, 32768) and generation.covers(64, 4096)
    assert not generation.covers(16, 32768) and not generation.covers(128, 4096)
    assert not generation.covers(1, 65536)

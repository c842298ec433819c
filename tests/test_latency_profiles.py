"""Committed profiles and families, and the operator-data composition (when the data exists)."""

from __future__ import annotations

from pathlib import Path

import pytest

from predictors.latency.families import UnknownProfileFamily, list_profile_families, load_profile_family

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GPU_FAMILIES = ["llama-2-7b-a100", "llama-2-7b-h100", "llama-2-70b-a100", "llama-2-70b-h100"]


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

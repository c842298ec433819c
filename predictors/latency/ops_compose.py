"""GPU worker profiles without a GPU: compose iteration times from operator measurements and
fit the same prefill/decode models the engine profiler fits.

Sources (read from a data folder; nothing is copied into the project):
- vidur_profiles/compute/<gpu>/meta-llama/<model>/mlp.csv: per-layer non-attention ops
  (norms, QKV/O projections, rope, MLP, residual add) and the embedding, by batch tokens and TP
  (Llama-2 to 4,096 tokens on A100 and H100; Meta-Llama-3 to 32,768 tokens, A100 only).
- aiconfigurator_perf/<gpu>_sxm/attention/vllm/0.14.0: vLLM prefill ("context") and decode
  ("generation") attention per layer, by batch, length and per-GPU heads.
- vidur_profiles/network/<gpu>_dgx/all_reduce.csv: the tensor-parallel all-reduce (2 per layer).

Iteration time = layers x (linear ops + attention + 2 x all-reduce when tp > 1) + embedding,
as vidur composes it. Not in the data, hence not in the profiles: LM head, sampler, scheduler
and other CPU overheads, KV-cache writes.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator

from predictors.latency.fit import DecodeSample, PrefillSample, fit_latency
from predictors.latency.kv import GIB, gpu_kv_blocks, kv_bytes_per_token
from predictors.latency.profile import KVCacheModel, WorkerProfile

MS = 1e-3
LINEAR_OPS = (
    "input_layernorm",
    "attn_pre_proj",
    "attn_rope",
    "attn_post_proj",
    "post_attention_layernorm",
    "mlp_up_proj",
    "mlp_act",
    "mlp_down_proj",
    "add",
)


@dataclass(frozen=True)
class ModelShape:
    """A dense Llama-style model as the operator tables need it (HF config values)."""

    name: str
    vidur_path: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    num_params: int
    max_model_len: int
    gpus: tuple[str, ...] = ("a100", "h100")  # GPU kinds vidur timed this model's linear ops on


@dataclass(frozen=True)
class GpuSpec:
    """A GPU kind and where its tables live."""

    name: str
    description: str
    memory_bytes: int
    vidur_compute: str
    vidur_network: str
    aiconfigurator: str


LLAMA_2 = (
    ModelShape("llama-2-7b", "meta-llama/Llama-2-7b-hf", 32, 4096, 32, 32, 128, 6_738_415_616, 4096),
    ModelShape("llama-2-70b", "meta-llama/Llama-2-70b-hf", 80, 8192, 64, 8, 128, 68_976_648_192, 4096),
)
# Llama 3.1 has Llama 3's layer shapes (only RoPE scaling and the context length differ), so
# vidur's Meta-Llama-3 tables time its linear ops. vidur has no Llama-3 tables on H100.
LLAMA_3_1 = (
    ModelShape("llama-3.1-8b", "meta-llama/Meta-Llama-3-8B", 32, 4096, 32, 8, 128, 8_030_261_248, 131072, ("a100",)),
    ModelShape(
        "llama-3.1-70b", "meta-llama/Meta-Llama-3-70B", 80, 8192, 64, 8, 128, 70_553_706_496, 131072, ("a100",)
    ),
)
MODELS = LLAMA_2 + LLAMA_3_1
GPUS = (
    GpuSpec("a100", "NVIDIA A100-SXM4-80GB (DGX A100, NVSwitch)", 80 * GIB, "a100", "a100_dgx", "a100_sxm"),
    GpuSpec("h100", "NVIDIA H100-SXM 80GB HBM3 (DGX H100, NVSwitch)", 80 * GIB, "h100", "h100_dgx", "h100_sxm"),
)
TP_DEGREES = (1, 2, 4, 8)
BLOCK_SIZE = 16


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _median_by_key(pairs: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Collapse repeated x values to the median y; sorted by x."""
    groups: dict[float, list[float]] = defaultdict(list)
    for x, y in pairs:
        groups[x].append(y)
    xs = np.array(sorted(groups))
    return xs, np.array([float(np.median(groups[x])) for x in xs])


def _interp_loglog(x: float, xs: np.ndarray, ys: np.ndarray) -> float:
    """Piecewise-linear in log-log space inside the grid; beyond the top, proportional to x
    (large batches are throughput-bound); below the bottom, the first value (latency-bound)."""
    if x <= xs[0]:
        return float(ys[0])
    if x >= xs[-1]:
        return float(ys[-1] * x / xs[-1])
    return float(np.exp(np.interp(math.log(x), np.log(xs), np.log(ys))))


class LinearOps:
    """vidur mlp.csv: per-layer time of the non-attention ops, and the embedding, by tokens."""

    def __init__(self, path: Path, tp: int):
        rows = [r for r in _read_csv(path) if int(r["num_tensor_parallel_workers"]) == tp]
        if not rows:
            raise ValueError(f"{path} has no rows for tp={tp}")
        layer = [(float(r["num_tokens"]), sum(float(r[f"time_stats.{op}.median"]) for op in LINEAR_OPS)) for r in rows]
        emb = [(float(r["num_tokens"]), float(r["time_stats.emb.median"])) for r in rows]
        self._layer = _median_by_key(layer)
        self._emb = _median_by_key(emb)

    def layer_s(self, tokens: int) -> float:
        return _interp_loglog(tokens, *self._layer) * MS

    def embedding_s(self, tokens: int) -> float:
        return _interp_loglog(tokens, *self._emb) * MS


class AllReduce:
    """vidur all_reduce.csv: one all-reduce over `tp` GPUs within a node, by message bytes."""

    def __init__(self, path: Path, tp: int):
        rows = [r for r in _read_csv(path) if int(r["num_workers"]) == tp and int(r["devices_per_node"]) == tp]
        if not rows:
            raise ValueError(f"{path} has no single-node rows for {tp} GPUs")
        self._table = _median_by_key([(float(r["size"]), float(r["time_stats.all_reduce.median"])) for r in rows])

    def time_s(self, message_bytes: int) -> float:
        return _interp_loglog(message_bytes, *self._table) * MS


def _head_scale(available: set[tuple[int, int]], q_heads: int, kv_heads: int) -> tuple[int, int, int]:
    """Pick a measured (q, kv) head pair and a multiplier for these per-GPU heads: the exact
    pair if measured, else the pair divided by the smallest factor that is (attention time is
    proportional to heads at a fixed shape; the tables stop at 8 KV heads for decode)."""
    for scale in (1, 2, 4, 8, 16):
        if q_heads % scale == 0 and kv_heads % scale == 0 and (q_heads // scale, kv_heads // scale) in available:
            return q_heads // scale, kv_heads // scale, scale
    raise ValueError(f"no attention rows for {q_heads} q / {kv_heads} kv heads per GPU")


class ContextAttention:
    """aiconfigurator context_attention_perf.csv: prefill attention of one sequence per layer."""

    def __init__(self, path: Path, q_heads: int, kv_heads: int):
        rows = [r for r in _read_csv(path) if r["kv_cache_dtype"] == "bfloat16" and r["step"] == "0"]
        q, kv, self._scale = _head_scale({(int(r["num_heads"]), int(r["num_key_value_heads"])) for r in rows}, q_heads, kv_heads)
        mine = [r for r in rows if int(r["num_heads"]) == q and int(r["num_key_value_heads"]) == kv and r["batch_size"] == "1"]
        self._table = _median_by_key([(float(r["isl"]), float(r["latency"])) for r in mine])

    @property
    def longest_prompt(self) -> int:
        """The longest prompt the table timed; longer ones are extrapolated."""
        return int(self._table[0][-1])

    def sequence_s(self, length: int) -> float:
        # Beyond the grid, attention grows with the square of the length.
        xs, ys = self._table
        if length > xs[-1]:
            return float(ys[-1] * (length / xs[-1]) ** 2) * self._scale * MS
        return _interp_loglog(length, xs, ys) * self._scale * MS


class GenerationAttention:
    """aiconfigurator generation_attention_perf.csv: decode attention of a batch per layer,
    by batch size and per-request context (interpolated in log-log space).

    Heads beyond the table's 8 KV heads are folded into the batch: the decode kernel spreads
    work over batch x heads, so b requests with s x h heads cost about b x s requests with h
    heads. (Multiplying the time by s instead overcounts the kernel's fixed cost at small b.)"""

    def __init__(self, path: Path, q_heads: int, kv_heads: int):
        rows = [r for r in _read_csv(path) if r["kv_cache_dtype"] == "bfloat16"]
        q, kv, self._batch_scale = _head_scale({(int(r["num_heads"]), int(r["num_key_value_heads"])) for r in rows}, q_heads, kv_heads)
        mine = [r for r in rows if int(r["num_heads"]) == q and int(r["num_key_value_heads"]) == kv]
        points = np.log([[float(r["batch_size"]), float(r["step"])] for r in mine])
        values = np.log([float(r["latency"]) for r in mine])
        self._inside = LinearNDInterpolator(points, values)
        self._nearest = NearestNDInterpolator(points, values)
        # The timed region: a row at `step` holds step + 1 tokens per request after the new one.
        self.longest_context = max(int(r["step"]) + 1 for r in mine)
        self._largest_batch = max(int(r["batch_size"]) for r in mine)
        self._most_tokens = max(int(r["batch_size"]) * (int(r["step"]) + 1) for r in mine)

    def covers(self, batch_size: int, context_per_request: int) -> bool:
        """Whether the table timed this batch and context (the kernel was not run past the
        GPU's memory, so large batches stop at shorter contexts); outside it, `batch_s`
        returns the nearest timed point, which underestimates."""
        batch = batch_size * self._batch_scale
        return (
            batch <= self._largest_batch
            and context_per_request <= self.longest_context
            and batch * context_per_request <= self._most_tokens
        )

    def batch_s(self, batch_size: int, context_per_request: float) -> float:
        point = (math.log(batch_size * self._batch_scale), math.log(max(context_per_request, 1.0)))
        value = float(self._inside(*point))
        if math.isnan(value):
            value = float(self._nearest(*point))
        return math.exp(value) * MS


class ComposedWorker:
    """Iteration times of one (model, GPU, tp) worker composed from the operator tables."""

    def __init__(self, data_dir: Path, model: ModelShape, gpu: GpuSpec, tp: int):
        self.model, self.gpu, self.tp = model, gpu, tp
        vidur = data_dir / "vidur_profiles"
        attn = data_dir / "aiconfigurator_perf" / gpu.aiconfigurator / "attention" / "vllm" / "0.14.0"
        self.linear = LinearOps(vidur / "compute" / gpu.vidur_compute / model.vidur_path / "mlp.csv", tp)
        self.all_reduce = AllReduce(vidur / "network" / gpu.vidur_network / "all_reduce.csv", tp) if tp > 1 else None
        q, kv = model.num_heads // tp, model.num_kv_heads // tp
        self.context = ContextAttention(attn / "context_attention_perf.csv", q, kv)
        self.generation = GenerationAttention(attn / "generation_attention_perf.csv", q, kv)

    def _comm_s(self, tokens: int) -> float:
        # Two all-reduces per layer (after attention and after the MLP) of tokens x hidden bf16.
        return 2 * self.all_reduce.time_s(tokens * self.model.hidden_size * 2) if self.all_reduce else 0.0

    def prefill_s(self, input_lens: tuple[int, ...]) -> float:
        tokens = sum(input_lens)
        layer = self.linear.layer_s(tokens) + sum(self.context.sequence_s(n) for n in input_lens) + self._comm_s(tokens)
        return self.model.num_layers * layer + self.linear.embedding_s(tokens)

    def decode_step_s(self, batch_size: int, context_tokens: int) -> float:
        layer = (
            self.linear.layer_s(batch_size)
            + self.generation.batch_s(batch_size, context_tokens / batch_size)
            + self._comm_s(batch_size)
        )
        return self.model.num_layers * layer + self.linear.embedding_s(batch_size)


def gpu_kv_model(model: ModelShape, gpu: GpuSpec, tp: int) -> KVCacheModel:
    """KV cache of a worker of `tp` GPUs serving `model` in bf16 (see kv.gpu_kv_blocks)."""
    per_token = kv_bytes_per_token(model.num_layers, model.num_kv_heads, model.head_dim, 2)
    blocks = gpu_kv_blocks(gpu_memory_bytes=gpu.memory_bytes, tp=tp, num_params=model.num_params, bytes_per_token=per_token)
    return KVCacheModel(block_size=BLOCK_SIZE, num_blocks=blocks, bytes_per_token=per_token)


def prefill_grid(longest_prompt: int, capacity_tokens: int) -> list[tuple[int, ...]]:
    """Uniform batches (lengths 16..longest_prompt, 1..64 prompts, <= 32768 tokens, the span of
    the splitwise runs and of vidur's Llama-3 tables) plus mixed-length batches that separate
    sum(l^2) from sum(l); no batch holds more tokens than the KV cache."""
    lengths = [n for n in (16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384) if n <= longest_prompt]
    grid = [(n,) * b for n in lengths for b in (1, 2, 4, 8, 16, 32, 64) if n * b <= min(32768, capacity_tokens)]
    grid += [(longest_prompt, 128), (longest_prompt // 2,) + (64,) * 16, (2048, 512, 512, 128, 128, 128)]
    return grid


def decode_grid(capacity_tokens: int, max_model_len: int, generation: GenerationAttention) -> list[tuple[int, int]]:
    """(batch size, total context tokens) pairs that fit in the KV cache and that the decode
    attention table timed."""
    return [
        (b, b * c)
        for c in (128, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
        for b in (1, 2, 4, 8, 16, 32, 64, 128, 256)
        if c <= max_model_len and b * c <= capacity_tokens and generation.covers(b, c)
    ]


def _reach_note(max_model_len: int, prefill: list[PrefillSample], decode: list[DecodeSample]) -> str:
    """Say where the fit extrapolates, when the context is longer than the data reached."""
    longest_prompt = max(max(s.input_lens) for s in prefill)
    longest_context = max(s.context_tokens // s.batch_size for s in decode)
    if max_model_len <= min(longest_prompt, longest_context):
        return ""
    return (
        f" Fitted on prompts <= {longest_prompt} tokens (the context-attention table) and decode contexts "
        f"<= {longest_context} tokens per request (the generation-attention table); longer ones, up to "
        f"max_model_len {max_model_len}, extrapolate the fit."
    )


def compose_profile(data_dir: Path, model: ModelShape, gpu: GpuSpec, tp: int) -> WorkerProfile:
    """Fit one worker profile to iteration times composed from the operator tables."""
    worker = ComposedWorker(data_dir, model, gpu, tp)
    kv = gpu_kv_model(model, gpu, tp)
    # vLLM refuses a context longer than the KV cache holds.
    max_model_len = min(model.max_model_len, kv.capacity_tokens)
    longest_prompt = min(max_model_len, worker.context.longest_prompt)
    prefill = [PrefillSample(lens, worker.prefill_s(lens)) for lens in prefill_grid(longest_prompt, kv.capacity_tokens)]
    decode = [
        DecodeSample(b, ctx, worker.decode_step_s(b, ctx))
        for b, ctx in decode_grid(kv.capacity_tokens, max_model_len, worker.generation)
    ]
    fitted = fit_latency(prefill, decode)
    return WorkerProfile(
        model=model.name,
        hardware=gpu.name,
        tp=tp,
        max_model_len=max_model_len,
        source=(
            "aladdin profile --from-ops: vidur_profiles (microsoft/vidur 7d47513, MIT) per-layer linear ops, "
            f"embedding and {gpu.vidur_network} all-reduce; aiconfigurator_perf (ai-dynamo/aiconfigurator 095f58a, "
            "Apache-2.0) vLLM 0.14 context/generation attention"
        ),
        notes=(
            f"{gpu.description}. Fit MAPE is against the composed operator times on held-out grid points; "
            "LM head, sampler and CPU overheads are not in the data. KV: 80 GiB x 0.9 x tp - 2 bytes/param "
            "- 2 GiB/GPU activation reserve, block 16." + _reach_note(max_model_len, prefill, decode)
        ),
        prefill=fitted.prefill,
        decode=fitted.decode,
        kv=kv,
        fit=fitted.report,
    )


def build_gpu_profiles(data_dir: Path) -> Iterator[WorkerProfile]:
    """Every model x GPU x TP the data covers whose weights fit in GPU memory."""
    for model in MODELS:
        for gpu in (g for g in GPUS if g.name in model.gpus):
            for tp in TP_DEGREES:
                if model.num_kv_heads % tp or model.num_heads % tp:
                    continue
                if gpu_kv_model(model, gpu, tp).num_blocks == 0:
                    continue  # weights alone exceed the GPUs' memory
                yield compose_profile(data_dir, model, gpu, tp)

"""The application's one configuration schema, shared by `serve run` YAML files, builder
arguments (`serve run serve_app.app:build_app workers.num_workers=2 ...`) and Python callers."""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from placement.admission import AdmissionLimits
from placement.controller import ControllerSettings, ScalingSettings
from placement.packing_budget import DEFAULT_TARGET_ATTAINMENT
from placement.policies.registry import is_slo_aware
from predictors.latency.families import list_profile_families, load_profile_family
from predictors.latency.profile import WorkerProfile, vllm_token_budget

GiB = 1 << 30


class ConfigError(ValidationError):
    """An invalid configuration. Its text is one line per problem: the dotted key, the value given
    and what is wrong or allowed. A pydantic ValidationError (so a ValueError): code and tests
    that catch those keep working."""

    def __str__(self) -> str:
        return "invalid configuration:\n" + "\n".join(f"  {_describe(e)}" for e in self.errors())

    @classmethod
    def of(cls, problems: list[tuple[tuple[int | str, ...], str, str, Any]]) -> "ConfigError":
        """From (location, error type, message, value given) tuples. Every problem becomes a
        PydanticCustomError, which takes any type: pydantic's own, or a validator's custom one."""
        return cls.from_exception_data("AppConfig", [
            InitErrorDetails(type=PydanticCustomError(kind, "{message}", {"message": message}), loc=loc, input=value)
            for loc, kind, message, value in problems
        ])


class _Section(BaseModel):
    # Unknown keys are almost always typos in a YAML file: reject them with the key's name.
    model_config = ConfigDict(extra="forbid")


class ModelConfig(_Section):
    """Which model to serve. With no `path`, the embedded tiny model is built (once) and used."""

    path: str | None = Field(None, description="Local Hugging Face model directory.")
    served_name: str | None = Field(None, description="Name clients send as `model`.")
    load_format: str = Field("auto", description="vLLM load format; `dummy` = random weights.")
    tokenizer: str | None = Field(None, description="Tokenizer directory (default: `path`).")

    @property
    def name(self) -> str:
        if self.served_name:
            return self.served_name
        return Path(self.path).name if self.path else "tiny"


class EngineConfig(_Section):
    """vLLM engine settings of every worker."""

    kind: Literal["vllm", "sim"] = Field(
        "vllm", description="`sim`: emit tokens on the profile's schedule with no model (dry runs, scale tests)."
    )
    accelerator: Literal["cpu", "gpu"] = "cpu"
    tensor_parallel_size: int = Field(1, ge=1, le=64)
    max_model_len: int = Field(2048, ge=16)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    kv_cache_gib: float | None = Field(
        0.5, gt=0, description="KV cache per worker; None on GPU = use gpu_memory_utilization."
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_num_seqs: int = Field(128, ge=1)
    enable_prefix_caching: bool = True
    stream_interval: int = Field(
        8, ge=1, le=1024,
        description="Tokens per streamed chunk after the first (vLLM's stream_interval); larger values "
        "send fewer chunks through Ray and HTTP, which costs less CPU per token. The first token and "
        "the last chunk are always sent at once.",
    )
    seed: int = 0
    cpus_per_rank: float = Field(1.0, gt=0, description="Logical CPUs reserved per TP rank.")
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Passed through to vLLM's AsyncEngineArgs."
    )

    @field_validator("extra", mode="before")
    @classmethod
    def _parse_json(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON object ({exc})") from None

    @model_validator(mode="after")
    def _check_kv(self) -> "EngineConfig":
        if self.kv_cache_gib is None and self.accelerator == "cpu":
            raise ValueError("engine.kv_cache_gib is required (a size in GiB) with engine.accelerator=cpu: "
                             "vLLM would otherwise take ~all RAM; null is for gpu only")
        return self

    @property
    def kv_cache_bytes(self) -> int | None:
        return None if self.kv_cache_gib is None else int(self.kv_cache_gib * GiB)


class WorkersConfig(_Section):
    """The worker deployment: Serve replicas, each hosting one vLLM engine."""

    num_workers: int = Field(2, ge=1)
    max_ongoing_requests: int = Field(256, ge=1)
    graceful_shutdown_timeout_s: float | None = Field(
        None, ge=0,
        description="How long a leaving replica may finish its requests; None = the longest "
        "decode the SLOs allow (max_model_len x SLO ATGT x 2 + SLO TTFT).",
    )


class IngressConfig(_Section):
    """The HTTP/handle ingress deployment (tokenization, validation, streaming)."""

    num_replicas: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, ge=0)
    # Serve's default (5) would hold streams back at the proxy; an ingress only awaits workers.
    max_ongoing_requests: int = Field(1024, ge=1)
    api_keys: list[str] = Field(
        default_factory=list,
        description="Bearer keys the HTTP API accepts; empty (and no api_keys_env) = open. "
        "Config values are visible in Serve's config and dashboard: prefer api_keys_env.",
    )
    api_keys_env: str | None = Field(
        None, description="Environment variable (in the ingress replica) holding comma-separated keys."
    )
    # Bounded so a client cannot make the ingress buffer and parse an arbitrarily large body. The
    # 4 MiB default holds a full 128k-token context as JSON text; raise it for longer ones.
    max_body_bytes: int = Field(
        4 << 20, ge=1024, description="Largest request body accepted; larger ones get 413 before parsing."
    )
    # vLLM's --tool-call-parser and --enable-auto-tool-choice: which parser turns the model's
    # text into `tool_calls` (e.g. "hermes", "llama3_json"; `vllm serve --help` lists them)
    tool_call_parser: str | None = Field(None, description="vLLM tool call parser for chat `tools`.")
    enable_auto_tool_choice: bool = Field(
        False, description="Let the model choose tools itself (`tool_choice: auto`); needs tool_call_parser."
    )

    @model_validator(mode="after")
    def _auto_tools_need_parser(self) -> "IngressConfig":
        if self.enable_auto_tool_choice and not self.tool_call_parser:
            raise ValueError("ingress.enable_auto_tool_choice needs ingress.tool_call_parser")
        return self

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        return [k for k in value.split(",") if k] if isinstance(value, str) else value

    @field_validator("api_keys")
    @classmethod
    def _check_keys(cls, value: list[str]) -> list[str]:
        if any(not key or key != key.strip() for key in value):
            raise ValueError("API keys must be non-empty, without surrounding spaces")
        return value

    def resolved_api_keys(self, environ: Mapping[str, str]) -> list[str]:
        """The configured keys plus those in `api_keys_env` (an unset variable is an error:
        silently serving unauthenticated would be worse)."""
        keys = list(self.api_keys)
        if self.api_keys_env:
            if self.api_keys_env not in environ:
                raise ValueError(f"ingress.api_keys_env: environment variable {self.api_keys_env} is not set")
            keys += [k.strip() for k in environ[self.api_keys_env].split(",") if k.strip()]
        return keys


class SloConfig(_Section):
    """Default per-request SLOs; requests may override them."""

    ttft_ms: float = Field(1000.0, gt=0)
    atgt_ms: float = Field(50.0, gt=0)


class PredictorConfig(_Section):
    """The output-length predictor the ingress runs on every request."""

    artifact: str | None = Field(
        None, description="Predictor artifact (JSON); None = the default one for the tokenizer."
    )
    train_if_missing: bool = Field(
        True, description="Train the default artifact at start-up if missing (about a minute)."
    )
    recalibrate_every: int = Field(
        500, ge=10, description="Recalibrate from served requests after this many are recorded."
    )


class PlacementConfig(_Section):
    """How requests are routed to workers."""

    policy: Literal["aladdin", "rr", "jsq", "p2c", "least-kv", "serve-p2c"] = Field(
        "aladdin",
        description="Placement policy run by the placement actor (placement/ policies), or "
        "`serve-p2c` = Ray Serve's own power-of-two router with no placement actor.",
    )
    profile_family: str = Field(
        "tiny-cpu", description="Committed latency/KV profile family the policy and planner use."
    )
    profile_path: str | None = Field(
        None, description="A profile JSON fitted with `aladdin profile` (overrides the family)."
    )
    actor_timeout_s: float = Field(
        1.0, gt=0, description="The router falls back to power-of-two choices past this wait."
    )
    heartbeat_s: float = Field(0.25, gt=0, description="Period of the workers' batched reports.")
    heartbeat_relay: bool = Field(
        False,
        description="Workers report through one relay actor per node, which hands their reports to the "
        "placement actor in one call per tick (serve_app.scheduler.heartbeat_relay): for clusters of many "
        "workers per node, where per-worker heartbeats are most of the actor's calls.",
    )
    shards: int = Field(
        1, ge=1, le=64,
        description="Placement actors, each owning the workers whose replica id hashes to it "
        "(placement.sharding): routers and the ingress offer a request to the roomier of two shards.",
    )
    target_attainment: float = Field(
        DEFAULT_TARGET_ATTAINMENT, gt=0, lt=1,
        description="aladdin: the share of requests that should meet both SLOs. The packing budget (the "
        "shares of the SLOs workers are packed to) adapts to it from the measured attainment of finished "
        "requests (placement.attainment_feedback).",
    )
    atgt_margin: float | None = Field(
        None, gt=0, le=1,
        description="aladdin, expert override: pack every worker to this fixed share of the ATGT SLO instead "
        "of the adaptive budget (default: None = adaptive).",
    )
    admission: bool = Field(
        True,
        description="aladdin only: a request no worker can take within its SLOs waits (SLO-ODBS order) "
        "and is refused with 429 + Retry-After once its TTFT SLO is lost, instead of queueing forever.",
    )
    max_waiting: int = Field(AdmissionLimits.max_waiting, ge=0, description="Requests that may wait for admission at once; more get 429.")
    max_wait_s: float | None = Field(
        None, gt=0, description="Longest wait for admission (default: until the TTFT SLO is lost)."
    )
    seed: int = 0

    @field_validator("profile_family")
    @classmethod
    def _known_family(cls, value: str) -> str:
        if value not in (known := list_profile_families()):
            raise ValueError(f"unknown profile family; committed ones: {', '.join(known)} "
                             "(or set placement.profile_path)")
        return value

    @model_validator(mode="after")
    def _relay_needs_actor(self) -> "PlacementConfig":
        if self.heartbeat_relay and not self.uses_actor:
            raise ValueError("placement.heartbeat_relay relays heartbeats to the placement actor; policy "
                             "serve-p2c has none (leave the relay off, or pick a policy of this app)")
        return self

    @property
    def uses_actor(self) -> bool:
        return self.policy != "serve-p2c"

    @property
    def admits(self) -> bool:
        """Whether requests go through SLO-aware admission (placement.admission)."""
        return self.admission and self.slo_aware

    @property
    def slo_aware(self) -> bool:
        """Whether the policy promises SLOs, so finished requests' latencies close its loop."""
        return is_slo_aware(self.policy)


class ScalingConfig(_Section):
    """Worker autoscaling: the placement actor's minimal-worker estimate drives Serve's
    autoscaler for the worker deployment, and optionally the Ray cluster autoscaler."""

    enabled: bool = False
    min_workers: int = Field(1, ge=0, description="0 allows scale to zero when idle.")
    max_workers: int = Field(8, ge=1)
    estimate_period_s: float = Field(5.0, gt=0, description="How often the estimate is recomputed.")
    window_s: float = Field(60.0, gt=0, description="Sliding window of arrivals the planner sees.")
    headroom: float = Field(0.1, ge=0, description="Planner headroom over the minimal count.")
    upscale_delay_s: float = Field(5.0, ge=0)
    downscale_delay_s: float = Field(60.0, ge=0)
    node_scaling: Literal["off", "advisory", "on"] = Field(
        "off",
        description="`on`: ask the Ray cluster autoscaler for one bundle per planned worker "
        "(request_resources); `advisory`: only log and export the estimate.",
    )

    @model_validator(mode="after")
    def _check_bounds(self) -> "ScalingConfig":
        if self.min_workers > self.max_workers:
            raise ValueError(f"scaling.min_workers ({self.min_workers}) must be <= scaling.max_workers "
                             f"({self.max_workers})")
        return self


class AppConfig(_Section):
    """Everything the application needs; see examples/serve_local_cpu.yaml."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)
    ingress: IngressConfig = Field(default_factory=IngressConfig)
    slo: SloConfig = Field(default_factory=SloConfig)
    predictor: PredictorConfig = Field(default_factory=PredictorConfig)
    placement: PlacementConfig = Field(default_factory=PlacementConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)

    @model_validator(mode="before")
    @classmethod
    def _dotted_keys(cls, data: Any) -> Any:
        return _expand_dotted(data) if isinstance(data, Mapping) else data

    @property
    def graceful_shutdown_timeout_s(self) -> float:
        """Scale-down drains: a replica leaving keeps serving its requests this long."""
        if self.workers.graceful_shutdown_timeout_s is not None:
            return self.workers.graceful_shutdown_timeout_s
        return self.engine.max_model_len * self.slo.atgt_ms / 1e3 * 2 + self.slo.ttft_ms / 1e3

    def placement_profile(self) -> WorkerProfile:
        """The worker profile placement and the planner use: a fitted JSON or a committed family."""
        placement = self.placement
        if placement.profile_path:
            return WorkerProfile.model_validate_json(Path(placement.profile_path).read_text())
        return load_profile_family(placement.profile_family).profile(self.engine.tensor_parallel_size)

    def engine_block_size(self) -> int:
        """Tokens per KV block of the workers' engines: `engine.extra.block_size`, else the sim
        engine's profile's, else vLLM's default for the accelerator (128 on CPU, 16 on GPU;
        vllm/platforms). Prompts are hashed for placement's prefix caches at this size."""
        explicit = self.engine.extra.get("block_size")
        if explicit:
            return int(explicit)
        if self.engine.kind == "sim":
            return self.placement_profile().kv.block_size
        return 128 if self.engine.accelerator == "cpu" else 16

    @property
    def models_prefix_cache(self) -> bool:
        """Whether placement models each worker's prefix cache: the engines cache prefixes
        (`engine.enable_prefix_caching`, vLLM's default) and the policy reads hits."""
        return self.engine.enable_prefix_caching and self.placement.slo_aware

    def engine_token_budget(self, profile: WorkerProfile) -> int | None:
        """The workers' tokens per iteration with chunked prefill (vLLM's default for the
        profile's hardware unless `engine.extra` sets max_num_batched_tokens; the sim engine
        prefills first: None)."""
        if self.engine.kind == "sim":
            return None
        explicit = self.engine.extra.get("max_num_batched_tokens")
        return int(explicit) if explicit else vllm_token_budget(profile)

    def controller_settings(self) -> ControllerSettings:
        """What the placement controller (placement.controller) is configured with."""
        placement, scaling, profile = self.placement, self.scaling, self.placement_profile()
        return ControllerSettings(
            policy=placement.policy, profile=profile, slo_ttft_s=self.slo.ttft_ms / 1000,
            slo_atgt_s=self.slo.atgt_ms / 1000, heartbeat_s=placement.heartbeat_s, seed=placement.seed,
            target_attainment=placement.target_attainment,
            atgt_margin=placement.atgt_margin if placement.slo_aware else None,
            admission=AdmissionLimits(placement.max_waiting, placement.max_wait_s) if placement.admits else None,
            token_budget=self.engine_token_budget(profile),
            prefix_caching=self.models_prefix_cache,
            scaling=ScalingSettings(scaling.window_s, scaling.estimate_period_s, scaling.headroom,
                                    scaling.min_workers, scaling.max_workers),
        )

    @classmethod
    def from_args(cls, args: dict[str, Any] | None) -> "AppConfig":
        """Build from builder arguments: nested dicts, dotted keys (`engine.max_model_len=512`),
        or both. Values may be strings, as `serve run` passes them. Raises ConfigError."""
        try:
            return cls.model_validate(args or {})
        except ValidationError as err:
            raise ConfigError.of([(e["loc"], e["type"], e["msg"], e["input"]) for e in err.errors()]) from None

    def check_deployable(self) -> None:
        """Raise ConfigError for what the schema cannot see but replicas would fail on at start:
        missing model files, a profile family without this TP degree. Run where the app is built,
        not in replicas: a cluster's nodes need the model, but only the head reads profile_path."""
        problems: list[tuple[str, str, Any]] = []  # (dotted key, what is wrong, value)
        model = self.model
        if model.path and not (Path(model.path).expanduser() / "config.json").is_file():
            problems.append(("model.path", "not a readable Hugging Face model directory (no config.json); "
                             "models are never downloaded", model.path))
        if model.tokenizer and not Path(model.tokenizer).expanduser().is_dir():
            problems.append(("model.tokenizer", "not a directory", model.tokenizer))
        placement = self.placement
        if placement.profile_path:
            if not Path(placement.profile_path).expanduser().is_file():
                problems.append(("placement.profile_path", "no such file", placement.profile_path))
        elif placement.uses_actor or self.engine.kind == "sim":  # both read the family's profile
            tps = load_profile_family(placement.profile_family).tps
            if self.engine.tensor_parallel_size not in tps:
                problems.append(("engine.tensor_parallel_size",
                                 f"profile family {placement.profile_family} has profiles for tp {tps} only",
                                 self.engine.tensor_parallel_size))
        if problems:
            raise ConfigError.of([(tuple(key.split(".")), "config", what, value) for key, what, value in problems])

    @classmethod
    def from_yaml(cls, path: str | Path) -> "AppConfig":
        """Read a YAML file holding this schema (or a Serve config's first app `args`)."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        if "applications" in data:
            data = data["applications"][0].get("args", {})
        return cls.from_args(data)


def _expand_dotted(args: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in args.items():
        if isinstance(value, Mapping):
            value = _expand_dotted(value)
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"config key {key!r} conflicts with a value set for {part!r}")
            node = child
        leaf = parts[-1]
        if isinstance(node.get(leaf), dict) and isinstance(value, dict):
            node[leaf].update(value)
        else:
            node[leaf] = value
    return out


def _describe(error: ErrorDetails) -> str:
    """One problem as `dotted.key=value: what is wrong or allowed`."""
    loc, message, value = error["loc"], error["msg"].removeprefix("Value error, "), error["input"]
    key = ".".join(map(str, loc))
    if error["type"] == "extra_forbidden":
        section: type[BaseModel] = AppConfig
        for part in loc[:-1]:  # unknown keys are only rejected inside sections
            section = section.model_fields[str(part)].annotation  # type: ignore[assignment]
        return f"{key}: unknown key; allowed here: {', '.join(section.model_fields)}"
    if error["type"] == "value_error" and isinstance(value, Mapping):
        return message  # a section's own cross-field check: the message names its keys
    shown = repr(value) if len(repr(value)) <= 120 else repr(value)[:117] + "..."
    return f"{key or 'config'}={shown}: {message}"

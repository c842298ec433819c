from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from serve_app.config import AppConfig
from predictors.latency.cpu_binding import cpu_rank_binding
from serve_app.worker.worker import worker_deployment_options

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_dotted_string_args_as_serve_run_passes_them():
    cfg = AppConfig.from_args(
        {"workers.num_workers": "3", "engine.tensor_parallel_size": "2", "slo.ttft_ms": "250.5"}
    )
    assert cfg.workers.num_workers == 3
    assert cfg.engine.tensor_parallel_size == 2
    assert cfg.slo.ttft_ms == 250.5
    assert cfg.engine.max_model_len == 2048  # untouched defaults survive


def test_dotted_and_nested_keys_merge():
    cfg = AppConfig.from_args({"engine": {"max_model_len": 512}, "engine.dtype": "float32"})
    assert (cfg.engine.max_model_len, cfg.engine.dtype) == (512, "float32")


def test_engine_extra_accepts_json_string():
    cfg = AppConfig.from_args({"engine.extra": '{"enforce_eager": true}'})
    assert cfg.engine.extra == {"enforce_eager": True}


@pytest.mark.parametrize(
    "args, word",
    [
        ({"workers.num_workers": 0}, "num_workers"),
        ({"engine.tensor_parallel_size": "two"}, "tensor_parallel_size"),
        ({"engine.typo_key": 1}, "typo_key"),
        ({"scaling.min_workers": 5, "scaling.max_workers": 2}, "min_workers"),
        ({"engine.kv_cache_gib": None}, "kv_cache_gib"),
        ({"placement.policy": "magic"}, "policy"),
        ({"placement.policy": "serve-p2c", "placement.heartbeat_relay": True}, "heartbeat_relay"),
    ],
)
def test_bad_values_name_the_key(args, word):
    with pytest.raises(ValidationError) as err:
        AppConfig.from_args(args)
    assert word in str(err.value)


@pytest.mark.parametrize("name", ["serve_local_cpu.yaml", "serve_gpu.yaml"])
def test_checked_in_serve_configs_validate(name):
    from ray.serve.schema import ServeDeploySchema

    path = EXAMPLES / name
    ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    cfg = AppConfig.from_yaml(path)
    assert cfg.workers.num_workers >= 1


def test_cpu_bundles_one_per_rank_strict_pack():
    cfg = AppConfig.from_args({"engine.tensor_parallel_size": 2, "engine.cpus_per_rank": 0.5})
    opts = worker_deployment_options(cfg)
    assert opts["placement_group_bundles"] == [{"CPU": 0.5}, {"CPU": 0.5}]
    assert opts["placement_group_strategy"] == "STRICT_PACK"
    assert opts["ray_actor_options"]["num_cpus"] == 0.5


def test_gpu_bundles_one_gpu_per_rank_replica_in_bundle_zero():
    cfg = AppConfig.from_args(
        {"engine.accelerator": "gpu", "engine.tensor_parallel_size": 4, "engine.kv_cache_gib": None}
    )
    bundles = worker_deployment_options(cfg)["placement_group_bundles"]
    assert len(bundles) == 4 and all(b["GPU"] == 1 for b in bundles)
    assert bundles[0]["CPU"] == cfg.engine.cpus_per_rank


def test_cpu_rank_binding_splits_cores():
    assert cpu_rank_binding(2, [0, 1]) == "0|1"
    assert cpu_rank_binding(2, [0, 1, 2, 3, 4]) == "0,1|2,3"
    with pytest.raises(ValueError):
        cpu_rank_binding(4, [0, 1])


def test_engine_kwargs_pass_model_settings_through(tmp_path):
    from serve_app.worker.vllm_engine import engine_kwargs

    (tmp_path / "config.json").write_text("{}")
    cfg = AppConfig.from_args(
        {"model.path": str(tmp_path), "model.load_format": "dummy", "engine.extra": {"enforce_eager": True}}
    )
    kw = engine_kwargs(cfg)
    assert kw["model"] == str(tmp_path.resolve()) and kw["load_format"] == "dummy"
    assert kw["served_model_name"] == [tmp_path.name] and kw["enforce_eager"] is True
    assert kw["distributed_executor_backend"] == "mp"
    assert kw["kv_cache_memory_bytes"] == int(0.5 * 2**30)


def test_model_path_must_be_a_local_checkpoint(tmp_path):
    from serve_app.model_source import resolve_model_dir

    with pytest.raises(ValueError, match="config.json"):
        resolve_model_dir(AppConfig.from_args({"model.path": str(tmp_path / "missing")}).model)


def test_worker_options_carry_router_and_autoscaling() -> None:
    from serve_app.worker.worker import worker_deployment_options

    default = worker_deployment_options(AppConfig())
    assert default["request_router_config"]["request_router_class"] == "serve_app.scheduler.placement_router:PlacementRouter"
    assert "autoscaling_config" not in default and default["num_replicas"] == 2
    native = worker_deployment_options(AppConfig.from_args({"placement.policy": "serve-p2c"}))
    assert "request_router_config" not in native
    scaled = worker_deployment_options(AppConfig.from_args({"scaling.enabled": True, "scaling.max_workers": 4}))
    auto = scaled["autoscaling_config"]
    assert scaled["num_replicas"] == "auto"
    assert (auto["min_replicas"], auto["max_replicas"], auto["initial_replicas"]) == (1, 4, 2)
    assert auto["policy"]["policy_function"] == "serve_app.scheduler.autoscaling:aladdin_autoscaling_policy"


def test_graceful_shutdown_defaults_to_the_longest_decode() -> None:
    config = AppConfig.from_args({"engine.max_model_len": 1000, "slo.atgt_ms": 40, "slo.ttft_ms": 500})
    assert config.graceful_shutdown_timeout_s == 1000 * 0.04 * 2 + 0.5
    fixed = AppConfig.from_args({"workers.graceful_shutdown_timeout_s": 7})
    assert fixed.graceful_shutdown_timeout_s == 7


def test_node_scaler_advisory_never_calls_the_cluster(caplog) -> None:
    import logging

    from serve_app.scheduler.node_scaler import NodeScaler
    from serve_app.worker.worker_resources import worker_node_bundle

    config = AppConfig.from_args({
        "engine": {"accelerator": "gpu", "tensor_parallel_size": 2, "kv_cache_gib": None, "cpus_per_rank": 2},
        "scaling": {"enabled": True, "node_scaling": "advisory", "max_workers": 8},
    })
    assert worker_node_bundle(config) == {"CPU": 2.0, "GPU": 2.0}
    scaler = NodeScaler(config)
    with caplog.at_level(logging.INFO, logger="ray.serve"):
        scaler.apply(3)
        scaler.apply(3)  # unchanged: nothing more to say
        scaler.apply(2)
    assert scaler.requested == 2
    assert caplog.text.count("would request 3") == 1 and caplog.text.count("would request 2") == 1


def test_api_keys_from_config_and_environment() -> None:
    config = AppConfig.from_args({"ingress.api_keys": "k1,k2", "ingress.api_keys_env": "ALADDIN_KEYS"})
    assert config.ingress.resolved_api_keys({"ALADDIN_KEYS": "k3, k4"}) == ["k1", "k2", "k3", "k4"]
    with pytest.raises(ValueError, match="ALADDIN_KEYS"):
        config.ingress.resolved_api_keys({})
    with pytest.raises(ValidationError, match="API keys"):
        AppConfig.from_args({"ingress": {"api_keys": [" padded "]}})
    assert AppConfig().ingress.resolved_api_keys({}) == []


def test_max_body_bytes_default_and_bounds() -> None:
    assert AppConfig().ingress.max_body_bytes == 4 << 20
    assert AppConfig.from_args({"ingress.max_body_bytes": "65536"}).ingress.max_body_bytes == 65536
    with pytest.raises(ValidationError, match="max_body_bytes"):
        AppConfig.from_args({"ingress": {"max_body_bytes": 0}})


# ---- invalid configurations: one clear line per problem (ConfigError) ----------------------

def test_config_error_has_one_line_per_problem_naming_key_value_and_what_is_allowed() -> None:
    from serve_app.config import ConfigError

    with pytest.raises(ConfigError) as err:
        AppConfig.from_args({"engine.tensor_parallel_size": "two", "workers": {"num_workers": -1},
                             "placement.policy": "magic", "slo.ttft_ms": 0})
    assert isinstance(err.value, ValueError)
    assert str(err.value).splitlines() == [
        "invalid configuration:",
        "  engine.tensor_parallel_size='two': Input should be a valid integer, unable to parse string as an integer",
        "  workers.num_workers=-1: Input should be greater than or equal to 1",
        "  slo.ttft_ms=0: Input should be greater than 0",
        "  placement.policy='magic': Input should be 'aladdin', 'rr', 'jsq', 'p2c', 'least-kv' or 'serve-p2c'",
    ]


@pytest.mark.parametrize("args, line", [
    ({"engine.max_model_lenn": 512},
     "engine.max_model_lenn: unknown key; allowed here: kind, accelerator, tensor_parallel_size, max_model_len,"),
    ({"scaling": {"enabled": True}, "scalling.max_workers": 3},
     "scalling: unknown key; allowed here: model, engine, workers, ingress, slo, predictor, placement, scaling"),
    ({"scaling.min_workers": 5, "scaling.max_workers": 2}, "scaling.min_workers (5) must be <= scaling.max_workers (2)"),
    ({"placement.profile_family": "llama-9-z80"},
     "placement.profile_family='llama-9-z80': unknown profile family; committed ones: llama-2-70b-a100,"),
    ({"engine.kv_cache_gib": None}, "engine.kv_cache_gib is required (a size in GiB) with engine.accelerator=cpu"),
    ({"engine.extra": "{not json"}, "engine.extra='{not json': not a JSON object"),
    ({"engine": 4, "engine.dtype": "float32"}, "config key 'engine.dtype' conflicts with a value set for 'engine'"),
])
def test_config_error_lines(args, line) -> None:
    from serve_app.config import ConfigError

    with pytest.raises(ConfigError) as err:
        AppConfig.from_args(args)
    assert any(shown.strip().startswith(line) for shown in str(err.value).splitlines()), str(err.value)


def test_check_deployable_reports_missing_files_and_profile_tp(tmp_path) -> None:
    from serve_app.config import ConfigError

    config = AppConfig.from_args({"model.path": str(tmp_path / "nope"), "model.tokenizer": str(tmp_path / "tok"),
                                  "placement.profile_path": str(tmp_path / "p.json")})
    with pytest.raises(ConfigError) as err:
        config.check_deployable()
    assert str(err.value).splitlines()[1:] == [
        f"  model.path='{tmp_path}/nope': not a readable Hugging Face model directory (no config.json); "
        "models are never downloaded",
        f"  model.tokenizer='{tmp_path}/tok': not a directory",
        f"  placement.profile_path='{tmp_path}/p.json': no such file",
    ]
    with pytest.raises(ConfigError, match=r"engine.tensor_parallel_size=4: profile family tiny-cpu has profiles for tp \[1, 2\]"):
        AppConfig.from_args({"engine.tensor_parallel_size": 4}).check_deployable()
    # serve-p2c with a vLLM engine reads no profile: any TP degree deploys
    AppConfig.from_args({"engine.tensor_parallel_size": 4, "placement.policy": "serve-p2c"}).check_deployable()
    AppConfig().check_deployable()


def test_serve_run_with_bad_args_fails_fast_with_the_message_only() -> None:
    import subprocess
    import sys

    serve_bin = str(Path(sys.executable).with_name("serve"))
    out = subprocess.run([serve_bin, "run", "--non-blocking", "serve_app.app:build_app", "engine.typo=1",
                          "workers.num_workers=0"], capture_output=True, text=True, timeout=120,
                         cwd=EXAMPLES.parent)
    assert out.returncode == 1
    assert "Error: invalid configuration:\n  engine.typo: unknown key" in out.stderr
    assert "  workers.num_workers='0': Input should be greater than or equal to 1" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    assert "Started a local Ray instance" not in out.stderr + out.stdout  # it failed before starting Ray


@pytest.mark.serving
def test_bad_serve_config_file_fails_with_the_message_in_serve_status(ray_cluster, tmp_path) -> None:
    from ray import serve

    from tests.conftest import serve_run

    config = yaml.safe_load((EXAMPLES / "serve_local_cpu.yaml").read_text())
    app = config["applications"][0]
    app.update(name="badconfig", route_prefix="/badconfig")
    app["args"]["engine"]["max_model_lenn"] = 512
    app["args"]["scaling"]["min_workers"] = 3
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    try:
        with pytest.raises(RuntimeError) as err:
            serve_run(ray_cluster, str(bad), name="badconfig", timeout_s=120)
        message = str(err.value)
        assert "engine.max_model_lenn: unknown key" in message
        assert "scaling.min_workers (3) must be <= scaling.max_workers (2)" in message
        assert "Traceback" not in message
    finally:
        serve.delete("badconfig")

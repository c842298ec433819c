from pathlib import Path

import yaml

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def test_cluster_yaml_passes_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(CLUSTER_YAML.read_text())
    # What `ray up` does first: fill in provider defaults, then check against ray-schema.json.
    validate_config(prepare_config(config))
    gpu_types = [t for t in config["available_node_types"].values() if t["resources"].get("GPU")]
    assert gpu_types and all(t["min_workers"] == 0 for t in gpu_types)
    assert not config["available_node_types"][config["head_node_type"]]["resources"].get("GPU")
    assert any('".[gpu]"' in c for c in config["setup_commands"])


def test_schema_check_would_catch_a_broken_file():
    import jsonschema
    import pytest
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(CLUSTER_YAML.read_text())
    config["available_node_types"]["head"]["resources"] = "lots"
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(config))

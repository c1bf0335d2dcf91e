"""``infra/ray/cluster-{aws,gcp}.yaml`` against ``ray/autoscaler/ray-schema.json`` of the installed Ray wheel, then
through Ray's own ``prepare_config`` + ``validate_config`` (defaults filled in, node types checked), plus what
the project needs of them: CPU and GPU worker types with autoscaling bounds, the hires images, token auth."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

REPO = Path(__file__).resolve().parents[2]
CONFIGS = [REPO / "infra" / "ray" / "cluster-aws.yaml", REPO / "infra" / "ray" / "cluster-gcp.yaml"]
SCHEMA = Path(ray.__file__).parent / "autoscaler" / "ray-schema.json"


@pytest.fixture(scope="module")
def schema() -> dict:
    return json.loads(SCHEMA.read_text())


def errors(schema: dict, config: dict) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(config)
    ]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_cluster_config_matches_rays_schema(path, schema):
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    assert not errors(schema, config), errors(schema, config)
    validate_config(
        prepare_config(copy.deepcopy(config))
    )  # Ray's checks beyond the schema (node types, bounds)


def test_the_schema_catches_a_misspelt_key(schema):
    config = yaml.safe_load(CONFIGS[0].read_text())
    config["idle_timeout_minute"] = 5
    assert any("idle_timeout_minute" in e for e in errors(schema, config))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_cpu_and_gpu_workers_autoscale_on_the_hires_images(path):
    config = yaml.safe_load(path.read_text())
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # drivers only: no tasks on the head
    cpu, gpu = types["cpu_worker"], types["gpu_worker"]
    for node_type in (cpu, gpu):
        assert 0 <= node_type["min_workers"] < node_type["max_workers"]
    assert cpu["max_workers"] + gpu["max_workers"] <= config["max_workers"]
    assert config["docker"]["image"].endswith("hires:0.1.0-cpu")
    assert gpu["docker"]["worker_image"].endswith("hires:0.1.0-gpu")
    assert "--entrypoint=" in config["docker"]["run_options"]  # the image's entrypoint is hires, not bash
    # token auth: the local token goes to every node, and every `ray start` runs in token mode
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    for cmd in config["head_start_ray_commands"][1:] + config["worker_start_ray_commands"][1:]:
        assert "RAY_AUTH_MODE=token ray start" in cmd
    assert any("hires --help" in c for c in config["setup_commands"])


def test_gpu_nodes_have_gpus():
    aws = yaml.safe_load(CONFIGS[0].read_text())["available_node_types"]
    assert aws["gpu_worker"]["node_config"]["InstanceType"].startswith(("p", "g"))
    gcp = yaml.safe_load(CONFIGS[1].read_text())["available_node_types"]
    assert gcp["gpu_worker"]["node_config"]["guestAccelerators"][0]["acceleratorCount"] >= 1
    assert "guestAccelerators" not in gcp["cpu_worker"]["node_config"]

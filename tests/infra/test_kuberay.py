"""``infra/kuberay/*.yaml`` against the KubeRay CRDs' OpenAPI v3 schemas (copied with their provenance in
tests/infra/data/kuberay-crds/SOURCE.md), strictly: an unknown field is an error (``kubectl apply
--validate=strict`` rejects it; the API server would silently drop it). The hires commands the jobs run parse
with the CLI's own parser."""

from __future__ import annotations

import copy
import shlex
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
KUBERAY = REPO / "infra" / "kuberay"
CRDS = Path(__file__).resolve().parent / "data" / "kuberay-crds"
STAGES = ("recovery", "autoencoder", "vocoder", "ldm")
LDM_ARGS = "--recovery models:/hires-recovery@champion --autoencoder models:/hires-autoencoder@champion"


def _strict(schema: dict) -> dict:
    """The schema with ``additionalProperties: false`` on every object that lists its properties and does not
    keep unknown fields (what strict field validation means for a structural schema)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in schema
            and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")
        ):
            schema["additionalProperties"] = False
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


@cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """``{(apiVersion, kind): strict JSON schema}`` of every served version of the copied CRDs."""
    out = {}
    for path in sorted(CRDS.glob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                out[(f"{group}/{version['name']}", kind)] = _strict(version["schema"]["openAPIV3Schema"])
    return out


def validate(doc: dict, where: str) -> None:
    key = (doc.get("apiVersion"), doc.get("kind"))
    assert key in crd_schemas(), f"{where}: {key} is not a KubeRay kind/version of the CRDs"
    errors = sorted(
        jsonschema.Draft7Validator(crd_schemas()[key]).iter_errors(doc), key=lambda e: list(e.absolute_path)
    )
    assert not errors, f"{where}: " + "; ".join(
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors[:5]
    )


def load(name: str, **subst: str) -> dict:
    text = (KUBERAY / name).read_text()
    for var, value in subst.items():
        text = text.replace("${" + var + "}", value)
    return yaml.safe_load(text)


def render_train(stage: str) -> dict:
    """``rayjob-train.yaml`` as ``STAGE=... envsubst '${STAGE} ${TRAIN_ARGS}'`` renders it (its header)."""
    return load("rayjob-train.yaml", STAGE=stage, TRAIN_ARGS=LDM_ARGS if stage == "ldm" else "")


def test_the_strict_schema_rejects_a_misspelt_field():
    doc = load("raycluster.yaml")
    validate(doc, "raycluster.yaml")
    bad = copy.deepcopy(doc)
    bad["spec"]["workerGroupSpecs"][0]["maxReplica"] = 3
    with pytest.raises(AssertionError, match="maxReplica"):
        validate(bad, "bad")
    bad = copy.deepcopy(doc)
    bad["spec"]["authOptions"]["mode"] = "password"
    with pytest.raises(AssertionError, match="password"):
        validate(bad, "bad")


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob-synth.yaml", "raycronjob-retrain.yaml"])
def test_manifest_matches_the_crd(name):
    validate(load(name), name)


@pytest.mark.parametrize("stage", STAGES)
def test_train_job_matches_the_crd_for_every_stage(stage):
    doc = render_train(stage)
    validate(doc, f"rayjob-train.yaml (STAGE={stage})")
    assert doc["metadata"]["name"] == f"hires-train-{stage}"
    assert shlex.split(doc["spec"]["entrypoint"])[:3] == ["hires", "train", stage]
    assert "${" not in yaml.safe_dump(doc)  # nothing left for envsubst


def test_cluster_autoscales_cpu_and_gpu_groups_with_token_auth():
    spec = load("raycluster.yaml")["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for group in groups.values():
        assert 0 <= group["minReplicas"] < group["maxReplicas"]
    gpu_limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert int(gpu_limits["nvidia.com/gpu"]) >= 1
    assert "nvidia.com/gpu" not in str(groups["cpu"]["template"])
    assert groups["gpu"]["template"]["spec"]["containers"][0]["image"].endswith("-gpu")
    assert spec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"].endswith("-cpu")


def _job_specs() -> list[tuple[str, dict]]:
    cron = load("raycronjob-retrain.yaml")
    return [
        ("rayjob-synth.yaml", load("rayjob-synth.yaml")["spec"]),
        *((f"rayjob-train.yaml ({s})", render_train(s)["spec"]) for s in STAGES),
        ("raycronjob-retrain.yaml", cron["spec"]["jobTemplate"]),
    ]


def test_jobs_target_the_cluster_and_send_its_token():
    cluster = load("raycluster.yaml")["metadata"]["name"]
    for where, spec in _job_specs():
        assert spec["clusterSelector"] == {"ray.io/cluster": cluster}, where
        env = {e["name"]: e for e in spec["submitterPodTemplate"]["spec"]["containers"][0]["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", where
        # the Secret the operator creates for authOptions.mode token is named after the cluster
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": cluster, "key": "auth_token"}, (
            where
        )


def test_job_entrypoints_are_hires_commands_that_parse():
    from pipelines.cli import build_parser

    parser = build_parser()
    known = set(parser._subparsers._group_actions[0].choices)
    for where, spec in _job_specs():
        argv = shlex.split(spec["entrypoint"])
        assert argv[0] == "hires", where
        assert "--address" in argv and argv[argv.index("--address") + 1] == "auto", (
            where
        )  # join, not start, Ray
        if argv[1] in known:  # `hires retrain` parses once its command exists
            parser.parse_args(argv[1:])


def test_retrain_is_weekly():
    spec = load("raycronjob-retrain.yaml")["spec"]
    minute, hour, day_of_month, month, day_of_week = spec["schedule"].split()
    assert (day_of_month, month) == ("*", "*") and day_of_week.isdigit()
    assert shlex.split(spec["jobTemplate"]["entrypoint"])[:4] == [
        "hires",
        "retrain",
        "--config",
        "configs/retrain.yaml",
    ]

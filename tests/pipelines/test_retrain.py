"""hires retrain: a tiny retrain that promotes (through the CLI, evaluation as a Ray task), one the gate rejects
and records why, one interrupted after training and resumed without redoing finished steps; the gate itself, the
config's checks and a missing champion refused before any work.

Tiny everything: a 0.4 min demo corpus, only the recovery stage trained (2 steps, 1 worker, 0.1 s crops) warm from
a champion; the other stages' champions are random-init tiny model directories registered in the test's sqlite
MLflow store. The held-out set is one small synthesis run made once for the module.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from model_helpers import STAGES, write_tiny_models

from datasets.errors import IncompatibleError
from pipelines.cli import main
from pipelines.retrain import RetrainEvaluation, decide, load_retrain_config, recorded_score, run_retrain
from training import tracking

FAST = {
    "train.crop_seconds": 0.1,
    "train.log_every": 1,
    "train.checkpoint_every": 2,
    "train.eval_every": 1000,
    "train.schedule.warmup_steps": 0,
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """Manifests: 0.4 min of demo speech (3 speakers, the last held out as test), 0.3 min of noise, 2 rooms."""
    from datasets.banks import make_noise_bank, make_rir_bank
    from datasets.demo import make_demo_corpus

    root = tmp_path_factory.mktemp("retrain_inputs")
    return {
        "clean": str(make_demo_corpus(root / "clean", minutes=0.4, seed=0, speakers=3, test_speakers=1,
                                      progress=False)),
        "noise": str(make_noise_bank(root / "noise", minutes=0.3, seed=0, progress=False)),
        "rir": str(make_rir_bank(root / "rir", count=2, seed=0, progress=False)),
    }  # fmt: skip


@pytest.fixture(scope="module")
def heldout(tmp_path_factory, inputs, _ray_state) -> str:
    """The fixed held-out set: one synthesis run, never regenerated."""
    import ray

    from datasets.synth_config import load_synth_config
    from pipelines.synth_run import run_synth

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    out = tmp_path_factory.mktemp("retrain_heldout") / "run"
    cfg = load_synth_config(overrides={"shards.samples_per_shard": 2})
    run_synth(**inputs, out=str(out), cfg=cfg, seed=99, progress=False)
    return str(out)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, str]:
    """Random-init tiny model directories of the four stages (output layers random, so outputs vary)."""
    return write_tiny_models(tmp_path_factory.mktemp("retrain_models"), random_outputs=True)


def register_champions(tracking_uri: str, model_dirs: dict[str, str], stages=STAGES) -> dict[str, str]:
    """Register each of ``stages`` as version 1 of hires-<stage> and mark it champion."""
    client = tracking._client(tracking_uri)
    versions = {}
    for stage in stages:
        run_id, _ = tracking.find_or_create_run(tracking_uri, "hires", f"seed-{stage}", model_dirs[stage])
        versions[stage] = tracking.log_and_register_model(
            tracking_uri, run_id, stage, model_dirs[stage], {"step": 0}
        )
        tracking.end_run(tracking_uri, run_id)
        client.set_registered_model_alias(tracking.model_name(stage), "champion", versions[stage])
    return versions


def write_config(path: Path, inputs: dict, heldout: str, **evaluation) -> Path:
    doc = {
        "output": str(path.parent / "retrain"),
        "tracking_uri": f"sqlite:///{path.parent / 'mlflow.db'}",
        "corpus": {**inputs, "samples_per_shard": 2},
        "train": {"recovery": {"config": "tiny", "steps": 2, "workers": 1, "overrides": FAST}},
        "evaluation": {"shards": heldout, "split": "test", "limit": 1, "steps": 2, "metric": "restored/si_sdr",
                       "metrics": ["si_sdr"], "remote": False, **evaluation},
    }  # fmt: skip
    path.write_text(yaml.safe_dump(doc))
    return path


def alias(tracking_uri: str, stage: str) -> str | None:
    from pipelines.retrain import champion_version

    return champion_version(tracking_uri, stage)


def runs_of(tracking_uri: str) -> dict[str, object]:
    client = tracking._client(tracking_uri)
    exp = client.get_experiment_by_name("hires")
    return {r.info.run_id: r for r in client.search_runs([exp.experiment_id], max_results=200)}


# ---------------------------------------------------------------------------------------------------- the gate
def test_the_gate_compares_by_direction_and_margin():
    higher = RetrainEvaluation(shards="x", metric="restored/si_sdr", margin=0.5)
    assert decide(10.0, 9.0, higher).promote and decide(10.0, 9.0, higher).improvement == 1.0
    assert not decide(9.4, 9.0, higher).promote  # better, but not by more than the margin
    assert "<= margin 0.5" in decide(9.4, 9.0, higher).reason
    lower = RetrainEvaluation(shards="x", metric="restored/lsd", direction="lower", margin=0.0)
    assert decide(0.9, 1.0, lower).promote and not decide(1.0, 1.0, lower).promote
    assert not decide(math.nan, 1.0, lower).promote  # no finite candidate score: never promoted
    first = decide(0.9, None, lower, missing_champions=["recovery"])
    assert first.promote and "no champion yet for recovery" in first.reason
    tolerant = RetrainEvaluation(shards="x", margin=-2.0)  # a negative margin tolerates a small loss
    assert decide(8.0, 9.0, tolerant).promote


def test_the_config_rejects_unknown_keys_and_a_vae_without_its_ldm(tmp_path, inputs, capsys, monkeypatch):
    cfg = tmp_path / "retrain.yaml"
    cfg.write_text(yaml.safe_dump({"output": "o", "corpus": {**inputs, "seeed": 1}, "train": {"recovery": {}},
                                   "evaluation": {"shards": "s"}}))  # fmt: skip
    assert main(["retrain", "--config", str(cfg), "--print-config"]) == 2
    assert capsys.readouterr().err == f"hires: error: {cfg}: invalid config: corpus.seeed: unknown key\n"
    cfg.write_text(yaml.safe_dump({"output": "o", "corpus": inputs, "train": {"autoencoder": {}},
                                   "evaluation": {"shards": "s", "metric": "restored/pesq"}}))  # fmt: skip
    assert main(["retrain", "--config", str(cfg), "--print-config"]) == 2
    err = capsys.readouterr().err
    assert "train: Value error, autoencoder is trained but ldm is not" in err
    assert "evaluation.metric: Value error, expected SYSTEM/METRIC" in err
    monkeypatch.chdir(tmp_path)  # a job outside a checkout: the shipped file, as the cron job names it
    shipped = load_retrain_config("configs/retrain.yaml")
    assert shipped.train.stages() == ["recovery", "ldm"] and shipped.evaluation.device == "cuda"


def test_a_stage_without_champion_must_be_trained(tmp_path, inputs, heldout, model_dirs):
    cfg = load_retrain_config(write_config(tmp_path / "retrain.yaml", inputs, heldout))
    uri = cfg.tracking_uri
    register_champions(uri, model_dirs, ("recovery", "autoencoder", "ldm"))  # no vocoder champion
    with pytest.raises(
        Exception, match=r"no hires-vocoder@champion in the registry .*\(train\.vocoder in the config\)"
    ):
        run_retrain(cfg, run_id="r1", progress=False)
    assert not (tmp_path / "retrain").exists()  # refused before anything is written


# ---------------------------------------------------------------------------------------------------- retrains
def test_a_retrain_that_beats_the_champion_is_promoted(
    tmp_path, inputs, heldout, model_dirs, ray_session, capsys
):
    # a negative margin makes the comparison's outcome certain for random-init models; it is still a comparison
    cfg = write_config(tmp_path / "retrain.yaml", inputs, heldout, margin=-1000.0, remote=True)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    register_champions(uri, model_dirs)
    assert main(["-q", "retrain", "--config", str(cfg), "--run-id", "week48"]) == 0
    out = capsys.readouterr().out
    assert "decision: promoted the candidate: restored/si_sdr" in out and "> margin -1000" in out
    assert "warm start from models:/hires-recovery/1" in out
    assert alias(uri, "recovery") == "2"  # the new version
    assert [alias(uri, s) for s in ("autoencoder", "vocoder", "ldm")] == ["1", "1", "1"]

    state = json.loads((tmp_path / "retrain" / "week48" / "state.json").read_text())
    assert list(state["steps"]) == ["champions", "corpus", "train.recovery", "evaluate.candidate",
                                    "evaluate.champion", "decision", "promote"]  # fmt: skip
    assert (
        state["steps"]["evaluate.candidate"]["index_sha256"]
        == state["steps"]["champions"]["heldout_index_sha256"]
    )
    runs = runs_of(uri)
    parent = runs[state["parent_run_id"]]
    assert parent.info.status == "FINISHED" and parent.data.tags["hires.retrain.decision"] == "promoted"
    children = {
        r.info.run_name for r in runs.values() if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    }
    assert children == {"corpus", "recovery-tiny", "week48-candidate", "week48-champion", "week48-gate"}
    train_run = next(r for r in runs.values() if r.info.run_name == "recovery-tiny")
    assert train_run.data.params["models.init"].startswith(str(tmp_path / "retrain" / "week48" / "train"))
    version = tracking._client(uri).get_model_version("hires-recovery", "2")
    assert version.tags["hires.retrain.decision"] == "promoted" and version.tags["hires.parent.init"] == (
        "models:/hires-recovery/1"
    )

    # idempotent: a finished retrain does nothing and says what it decided
    assert main(["-q", "retrain", "--config", str(cfg), "--run-id", "week48"]) == 0
    again = capsys.readouterr().out
    assert "already finished; nothing to do" in again and "decision: promoted the candidate" in again
    assert set(runs_of(uri)) == set(runs)


def test_the_gate_keeps_the_champion_and_records_why(tmp_path, inputs, heldout, model_dirs, ray_session):
    cfg = load_retrain_config(write_config(tmp_path / "retrain.yaml", inputs, heldout, margin=1000.0))
    uri = cfg.tracking_uri
    register_champions(uri, model_dirs)
    result = run_retrain(cfg, run_id="r1", progress=False)
    d = result.decision
    assert not d["promote"] and "<= margin 1000" in d["reason"] and math.isfinite(d["improvement"])
    assert alias(uri, "recovery") == "1"  # the champion stays
    assert any("decision: kept the champion" in line for line in result.lines())
    parent = runs_of(uri)[result.parent_run_id]
    assert parent.data.tags["hires.retrain.decision"] == "rejected"
    assert parent.data.tags["hires.retrain.reason"] == d["reason"]
    assert d["reason"] in parent.data.tags["mlflow.note.content"]
    # the champion's score is recorded for this held-out set: the next retrain reuses it instead of scoring again
    champion = result.steps["evaluate.champion"]
    found = recorded_score(uri, "hires", champion["key"], cfg.evaluation)
    assert found == {"score": pytest.approx(champion["score"]), "run_id": champion["run_id"]}
    # the candidate is registered all the same, marked rejected
    assert (
        tracking._client(uri).get_model_version("hires-recovery", "2").tags["hires.retrain.decision"]
        == "rejected"
    )
    # the run id belongs to this config: another one is refused, naming what changed
    changed = cfg.model_copy(deep=True)
    changed.evaluation.margin = 0.0
    with pytest.raises(IncompatibleError, match=r"started with another config\.evaluation\.margin"):
        run_retrain(changed, run_id="r1", progress=False)


def test_an_interrupted_retrain_resumes_without_redoing_finished_steps(
    tmp_path, inputs, heldout, model_dirs, ray_session, monkeypatch
):
    cfg = load_retrain_config(write_config(tmp_path / "retrain.yaml", inputs, heldout))
    uri = cfg.tracking_uri
    register_champions(uri, model_dirs, ("autoencoder", "vocoder", "ldm"))  # recovery: first candidate

    def broken(*args, **kwargs):
        raise RuntimeError("evaluation node lost")

    monkeypatch.setattr("pipelines.retrain.evaluate_bundle", broken)
    with pytest.raises(RuntimeError, match="evaluation node lost"):
        run_retrain(cfg, run_id="r1", progress=False)
    state_path = tmp_path / "retrain" / "r1" / "state.json"
    state = json.loads(state_path.read_text())
    assert list(state["steps"]) == ["champions", "corpus", "train.recovery"]
    assert runs_of(uri)[state["parent_run_id"]].info.status == "FAILED"
    assert alias(uri, "recovery") is None

    monkeypatch.undo()
    calls = []
    for target in ("pipelines.synth_run.run_synth", "training.launcher.run_training"):
        monkeypatch.setattr(target, lambda *a, _t=target, **k: calls.append(_t))
    result = run_retrain(cfg, run_id="r1", progress=False)
    assert calls == []  # the corpus and the training were not redone
    assert result.skipped == ["corpus", "train.recovery"]
    assert result.decision["promote"] and "no champion yet for recovery" in result.decision["reason"]
    assert alias(uri, "recovery") == "1"
    assert runs_of(uri)[result.parent_run_id].info.status == "FINISHED"
    finished = json.loads(state_path.read_text())["steps"]
    assert {k: finished[k] for k in state["steps"]} == state["steps"]  # what was done stayed as it was
    assert run_retrain(cfg, run_id="r1", progress=False).status == "already finished"

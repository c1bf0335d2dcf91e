"""``hires train``: flags, driver-side checks before any worker starts, run directories (names, identity, finished
runs), the CPU budget, and one real run (2 workers, tiny recovery) tracked by a real ``mlflow server`` and read
back with MlflowClient: params, metrics, wavs that decode, PNGs that open, the registered version's lineage."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from data_fixtures import tiny_synth_inputs, write_shard_set  # noqa: F401 - fixture
from mlflow_fixtures import mlflow_server  # noqa: F401 - fixture
from s3_server import BUCKET, s3_server  # noqa: F401 - fixture
from train_run_helpers import REPO, request, set_args, subprocess_env, train_argv

from datasets.errors import DataError, IncompatibleError, UsageError
from training import launcher


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """4 train shards (3, 3, 2, 2 samples) and a valid shard of 2: 0.2 s segments."""
    root = tmp_path_factory.mktemp("train_shards")
    return write_shard_set(root, [("train", 3), ("train", 3), ("train", 2), ("train", 2), ("valid", 2)])


def _no_ray(address):
    raise AssertionError("Ray must not start for this run")


def test_workers_flag():
    assert launcher.parse_workers("2") == 2
    assert launcher.parse_workers("1-4") == (1, 4)
    assert launcher.parse_workers("3-3") == 3
    for bad in ("0", "3-1", "x", "1-", "-2"):
        with pytest.raises(UsageError, match="--workers"):
            launcher.parse_workers(bad)


def test_run_names_follow_the_command():
    assert launcher.default_run_name("recovery", "tiny") == "recovery-tiny"
    assert launcher.default_run_name("ldm", "configs/x/my.yaml", online=True) == "ldm-my-online"
    with pytest.raises(UsageError, match="--run-name"):
        launcher.validate(launcher.TrainRequest(stage="recovery", out="o", shards="s", run_name="a/b"))


def _cli(*argv: str) -> tuple[int, str]:
    proc = subprocess.run(
        [str(Path(REPO) / ".venv" / "bin" / "python"), "-m", "pipelines", "train", *argv],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        timeout=120,
    )
    return proc.returncode, proc.stderr.decode()


def test_bad_flags_are_one_line_usage_errors(shards, tmp_path):
    out = str(tmp_path / "out")
    fast = set_args()
    cases = [
        (["recovery", "--out", out], "--shards"),
        (["recovery", "--shards", str(shards), "--online", "--out", out], "exclude"),
        (["recovery", "--online", "--clean", "c.parquet", "--out", out], "--noise --rir"),
        (
            ["recovery", "--shards", str(shards), "--clean", "c.parquet", "--out", out],
            "only go with --online",
        ),
        (["recovery", "--shards", str(shards), "--out", out, "--workers", "3-1"], "--workers"),
        (
            ["ldm", "--shards", str(shards), "--out", out, "--config", "tiny", *fast],
            "--recovery MODEL --autoencoder MODEL",
        ),
        (
            ["recovery", "--shards", str(shards), "--out", out, "--vocoder", str(tmp_path), *fast],
            "does not use a vocoder",
        ),
    ]
    for argv, expected in cases:
        rc, err = _cli(*argv)
        assert rc == 2, (argv, err)
        assert expected in err, (argv, err)
        assert "Traceback" not in err


def test_bad_shard_sets_fail_before_any_worker_starts(shards, tmp_path):
    no_index = tmp_path / "no_index"
    shutil.copytree(shards, no_index)
    (no_index / "index.json").unlink()
    other_rate = write_shard_set(tmp_path / "rate", [("train", 2)], sample_rate=44100)
    valid_only = write_shard_set(tmp_path / "valid_only", [("valid", 2)])
    for bad, match in (
        (no_index, "index.json"),
        (other_rate, "44100"),
        (valid_only, "no shard of split 'train'"),
    ):
        with pytest.raises(DataError, match=match):
            launcher.run_training(request(str(bad), str(tmp_path / "out"), 2), connect=_no_ray)


def test_s3_out_needs_a_tracking_server(shards):
    with pytest.raises(UsageError, match="--tracking-uri"):
        launcher.run_training(request(str(shards), "s3://bucket/runs", 2), connect=_no_ray)


def test_a_run_directory_continues_only_its_own_training(shards, tmp_path):
    out = str(tmp_path / "out")
    p = launcher.prepare(request(str(shards), out, 4, tracking_uri="none"))
    launcher.check_identity(p)
    launcher.check_identity(
        launcher.prepare(request(str(shards), out, 8, tracking_uri="none"))
    )  # more steps: ok
    other = request(str(shards), out, 4, tracking_uri="none", overrides={"train.optimizer.lr": 0.5})
    with pytest.raises(IncompatibleError, match="stage_config.train.optimizer.lr"):
        launcher.check_identity(launcher.prepare(other))


def test_finished_run_says_so_and_does_nothing(shards, tmp_path):
    out = tmp_path / "out"
    model = out / "recovery-tiny" / "model"
    model.mkdir(parents=True)
    (model / "model.json").write_text(json.dumps({"stage": "recovery", "step": 4}))
    summary = launcher.run_training(request(str(shards), str(out), 4, tracking_uri="none"), connect=_no_ray)
    assert summary.status == "already finished" and summary.final_step == 4
    assert "already finished at step 4" in summary.lines()[0]


def test_cpu_budget():
    def cpus(workers, cluster, online=False, gpu=False, threads=2):
        req = launcher.TrainRequest(stage="recovery", out="o", shards="s", workers=workers, gpu=gpu)
        if online:
            req.shards, req.online = None, {"clean": "c", "noise": "n", "rir": "r"}
        return launcher.cpus_per_worker(req, cluster, threads)

    assert cpus(2, 2.0) == 1.0  # shards: decoding threads live inside the workers
    assert cpus(2, 2.0, online=True) == 0.5  # online: one CPU stays free for Ray Data's render tasks
    assert cpus(4, 2.0) == 0.5
    assert cpus((1, 4), 64.0) == 1.0
    assert cpus(2, 64.0, gpu=True, threads=4) == 4.0
    with pytest.raises(UsageError, match="do not fit"):
        cpus(8, 2.0, online=True)


def test_models_are_checked_against_their_role(shards, tmp_path):
    vocoder = tmp_path / "vocoder_model"
    vocoder.mkdir()
    (vocoder / "model.json").write_text(json.dumps({"stage": "vocoder"}))
    req = request(str(shards), str(tmp_path / "out"), 2, tracking_uri="none", models={"init": str(vocoder)})
    with pytest.raises(IncompatibleError, match="is a vocoder model, expected a recovery model"):
        launcher.resolve_models(launcher.prepare(req))
    req.models = {"init": str(tmp_path / "missing")}
    with pytest.raises(DataError, match="no model.json"):
        launcher.resolve_models(launcher.prepare(req))


def _config_only_model(root: Path, stage: str, overrides: dict | None = None) -> str:
    """A model directory whose model.json describes a tiny network (the driver-side checks read no weights)."""
    from training.config import load_stage_config

    cfg = load_stage_config(stage, "tiny", overrides)
    root.mkdir(parents=True)
    doc = {"stage": stage, "config": cfg.model_dump(mode="json")}
    (root / "model.json").write_text(json.dumps(doc))
    return str(root)


def test_ldm_with_a_mismatched_autoencoder_fails_before_any_worker_starts(shards, tmp_path):
    models = {
        "recovery": _config_only_model(tmp_path / "rec", "recovery"),
        "autoencoder": _config_only_model(tmp_path / "vae", "autoencoder", {"model.z_channels": 8}),
    }
    req = request(str(shards), str(tmp_path / "out"), 2, stage="ldm", tracking_uri="none", models=models)
    with pytest.raises(IncompatibleError, match=r"vae has 8 latent channels.*ldm config tiny"):
        launcher.run_training(req, connect=_no_ray)


@pytest.mark.slow
def test_train_two_workers_tracked_in_mlflow_server(shards, tmp_path, mlflow_server):  # noqa: F811
    from mlflow import MlflowClient
    from PIL import Image

    from training.model_dir import load_model

    uri = mlflow_server.uri
    out = tmp_path / "out"
    argv = train_argv(str(shards), str(out), 4, "--tracking-uri", uri, "--experiment", "launcher-test")
    proc = subprocess.run(argv, cwd=REPO, env=subprocess_env(), capture_output=True, timeout=300)
    stdout, stderr = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 0, stderr[-3000:]
    assert "trained recovery to step 4" in stdout
    assert "registered as models:/hires-recovery/" in stdout
    assert "ray.train" not in stderr and "checkpoint_manager" not in stderr  # Ray's logging stays out

    model_dir = out / "recovery-tiny" / "model"
    model = load_model(str(model_dir))
    assert model.stage == "recovery" and model.meta["step"] == 4

    client = MlflowClient(uri, registry_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("launcher-test").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    run_id = run.info.run_id
    params = run.data.params
    assert params["world_size"] == "2" and params["stage"] == "recovery" and params["steps"] == "4"
    assert "hires train recovery" in params["command"]
    assert params["stage_config.train.crop_seconds"] == "0.1"
    steps = sorted(m.step for m in client.get_metric_history(run_id, "loss"))
    assert steps == [1, 2, 3, 4]
    metric_keys = set(run.data.metrics)
    assert {"data/skipped", "samples_per_s"} <= metric_keys
    assert any(k.startswith("lr") for k in metric_keys) and any(k.startswith("eval/") for k in metric_keys)
    index_sha = hashlib.sha256((shards / "index.json").read_bytes()).hexdigest()
    tags = run.data.tags
    assert tags["hires.stage"] == "recovery" and tags["hires.shards_index_sha256"] == index_sha
    assert tags["hires.code_version"] and tags["hires.restarts"] == "0"
    assert run.info.status == "FINISHED"

    # evaluation examples: three (clean, degraded, output) wavs that decode and a spectrogram PNG each
    import mlflow.artifacts
    import soundfile as sf

    def files(path: str) -> list[str]:
        found = []
        for a in client.list_artifacts(run_id, path):
            found += files(a.path) if a.is_dir else [a.path]
        return found

    evals = files("eval")
    wavs = [f for f in evals if f.endswith(".wav")]
    pngs = [f for f in evals if f.endswith(".png")]
    assert wavs and pngs and any(f.endswith("_output.wav") for f in wavs)
    for f in wavs[:3] + pngs[:1]:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=f, dst_path=str(tmp_path / "dl"), tracking_uri=uri
        )
        data = Path(local).read_bytes()
        if f.endswith(".wav"):
            x, sr = sf.read(io.BytesIO(data))
            assert sr in (16000, 48000) and len(x) > 0
        else:
            Image.open(io.BytesIO(data)).verify()

    # the model directory is the registered version, with its lineage
    versions = client.search_model_versions(f"name = 'hires-recovery' and run_id = '{run_id}'")
    assert len(versions) == 1
    mv = versions[0]
    assert mv.tags["hires.run_id"] == run_id and mv.tags["hires.shards_index_sha256"] == index_sha
    assert (
        mv.tags["hires.shards"] == str(shards) and mv.tags["hires.code_version"] == tags["hires.code_version"]
    )
    assert mv.tags["hires.step"] == "4"
    assert {a.path for a in client.list_artifacts(run_id, "model")} == {
        "model/model.json",
        "model/weights.safetensors",
    }

    # a rerun of the finished command does nothing and keeps the run and the version
    proc = subprocess.run(argv, cwd=REPO, env=subprocess_env(), capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert "already finished at step 4" in proc.stdout.decode()
    assert len(client.search_model_versions(f"name = 'hires-recovery' and run_id = '{run_id}'")) == 1


@pytest.mark.slow
def test_online_two_workers_leave_ray_data_a_cpu(tiny_synth_inputs, tmp_path):  # noqa: F811
    # two training workers on a 2-CPU local Ray: 0.5 CPU each, so Ray Data's render tasks get one and the
    # streaming split does not wait forever
    from train_run_helpers import FAST

    req = launcher.TrainRequest(
        stage="recovery",
        out=str(tmp_path / "out"),
        online={k: tiny_synth_inputs[k] for k in ("clean", "noise", "rir")},
        config="tiny",
        overrides=dict(FAST),
        workers=2,
        steps=4,
        tracking_uri="none",
    )
    summary = launcher.run_training(req)
    assert summary.run_name == "recovery-tiny-online" and summary.final_step == 4
    assert summary.cpus_per_worker == 0.5
    assert launcher.finished_step(summary.run_dir) == 4


@pytest.mark.slow
def test_elastic_workers(shards, tmp_path):
    summary = launcher.run_training(
        request(str(shards), str(tmp_path / "out"), 2, workers=(1, 2), tracking_uri="none")
    )
    assert summary.final_step == 2
    meta = json.loads(Path(summary.model_dir, "model.json").read_text())
    assert 1 <= meta["world_size"] <= 2


@pytest.mark.slow
def test_an_error_the_user_can_fix_on_a_worker_is_raised_as_is(shards, tmp_path):
    # e.g. an --init model whose network does not fit: raised inside train_func, reported by the driver as the
    # project's error (one line from the CLI), and the MLflow run marked FAILED
    from mlflow import MlflowClient

    def failing_train_func(config: dict) -> None:  # nested: Ray ships it by value to the workers
        from datasets.errors import IncompatibleError as WorkerError

        raise WorkerError("--init m: network does not fit")

    out = tmp_path / "out"
    with pytest.raises(IncompatibleError, match="network does not fit"):
        launcher.run_training(request(str(shards), str(out), 2), train_func=failing_train_func)
    uri = launcher.tracking.default_tracking_uri(str(out))
    runs = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("hires").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


def test_model_uris_are_downloaded_where_workers_read_them(shards, tmp_path):
    out = tmp_path / "out"
    uri = launcher.tracking.default_tracking_uri(str(out))
    src = tmp_path / "trained"
    src.mkdir()
    (src / "model.json").write_text(json.dumps({"stage": "recovery", "step": 3}))
    (src / "weights.safetensors").write_bytes(b"w")
    run_id, _ = launcher.tracking.find_or_create_run(uri, "hires", "earlier", str(tmp_path / "earlier"))
    version = launcher.tracking.log_and_register_model(uri, run_id, "recovery", str(src), {"step": 3})
    req = request(str(shards), str(out), 2, models={"init": f"models:/hires-recovery/{version}"})
    models = launcher.resolve_models(launcher.prepare(req))
    assert models["init"] == str(out / "recovery-tiny" / "inputs" / "init")
    assert (out / "recovery-tiny" / "inputs" / "init" / "weights.safetensors").read_bytes() == b"w"
    assert models["recovery"] is None and models["autoencoder"] is None
    # a resumed run keeps what it downloaded first (an alias may have moved since)
    (out / "recovery-tiny" / "inputs" / "init" / "weights.safetensors").write_bytes(b"kept")
    assert launcher.resolve_models(launcher.prepare(req))["init"] == models["init"]
    assert (out / "recovery-tiny" / "inputs" / "init" / "weights.safetensors").read_bytes() == b"kept"
    missing = request(
        str(shards), str(out), 2, run_name="other", models={"init": "models:/hires-recovery/99"}
    )
    with pytest.raises(DataError, match="models:/hires-recovery/99"):
        launcher.resolve_models(launcher.prepare(missing))


@pytest.mark.slow
def test_s3_out_trains_resumes_and_finishes(shards, tmp_path, s3_server):  # noqa: F811
    # OUT on S3 (a local moto server): checkpoints, the model directory and the run's state live in the bucket;
    # the tracking store is a local sqlite file (an s3:// OUT needs an explicit --tracking-uri)
    import fsspec
    import ray

    # Ray processes keep the environment they started with: a Ray shared with earlier tests would send the
    # workers to another test's S3 endpoint, so this run starts its own (the launcher stops it at the end)
    if ray.is_initialized():
        ray.shutdown()
    out = f"s3://{BUCKET}/train"
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = launcher.run_training(request(str(shards), out, 2, tracking_uri=tracking_uri))
    assert first.final_step == 2 and first.model_dir == f"{out}/recovery-tiny/model"
    more = launcher.run_training(request(str(shards), out, 4, tracking_uri=tracking_uri))
    assert more.resumed_from == 2 and more.final_step == 4 and more.run_id == first.run_id
    assert launcher.finished_step(f"{out}/recovery-tiny") == 4
    names = fsspec.filesystem("s3").ls(f"{BUCKET}/train/recovery-tiny/model")
    assert sorted(n.rsplit("/", 1)[-1] for n in names) == ["model.json", "weights.safetensors"]
    again = launcher.run_training(request(str(shards), out, 4, tracking_uri=tracking_uri), connect=_no_ray)
    assert again.status == "already finished"
    # two registered versions: the 2-step model and the continued 4-step one
    assert int(more.model_version) == int(first.model_version) + 1

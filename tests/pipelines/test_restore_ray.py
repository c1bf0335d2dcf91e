"""``hires restore --address``: the Ray Data batch job (pipelines.restore_ray) against the local mode.

Tiny random-init models, 2 DDIM steps, a few seconds of audio on the shared local Ray. The outputs of the batch
job are compared byte for byte with the local mode's: both run the same per-window code on the CPU with one torch
thread, each window with its own seed, and assemble the same windows in the same order, so even the FLAC bytes
agree. Only where the windows are grouped differently into network batches (``batch_size`` > 1: the job batches
across files, the local mode within one) may batched kernels round differently: there the test allows 1e-5.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
from model_helpers import write_tiny_models
from s3_server import BUCKET, s3_server  # noqa: F401 - fixture

from pipelines.cli import main
from pipelines.restore import EXIT_SOME_FAILED, REJECTS, restore_paths
from pipelines.restore_ray import WindowRestorer, pack_bundle, restore_on_ray
from training.restorer import Bundle, RestoreOptions, Restorer

OPTIONS = RestoreOptions(steps=2, seed=3, keep_stages=True)
POOL = {
    "actors": 2,
    "cpus_per_actor": 0.5,
}  # two actors on the 2-CPU test Ray, room left for the feeding tasks
FFMPEG = shutil.which("ffmpeg") is not None
# restored files (an ffmpeg-only container too where ffmpeg exists: each actor decodes it for itself)
RESTORED = sorted(["long.flac", "sub/short.flac", *(["sub/call.flac"] if FFMPEG else [])])
OUTPUTS = sorted([*RESTORED, *(n.replace(".flac", ".recovery.flac") for n in RESTORED)])


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the actors' thread count: the local reference must compute the same way
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    return write_tiny_models(tmp_path_factory.mktemp("restore_ray_models"))


def _tone(seconds: float, sr: int, freq: float) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A three-window file (11 s at 22.05 kHz), a one-window stereo file and an m4a in a sub-folder, and a text
    file."""
    root = tmp_path_factory.mktemp("restore_ray_inputs") / "in"
    (root / "sub").mkdir(parents=True)
    sf.write(root / "long.wav", _tone(11.0, 22050, 300), 22050)
    sf.write(root / "sub" / "short.flac", np.stack([_tone(1.5, 44100, 500)] * 2, axis=1), 44100)
    (root / "bad.wav").write_text("not audio\n")
    if FFMPEG:
        sf.write(root / "call.wav", _tone(1.0, 16000, 400), 16000)
        subprocess.run(
            [
                "ffmpeg",
                "-v",
                "error",
                "-i",
                str(root / "call.wav"),
                "-c:a",
                "aac",
                str(root / "sub" / "call.m4a"),
            ],
            check=True,
        )
        (root / "call.wav").unlink()
    return root


@pytest.fixture(scope="module")
def local_reference(models, inputs, tmp_path_factory) -> Path:
    """The local mode's outputs for :data:`OPTIONS`."""
    out = tmp_path_factory.mktemp("restore_ray_local") / "out"
    torch.set_num_threads(1)
    summary = restore_paths(
        [str(inputs)], out, lambda: Restorer(Bundle.load(**models)), OPTIONS, progress=False
    )
    assert len(summary.restored) == len(RESTORED) and len(summary.rejected) == 1
    return out


def _rejects(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / REJECTS).read_text().splitlines()]


def test_folder_job_matches_the_local_mode_byte_for_byte_and_reruns(
    models, inputs, local_reference, tmp_path, ray_session
):
    out = tmp_path / "out"
    summary = restore_on_ray(
        [str(inputs)], str(out), Bundle.load(**models), OPTIONS, address="auto", progress=False, **POOL
    )
    assert sorted(Path(p).relative_to(out).as_posix() for p in summary.restored) == RESTORED
    assert summary.windows == len(RESTORED) + 2  # 3 + 1 (+ 1): each window a row of its own
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (local_reference / name).read_bytes(), name
    x, sr = sf.read(out / "long.flac")
    assert sr == 48000 and len(x) == round(11.0 * 48000) and sf.info(out / "long.flac").subtype == "PCM_24"
    # the same one-line reason as the local mode, nothing left behind but outputs and rejects
    assert _rejects(out) == _rejects(local_reference)
    assert "bad.wav: not readable audio" in _rejects(out)[0]["reason"]
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == sorted(
        [*map(lambda n: Path(n).name, OUTPUTS), REJECTS]
    )

    # a rerun through the command line skips what is done, and still reports the bad input (exit code 3)
    before = {n: (out / n).stat().st_mtime_ns for n in OUTPUTS}
    code = main(
        ["-q", "restore", str(inputs), "--out", str(out), "--address", "auto", "--steps", "2", "--seed", "3"]
        + [f"--{s}={p}" for s, p in models.items()]
        + ["--keep-stages", "--threads", "1"]
    )
    assert code == EXIT_SOME_FAILED
    assert {n: (out / n).stat().st_mtime_ns for n in OUTPUTS} == before
    assert [r["path"] for r in _rejects(out)] == [str(inputs / "bad.wav")]


def test_actor_reports_a_window_it_cannot_read_instead_of_failing(models, inputs, tmp_path, ray_session):
    src = tmp_path / "x.wav"
    shutil.copy(inputs / "long.wav", src)
    actor = WindowRestorer(
        ray_session.put(pack_bundle(Bundle.load(**models))), "cpu", 1, OPTIONS, ["restored"]
    )
    batch = {
        "file": np.array([0, 0]),
        "index": np.array([0, 1]),
        "source": np.array([str(src), str(src)], dtype=object),
        "sample_rate": np.array([22050] * 2),
        "channels": np.array([1] * 2),
        "frames": np.array([242550] * 2),
        "length": np.array([528000] * 2),
        "gain": np.array([1.0] * 2),
        "start": np.array([0, 215040]),
        "window": np.array([245760] * 2),
    }
    ok = actor(batch)
    assert list(ok["error"]) == ["", ""] and ok["restored"].shape == (2, 245760)
    src.unlink()
    actor._open[1].close()
    actor._open = None  # a fresh actor: the file is gone
    failed = actor(batch)
    assert all("file not found" in e for e in failed["error"]) and not failed["restored"].any()


def test_s3_prefix_and_manifest_inputs_batched_windows_to_an_s3_output(
    models,
    inputs,
    local_reference,
    s3_server,  # noqa: F811
):
    """An s3:// prefix and a manifest on S3 (read by the workers a window at a time, never copied whole), outputs
    and rejects on S3. Windows go two per network call, grouped across files where the local mode groups them
    within one file, so batched kernels may round differently: equal within 1e-5 rather than byte for byte. A listed
    file that does not exist is a reject and the others go on; a rerun finds everything done."""
    import fsspec
    import ray

    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    for path in inputs.rglob("*"):
        if path.is_file():
            fs.put_file(str(path), f"{BUCKET}/in/{path.relative_to(inputs).as_posix()}")
    listed = [f"s3://{BUCKET}/in/long.wav", f"s3://{BUCKET}/in/gone.wav"]
    local_manifest = inputs.parent / "list.parquet"
    pq.write_table(pa.table({"path": listed}), local_manifest)
    fs.put_file(str(local_manifest), f"{BUCKET}/lists/list.parquet")
    sources = [f"s3://{BUCKET}/in/sub", f"s3://{BUCKET}/lists/list.parquet"]
    # the workers must see the S3 endpoint of this test: a Ray started after the variables were set
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        out = f"s3://{BUCKET}/out"
        summary = restore_on_ray(
            sources, out, Bundle.load(**models), OPTIONS, address="auto", batch_size=2, progress=False, **POOL
        )
        assert sorted(summary.restored) == sorted(f"{out}/{Path(n).name}" for n in RESTORED)
        for name in OUTPUTS:
            got, _ = sf.read(io.BytesIO(fs.cat_file(f"{BUCKET}/out/{Path(name).name}")), dtype="float32")
            want, _ = sf.read(local_reference / name, dtype="float32")
            assert got.shape == want.shape and np.abs(got - want).max() <= 1e-5, name
        rejects = [json.loads(line) for line in fs.cat_file(f"{BUCKET}/out/{REJECTS}").decode().splitlines()]
        assert [r["path"] for r in rejects] == [listed[1]] and "file not found" in rejects[0]["reason"]
        again = restore_on_ray(
            sources, out, Bundle.load(**models), OPTIONS, address="auto", progress=False, **POOL
        )
        assert len(again.skipped) == len(RESTORED) and not again.restored
    finally:
        ray.shutdown()  # the next test's Ray must not carry this test's S3 endpoint


def test_reassembly_rejects_a_file_whose_window_failed_and_writes_the_next(tmp_path):
    """The driver side alone (ordered rows as the pool returns them): a failed window rejects its file with the
    actor's reason and leaves nothing of it behind; the next file is written whole."""
    from pipelines.restore_ray import RayJob, RayRestoreSummary, _assemble, _Planner

    planner = _Planner(None, 1440)
    todo = [RayJob("/in/a.wav", str(tmp_path / "a.flac")), RayJob("/in/b.wav", str(tmp_path / "b.flac"))]
    rows = {
        i: {
            "source": j.source,
            "sample_rate": 48000,
            "channels": 1,
            "frames": n,
            "length": n,
            "loudness": -20.0,
            "gain": 1.0,
        }
        for i, (j, n) in enumerate(zip(todo, [6 * 48000, 48000], strict=True))
    }
    window = planner.window_plan(48000, RestoreOptions()).window
    results = [
        {"file": 0, "index": 0, "error": "", "restored": np.full(window, 0.1, np.float32)},
        {
            "file": 0,
            "index": 1,
            "error": "/in/a.wav: disappeared while it was being restored",
            "restored": np.zeros(window, np.float32),
        },
        {"file": 1, "index": 0, "error": "", "restored": np.full(window, 0.25, np.float32)},
    ]

    class Ordered:
        def iter_rows(self):
            return iter(results)

    summary = RayRestoreSummary(out=str(tmp_path))
    _assemble(
        Ordered(), todo, rows, planner, ["restored"], RestoreOptions(), "flac", str(tmp_path), False, summary
    )
    assert summary.rejected == [
        {"path": "/in/a.wav", "reason": "/in/a.wav: disappeared while it was being restored"}
    ]
    assert summary.restored == [todo[1].output] and summary.windows == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.flac"]
    x, sr = sf.read(tmp_path / "b.flac", dtype="float32")
    assert sr == 48000 and len(x) == 48000 and np.allclose(x, 0.25, atol=1e-6)


@pytest.mark.parametrize(
    ("resources", "device", "expected"),
    [
        ({"CPU": 16.0, "GPU": 2.0}, "auto", ("cuda", 2, 1.0, 1)),  # a GPU per actor when there are GPUs
        ({"CPU": 16.0}, "auto", ("cpu", 15, 1.0, 0)),  # CPUs otherwise, a little left for the feeding tasks
        ({"CPU": 2.0}, "cpu", ("cpu", 1, 1.0, 0)),
    ],
)
def test_actor_pool_follows_the_cluster(monkeypatch, resources, device, expected):
    import ray

    from pipelines.restore_ray import _resources

    monkeypatch.setattr(ray, "cluster_resources", lambda: resources)
    assert _resources(device, None, None) == expected


def test_cuda_on_a_cluster_without_gpus_is_a_usage_error(monkeypatch):
    import ray

    from datasets.errors import UsageError
    from pipelines.restore_ray import _resources

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0})
    with pytest.raises(UsageError, match="--device cuda: the Ray cluster has no GPU"):
        _resources("cuda", None, None)

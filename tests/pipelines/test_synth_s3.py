"""Synthesis with s3:// inputs and output against a local S3 API server (moto), shards read back from S3."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from s3_server import BUCKET, s3_server  # noqa: F401 - fixture
from synth_helpers import REPO, subprocess_env, synth_argv

from datasets.manifest import read_manifest, write_manifest
from datasets.shards import find_raw_sample, iter_samples, shard_path
from pipelines.shards import verify_shards


def _upload_manifest(fs, manifest: str, kind: str, tmp: Path) -> str:
    """Copy a manifest's audio to the bucket; return the s3:// URI of a manifest pointing there."""
    df = read_manifest(manifest)
    root = Path(manifest).parent
    rows = []
    for row in df.to_dict("records"):
        rel = Path(row["path"]).relative_to(root).as_posix()
        uri = f"s3://{BUCKET}/inputs/{kind}/{rel}"
        fs.put_file(row["path"], uri)
        rows.append({**row, "path": uri})
    local = tmp / f"{kind}.parquet"
    write_manifest(rows, local, kind=kind)
    uri = f"s3://{BUCKET}/inputs/{kind}/manifest.parquet"
    fs.put_file(str(local), uri)
    return uri


def test_s3_inputs_and_output_match_the_local_run(s3_server, demo_inputs, reference_run, tmp_path):  # noqa: F811
    import fsspec

    endpoint, env = s3_server
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    inputs = {
        "clean": _upload_manifest(fs, demo_inputs["clean"], "speech", tmp_path),
        "noise": _upload_manifest(fs, demo_inputs["noise"], "noise", tmp_path),
        "rir": _upload_manifest(fs, demo_inputs["rir"], "rir", tmp_path),
    }
    out = f"s3://{BUCKET}/runs/a"
    argv = synth_argv(inputs, out, "--num-cpus", "2")
    done = subprocess.run(argv, cwd=REPO, env=subprocess_env(**env), capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]

    # nothing but complete objects; index and shards read back from S3 verify
    names = sorted(Path(p).name for p in fs.ls(f"{BUCKET}/runs/a/shards"))
    local_index = json.loads((reference_run / "index.json").read_text())
    assert names == [s["name"] for s in local_index["shards"]]
    report = verify_shards(out)
    assert report.ok, report.problems
    index = json.loads(fs.cat_file(f"{BUCKET}/runs/a/index.json"))
    # the shards only record source ids, never paths: the same corpus on S3 gives the same bytes
    assert [s["sha256"] for s in index["shards"]] == [s["sha256"] for s in local_index["shards"]]
    key = _all_keys(reference_run)[0]
    assert find_raw_sample(out, key).degraded == find_raw_sample(str(reference_run), key).degraded
    # the format's reader streams a shard straight from S3
    first = local_index["shards"][0]
    from_s3 = list(iter_samples(shard_path(out, first["name"])))
    assert len(from_s3) == first["samples"] and from_s3[0].clean.shape == (245_760,)

    # a rerun keeps everything (sha256 checked against the S3 objects)
    again = subprocess.run(argv, cwd=REPO, env=subprocess_env(**env), capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr.decode()[-3000:]
    assert f"0 rendered, {len(names)} kept" in again.stderr.decode()


def test_ray_data_reads_the_shards_back_from_s3(s3_server, reference_run, ray_session):  # noqa: F811
    """Shards uploaded by the synthesis layout are readable by ``ray.data.read_webdataset`` from S3."""
    import fsspec
    import pyarrow.fs as pafs
    import ray

    endpoint, env = s3_server
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    for tar in sorted((reference_run / "shards").iterdir()):
        fs.put_file(str(tar), f"s3://{BUCKET}/copy/shards/{tar.name}")
    s3 = pafs.S3FileSystem(
        access_key="testing",
        secret_key="testing",
        region="us-east-1",
        endpoint_override=endpoint.removeprefix("http://"),
        scheme="http",
    )
    rows = ray.data.read_webdataset(f"{BUCKET}/copy/shards", filesystem=s3, decoder=None).take_all()
    index = json.loads((reference_run / "index.json").read_text())
    assert len(rows) == index["totals"]["samples"]
    assert sorted(r["__key__"] for r in rows) == sorted(_all_keys(reference_run))


def _all_keys(run: Path) -> list[str]:
    import pyarrow.parquet as pq

    return pq.read_table(run / "plan.parquet").column("key").to_pylist()

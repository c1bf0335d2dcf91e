"""Synthesis: planning, shard layout, byte reproducibility, resume after a kill, refusal of mismatched reruns."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from synth_helpers import (
    REPO,
    SAMPLES_PER_SHARD,
    SEED,
    assert_same_run,
    copy_run,
    subprocess_env,
    synth_argv,
    tree_bytes,
    wait_for,
)

from datasets.audio import decode_audio
from datasets.manifest import read_manifest
from datasets.synth_config import load_synth_config
from datasets.synth_plan import (
    auto_samples_per_shard,
    format_plan_summary,
    make_plan,
    plan_bytes,
    plan_summary,
    segment_utterance,
)
from pipelines.synth_run import plan_synth, render_synth, run_synth


# ------------------------------------------------------------------------------------------------ planning
def test_segment_utterance_pads_or_drops_the_tail():
    cfg = load_synth_config(overrides={"segment.min_tail_seconds": 1.0})
    seg = 245_760
    assert cfg.segment.samples == seg
    pieces, dropped = segment_utterance(2 * seg + 48_000, 48_000, cfg)  # 1.0 s tail: kept, padded
    assert pieces == [(0, seg, seg), (seg, seg, seg), (2 * seg, 48_000, 48_000)] and not dropped
    pieces, dropped = segment_utterance(2 * seg + 47_999, 48_000, cfg)  # just under 1 s: dropped
    assert [p[0] for p in pieces] == [0, seg] and dropped
    pieces, dropped = segment_utterance(30_000, 48_000, cfg)  # shorter than the minimum: nothing
    assert pieces == [] and dropped
    cfg_drop = load_synth_config(overrides={"segment.tail": "drop"})
    pieces, dropped = segment_utterance(seg + 200_000, 48_000, cfg_drop)
    assert pieces == [(0, seg, seg)] and dropped


def test_segment_utterance_counts_source_frames_at_the_source_rate():
    cfg = load_synth_config()
    # 44.1 kHz: 5.12 s is 225 792 source frames; a 2.56 s tail is 112 896 frames -> 122 880 output samples
    pieces, _ = segment_utterance(225_792 + 112_896, 44_100, cfg)
    assert pieces == [(0, 225_792, 245_760), (225_792, 112_896, 122_880)]


def test_min_tail_longer_than_segment_is_a_config_error():
    from datasets.config import ConfigError

    with pytest.raises(ConfigError, match="min_tail_seconds"):
        load_synth_config(overrides={"segment.min_tail_seconds": 6.0})


def test_plan_orders_keys_groups_shards_and_is_deterministic(demo_inputs, synth_cfg):
    from degradations import Banks

    catalog = Banks.from_manifests(demo_inputs["noise"], demo_inputs["rir"], sr=48_000).catalog()
    clean = read_manifest(demo_inputs["clean"])
    plan = make_plan(clean, synth_cfg, SEED, catalog)
    table, stats = plan.table, plan.stats
    assert plan.cfg.shards.samples_per_shard == SAMPLES_PER_SHARD
    rows = table.to_pylist()
    assert stats.utterances == len(clean) and stats.segments == len(rows) > 2 * SAMPLES_PER_SHARD
    keys = [r["key"] for r in rows]
    assert len(set(keys)) == len(keys)
    assert all(r["key"] == f"{r['source_id']}_{int(r['key'].rsplit('_', 1)[1]):04d}" for r in rows)
    order = {"train": 0, "valid": 1, "test": 2}
    assert [(order[r["split"]], r["key"]) for r in rows] == sorted(
        (order[r["split"]], r["key"]) for r in rows
    )
    for shard in {r["shard"] for r in rows}:
        members = [r for r in rows if r["shard"] == shard]
        assert 1 <= len(members) <= SAMPLES_PER_SHARD
        assert [r["position"] for r in members] == list(range(len(members)))
        assert len({r["split"] for r in members}) == 1
    assert all(json.loads(r["steps"]) for r in rows)
    # same inputs, same bytes; one row group per shard
    table2 = make_plan(clean, synth_cfg, SEED, catalog).table
    data = plan_bytes(table, {"seed": SEED})
    assert data == plan_bytes(table2, {"seed": SEED})
    assert pq.ParquetFile(io.BytesIO(data)).num_row_groups == len({r["shard"] for r in rows})
    # another seed draws other chains for the same keys
    table3 = make_plan(clean, synth_cfg, SEED + 1, catalog).table
    assert table3.column("key").to_pylist() == keys
    assert table3.column("steps").to_pylist() != table.column("steps").to_pylist()


def test_auto_shard_size_follows_the_corpus_size_only(demo_inputs):
    from degradations import Banks

    # enough shards for 64 workers, 16..512 samples each
    assert [auto_samples_per_shard(n) for n in (1, 100, 64 * 16, 64 * 16 + 1, 64 * 300, 10**7)] == [
        16,
        16,
        16,
        17,
        300,
        512,
    ]
    catalog = Banks.from_manifests(demo_inputs["noise"], demo_inputs["rir"], sr=48_000).catalog()
    clean = read_manifest(demo_inputs["clean"])
    auto = make_plan(clean, load_synth_config(), SEED, catalog)
    assert load_synth_config().shards.samples_per_shard == "auto"
    assert auto.cfg.shards.samples_per_shard == 16  # a small corpus: the lower bound
    explicit = make_plan(clean, load_synth_config(overrides={"shards.samples_per_shard": 3}), SEED, catalog)
    assert explicit.cfg.shards.samples_per_shard == 3
    assert max(explicit.table.column("position").to_pylist()) == 2


def test_plan_summary_counts_samples_operators_and_codecs(demo_inputs, synth_cfg):
    from degradations import Banks

    catalog = Banks.from_manifests(demo_inputs["noise"], demo_inputs["rir"], sr=48_000).catalog()
    table = make_plan(read_manifest(demo_inputs["clean"]), synth_cfg, SEED, catalog).table
    summary = plan_summary(table, 5.12)
    rows = table.to_pylist()
    assert summary["samples"] == len(rows) and summary["hours"] == pytest.approx(
        len(rows) * 5.12 / 3600, abs=1e-4
    )
    assert sum(s["samples"] for s in summary["splits"].values()) == len(rows)
    assert summary["ops"]["loudness"] == len(rows)
    codec_rows = [r for r in rows if '"op":"codec"' in r["steps"]]
    assert summary["ops"].get("codec", 0) == len(codec_rows)
    assert sum(c["samples"] for c in summary["codecs"].values()) == len(codec_rows)
    assert all(c["samples"] == sum(c["kbps"].values()) for c in summary["codecs"].values())
    text = "\n".join(format_plan_summary(summary))
    assert f"{len(rows)} samples" in text and "loudness" in text and "train" in text


# --------------------------------------------------------------------------------------------- shard layout
def test_reference_run_layout_index_and_members(reference_run):
    index = json.loads((reference_run / "index.json").read_text())
    plan = pq.read_table(reference_run / "plan.parquet").to_pylist()
    assert index["format_version"] == 1 and index["seed"] == SEED
    assert (
        index["config"]["shards"]["samples_per_shard"] == SAMPLES_PER_SHARD and "ray" not in index["config"]
    )
    assert set(index["manifests"]) == {"clean", "noise", "rir"}
    names = sorted(p.name for p in (reference_run / "shards").iterdir())
    assert names == [s["name"] for s in index["shards"]] == [f"shard-{i:06d}.tar" for i in range(len(names))]
    assert index["totals"]["samples"] == sum(s["samples"] for s in index["shards"]) == len(plan)
    assert index["totals"]["hours"] == pytest.approx(len(plan) * 5.12 / 3600, abs=1e-5)
    assert index["rejects"] == []

    by_key = {r["key"]: r for r in plan}
    for entry in index["shards"]:
        with tarfile.open(reference_run / "shards" / entry["name"]) as tar:
            members = tar.getmembers()
            assert all(
                m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" and m.mode == 0o644
                for m in members
            )
            keys = [r["key"] for r in plan if f"shard-{r['shard']:06d}.tar" == entry["name"]]
            expected = [f"{k}.{s}" for k in keys for s in ("clean.flac", "degraded.flac", "json")]
            assert [m.name for m in members] == expected
            meta = json.loads(tar.extractfile(f"{keys[0]}.json").read())
            clean, sr = decode_audio(tar.extractfile(f"{keys[0]}.clean.flac").read())
            degraded, _ = decode_audio(tar.extractfile(f"{keys[0]}.degraded.flac").read())
        row = by_key[keys[0]]
        assert sr == 48_000 and clean.shape == degraded.shape == (245_760,)
        assert not np.array_equal(clean, degraded)
        assert meta["ops"] == json.loads(row["steps"]) and meta["seed"] == SEED
        assert (meta["source_id"], meta["offset"], meta["valid"]) == (
            row["source_id"],
            row["offset"],
            row["valid"],
        )
        assert {
            "speaker",
            "corpus",
            "split",
            "snr_db",
            "rt60",
            "codec",
            "bitrate_kbps",
            "code_version",
        } <= set(meta)
        assert meta["code_version"] == index["code_version"]
        assert np.all(clean[meta["valid"] :] == 0)  # zero padding past the valid length


# --------------------------------------------------------------------------------------------- reproducible
def test_one_worker_gives_the_same_bytes_as_two(reference_run, demo_inputs, synth_cfg, ray_session, tmp_path):
    summary = run_synth(
        **demo_inputs, out=str(tmp_path / "one"), cfg=synth_cfg, seed=SEED, num_cpus=1, progress=False
    )
    assert summary.cpus == 1 and summary.rendered == summary.shards and summary.kept == 0
    assert_same_run(reference_run, tmp_path / "one")


def test_rerun_keeps_intact_shards_and_rerenders_damaged_or_unrecorded_ones(
    reference_run, demo_inputs, synth_cfg, ray_session, tmp_path
):
    run = copy_run(reference_run, tmp_path / "run")
    shards = sorted((run / "shards").iterdir())
    damaged = shards[0]
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, one bit flipped
    damaged.write_bytes(bytes(data))
    (run / "state" / shards[1].name.replace(".tar", ".json")).unlink()  # killed before its record was written
    shards[2].unlink()  # never published
    summary = run_synth(**demo_inputs, out=str(run), cfg=synth_cfg, seed=SEED, progress=False)
    assert (summary.rendered, summary.kept) == (3, len(shards) - 3)
    assert_same_run(reference_run, run)


def test_resume_after_killing_the_job_matches_an_uninterrupted_run(
    reference_run, demo_inputs, synth_cfg, ray_session, tmp_path
):
    """SIGKILL the whole job (driver and its local Ray) once some shards are done, then run it again."""
    out = tmp_path / "killed"
    argv = synth_argv(demo_inputs, str(out), "--num-cpus", "1")
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        env=subprocess_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        state = out / "state"
        wait_for(
            lambda: proc.poll() is not None or (state.is_dir() and len(list(state.iterdir())) >= 2),
            timeout_s=120,
            what="two finished shards",
        )
        assert proc.poll() is None, (
            f"job ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
        )
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    plan_rows = pq.read_table(out / "plan.parquet").num_rows
    planned_shards = len(json.loads((reference_run / "index.json").read_text())["shards"])
    assert plan_rows == pq.read_table(reference_run / "plan.parquet").num_rows
    done = sorted(p.name for p in (out / "shards").iterdir())
    assert 2 <= len(done) < planned_shards and not (out / "index.json").exists()
    # every shard visible after the kill is complete: byte-identical to the uninterrupted run's
    straight = tree_bytes(reference_run)
    for name in done:
        assert (out / "shards" / name).read_bytes() == straight[f"shards/{name}"], name
    resumed = run_synth(**demo_inputs, out=str(out), cfg=synth_cfg, seed=SEED, progress=False)
    assert resumed.kept >= 2 and resumed.rendered == planned_shards - resumed.kept
    assert_same_run(reference_run, out)


def test_cli_plan_then_render_equals_the_one_go_run(
    reference_run, demo_inputs, ray_session, tmp_path, capsys
):
    from pipelines.cli import main

    out = tmp_path / "two-step"
    argv = synth_argv(demo_inputs, str(out))[4:]  # after `python -m pipelines -q`
    assert main(["synth", "plan", *argv[1:]]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["plan.parquet"]
    samples = json.loads((reference_run / "index.json").read_text())["totals"]["samples"]
    assert f"{samples} samples" in printed and "hires synth render" in printed and "noise" in printed
    assert main(["-q", "synth", "render", str(out)]) == 0
    assert_same_run(reference_run, out)


def test_render_needs_a_plan_with_unchanged_inputs(demo_inputs, tmp_path, capsys):
    import shutil

    from datasets.errors import IncompatibleError
    from datasets.manifest import write_manifest
    from pipelines.cli import main

    assert main(["synth", "render", str(tmp_path / "empty")]) == 2
    assert "no plan" in capsys.readouterr().err
    noise = tmp_path / "noise.parquet"
    shutil.copyfile(demo_inputs["noise"], noise)
    cfg = load_synth_config(overrides={"shards.samples_per_shard": 2})
    out = tmp_path / "run"
    plan_synth(demo_inputs["clean"], str(noise), demo_inputs["rir"], str(out), cfg, seed=1)
    rows = read_manifest(str(noise)).to_dict("records")[:-1]
    write_manifest(rows, noise, kind="noise")  # the bank changed after planning
    with pytest.raises(IncompatibleError, match="manifests"):
        render_synth(str(out))


def test_rerun_with_another_seed_or_config_is_refused_unless_forced(demo_inputs, ray_session, tmp_path):
    from datasets.manifest import write_manifest

    # two utterances only: cheap to render twice
    clean = read_manifest(demo_inputs["clean"]).head(2)
    small = tmp_path / "clean.parquet"
    write_manifest(clean.to_dict("records"), small, kind="speech")
    inputs = {**demo_inputs, "clean": str(small)}
    cfg = load_synth_config(overrides={"shards.samples_per_shard": 2})
    out = str(tmp_path / "run")
    run_synth(**inputs, out=out, cfg=cfg, seed=1, progress=False)
    with pytest.raises(FileExistsError, match="seed"):
        run_synth(**inputs, out=out, cfg=cfg, seed=2, progress=False)
    other = load_synth_config(overrides={"shards.samples_per_shard": 3})
    with pytest.raises(FileExistsError, match=r"config \(shards\.samples_per_shard: 2 -> 3\)"):
        run_synth(**inputs, out=out, cfg=other, seed=1, progress=False)
    # execution settings are not part of the identity
    faster = load_synth_config(overrides={"shards.samples_per_shard": 2, "ray.cpus_per_task": 0.5})
    assert run_synth(**inputs, out=out, cfg=faster, seed=1, progress=False).kept > 0
    forced = run_synth(**inputs, out=out, cfg=other, seed=2, force=True, progress=False)
    assert forced.kept == 0 and json.loads((tmp_path / "run" / "index.json").read_text())["seed"] == 2


def test_cli_synth_print_config_and_bad_override(capsys):
    from pipelines.cli import main

    assert (
        main(
            [
                "synth",
                "--clean",
                "c",
                "--noise",
                "n",
                "--rir",
                "r",
                "--out",
                "o",
                "--print-config",
                "--samples-per-shard",
                "16",
                "--set",
                "segment.tail=drop",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "samples_per_shard: 16" in text and "tail: drop" in text and "chain:" in text
    assert (
        main(["synth", "--clean", "c", "--noise", "n", "--rir", "r", "--out", "o", "--set", "segment.nope=1"])
        == 2
    )
    assert "segment.nope: unknown key" in capsys.readouterr().err


def test_undecodable_source_is_a_recorded_reject(demo_inputs, ray_session, tmp_path):
    import shutil

    from datasets.manifest import write_manifest
    from pipelines.shards import verify_shards

    rows = read_manifest(demo_inputs["clean"]).head(3).to_dict("records")
    for row in rows:  # own copies: one of them gets corrupted
        copy = tmp_path / "audio" / Path(row["path"]).name
        copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(row["path"], copy)
        row["path"] = str(copy)
    Path(rows[1]["path"]).write_bytes(b"fLaC" + b"\x00" * 4000)  # header intact, stream garbage
    manifest = tmp_path / "clean.parquet"
    write_manifest(rows, manifest, kind="speech")
    cfg = load_synth_config(overrides={"shards.samples_per_shard": 2})
    out = tmp_path / "run"
    summary = run_synth(
        **{**demo_inputs, "clean": str(manifest)}, out=str(out), cfg=cfg, seed=1, progress=False
    )
    index = json.loads((out / "index.json").read_text())
    bad = [
        r["key"] for r in pq.read_table(out / "plan.parquet").to_pylist() if r["source_id"] == rows[1]["id"]
    ]
    assert bad and [r["key"] for r in index["rejects"]] == bad and summary.rejects == len(bad)
    assert all(rows[1]["path"] in r["reason"] for r in index["rejects"])
    assert index["totals"]["samples"] == pq.read_table(out / "plan.parquet").num_rows - len(bad)
    assert verify_shards(str(out)).ok
    # rejects are part of the shard records: a rerun keeps everything and reports the same rejects
    again = run_synth(
        **{**demo_inputs, "clean": str(manifest)}, out=str(out), cfg=cfg, seed=1, progress=False
    )
    assert again.rendered == 0 and again.rejects == len(bad)


def test_cli_unreachable_cluster_is_a_one_line_error_before_anything_is_written(
    demo_inputs, tmp_path, capsys
):
    import ray
    from synth_helpers import free_port

    from pipelines.cli import main

    if ray.is_initialized():  # as in a fresh `hires` process: an initialised Ray would be used as it is
        ray.shutdown()
    out = tmp_path / "never"
    argv = [
        "synth",
        "--clean",
        demo_inputs["clean"],
        "--noise",
        demo_inputs["noise"],
        "--rir",
        demo_inputs["rir"],
    ]
    assert main([*argv, "--out", str(out), "--address", f"127.0.0.1:{free_port()}"]) == 2
    assert "no Ray cluster answers there" in capsys.readouterr().err
    assert not out.exists()


def test_shipped_yaml_equals_the_model_defaults():
    from datasets.synth_config import SynthConfig, output_sha256

    shipped, defaults = load_synth_config(), SynthConfig()
    for section in ("segment", "shards", "ray"):
        assert getattr(shipped, section) == getattr(defaults, section), section
    # execution settings never enter the output identity
    faster = load_synth_config(overrides={"ray.cpus_per_task": 2.0})
    assert output_sha256(faster) == output_sha256(shipped)
    assert output_sha256(load_synth_config(overrides={"segment.tail": "drop"})) != output_sha256(shipped)


def test_a_second_run_on_the_same_directory_fails_at_once_naming_the_owner(demo_inputs, tmp_path, capsys):
    from datasets.lease import hold_lease
    from pipelines.cli import main

    out = tmp_path / "busy"
    argv = synth_argv(demo_inputs, str(out))[5:]  # the flags after `synth`
    with hold_lease(str(out), what="synth"):
        assert main(["synth", "plan", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "hires synth" in err
    assert not (out / "plan.parquet").exists()
    assert main(["synth", "plan", *argv]) == 0  # released: the directory is free again


def test_lease_stale_after_takes_over_a_silent_holder(demo_inputs, tmp_path, capsys):
    import json
    import time

    from pipelines.cli import main

    out = tmp_path / "abandoned"
    out.mkdir()
    # a holder on another host whose last heartbeat is 60 s old: fresh for the default 300 s, stale for 30 s
    now = time.time()
    holder = {"owner": "bob", "host": "node-7", "pid": 99, "started": now - 600, "heartbeat": now - 60}
    (out / ".lease.json").write_text(
        json.dumps({**holder, "what": "synth", "token": "t", "stale_after_s": 300})
    )
    argv = synth_argv(demo_inputs, str(out))[5:]
    assert main(["synth", "plan", *argv]) == 2
    assert "bob" in capsys.readouterr().err
    assert main(["synth", "plan", *argv, "--lease-stale-after", "30"]) == 0
    assert (out / "plan.parquet").exists()


def test_a_run_whose_lease_was_taken_over_does_not_publish_its_index(demo_inputs, ray_session, tmp_path):
    import json

    from datasets.lease import LeaseLostError
    from datasets.manifest import write_manifest

    small = tmp_path / "clean.parquet"
    write_manifest(read_manifest(demo_inputs["clean"]).head(2).to_dict("records"), small, kind="speech")
    inputs = {**demo_inputs, "clean": str(small)}
    cfg = load_synth_config(overrides={"shards.samples_per_shard": 2})
    out = tmp_path / "run"

    def taken_over(_entry: dict) -> None:
        # another run took the directory over while this one rendered (this one stalled past the stale time)
        lease = json.loads((out / ".lease.json").read_text())
        (out / ".lease.json").write_text(json.dumps({**lease, "owner": "other", "token": "another-run"}))

    with pytest.raises(LeaseLostError, match="taken over"):
        run_synth(**inputs, out=str(out), cfg=cfg, seed=1, progress=False, on_shard=taken_over)
    assert not (out / "index.json").exists()
    assert json.loads((out / ".lease.json").read_text())["owner"] == "other"  # the new owner keeps its lease

"""``hires shards list``: the keys ``shards inspect`` asks for, with split, shard, source and operators."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
from synth_helpers import copy_run

from pipelines.cli import main
from pipelines.shards import list_samples


def test_list_gives_every_sample_with_its_split_shard_source_and_ops(reference_run, capsys):
    plan = pq.read_table(reference_run / "plan.parquet").to_pylist()
    assert main(["shards", "list", str(reference_run)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t") == ["key", "split", "shard", "source", "ops"]
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[0] for r in rows] == [p["key"] for p in plan]
    for row, planned in zip(rows, plan, strict=True):
        ops = [step["op"] for step in json.loads(planned["steps"])]
        assert row[1:] == [
            planned["split"],
            f"shard-{planned['shard']:06d}.tar",
            planned["source_id"],
            ",".join(ops),
        ]
    key = rows[-1][0]
    assert main(["shards", "inspect", str(reference_run), "--key", key]) == 0  # what inspect takes
    assert json.loads(capsys.readouterr().out)["key"] == key


def test_list_by_split_as_json_and_without_a_plan(reference_run, tmp_path, capsys):
    split = pq.read_table(reference_run / "plan.parquet").column("split").to_pylist()[0]
    assert main(["shards", "list", str(reference_run), "--split", split, "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert listed and {r["split"] for r in listed} == {split}
    run = copy_run(reference_run, tmp_path / "run")
    (run / "plan.parquet").unlink()  # read from the shards' JSON members instead
    assert list_samples(str(run)) == list_samples(str(reference_run))
    assert main(["shards", "list", str(reference_run), "--split", "nosuch"]) == 2
    assert "--split nosuch" in capsys.readouterr().err


def test_list_of_a_folder_without_a_run_is_one_line(tmp_path, capsys):
    assert main(["shards", "list", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "index.json" in err

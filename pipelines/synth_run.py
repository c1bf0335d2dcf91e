"""A synthesis run on Ray: plan, render, or both, into one output directory (local path or URI).

As in the URGENT challenge simulation, parameters are drawn first and written down, and the expensive
rendering runs in parallel from that table:

* :func:`plan_synth` (driver only, no Ray) writes ``DIR/plan.parquet`` (see :mod:`datasets.synth_plan`) and
  returns its summary, so the recipe can be reviewed before paying for the render;
* :func:`render_synth` renders an existing plan: the manifests, config and seed come from the plan itself;
  Ray Data runs one task per shard (:func:`pipelines.synth_shard.render_shard`), then ``DIR/index.json`` is
  written (:mod:`pipelines.synth_index`);
* :func:`run_synth` does both (``hires synth``).

Reproducibility: the bytes of a shard depend on (plan row, seed, code) only, never on timing, worker count or
host. Resume: the run identity (output config sha256, seed, manifest sha256s, code version) is stored in the
plan. Rerunning with the same identity keeps every complete, intact shard and renders the rest; a different
identity is refused unless ``force``, naming what changed (``shards.samples_per_shard: 8 -> 512``, ``seed: 1 -> 2``,
``manifests.noise``).

Validation first: :func:`check_inputs` finds every mistake the inputs can hold (a folder or a missing file for a
manifest, a manifest of the wrong kind or without rows, no utterance long enough for one sample, ``--out`` naming
a file) before Ray starts or anything is written, each as one line naming the flag; a run that fails leaves no
output folder it created behind (:func:`_no_leftovers`). :func:`check_synth_config` validates a synth config file
on its own (the demo calls it before generating its data).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import ValidationError

from datasets import storage
from datasets.audio import is_uri
from datasets.config import canonical_json
from datasets.errors import DataError, IncompatibleError, UsageError
from datasets.shards import FORMAT_VERSION, INDEX_FILE, SHARDS_DIR, index_bytes, index_path, shard_name
from datasets.synth_config import SynthConfig, load_synth_config, output_config, output_sha256
from datasets.synth_plan import (
    PLAN_FILE,
    Plan,
    PlanStats,
    make_plan,
    plan_bytes,
    plan_summary,
    read_plan_metadata,
    segment_utterance,
)
from datasets.synth_render import synth_code_version
from pipelines.synth_index import SynthSummary, build_index
from pipelines.synth_shard import RenderContext, render_shard

log = logging.getLogger(__name__)

RUN_PARTS = (INDEX_FILE, PLAN_FILE, SHARDS_DIR, "state", "tmp")
# the manifest kind each input flag takes
INPUT_KINDS = {"clean": "speech", "noise": "noise", "rir": "rir"}


@dataclass
class PlanResult:
    out: str
    plan_path: str
    summary: dict


def _normalize_out(out: str | Path) -> str:
    out = str(out)
    return out.rstrip("/") if is_uri(out) else str(Path(out).resolve())


def _normalize_input(path: str | Path) -> str:
    """Manifest paths as stored in the recipe: absolute, so ``render`` works from any directory."""
    path = str(path)
    return path if is_uri(path) else str(Path(path).resolve())


def run_identity(cfg: SynthConfig, seed: int, manifests: dict[str, str]) -> dict:
    """What a rerun must match to keep existing shards: format, output config, seed, inputs' content, code."""
    return {
        "format_version": FORMAT_VERSION,
        "config_sha256": output_sha256(cfg),
        "seed": seed,
        "code_version": synth_code_version(),
        "manifests": {k: storage.sha256_of(v)[0] for k, v in sorted(manifests.items())},
    }


def _short(value) -> str:
    text = value if isinstance(value, str) else canonical_json(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _flatten(data, prefix: str = "") -> dict[str, object]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are values)."""
    if not isinstance(data, dict):
        return {prefix: data}
    flat: dict[str, object] = {}
    for key, value in data.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_changes(previous: dict, current: dict) -> list[str]:
    """``["shards.samples_per_shard: 8 -> 512", ...]``: the fields of two configs (JSON data) that differ."""
    old, new = _flatten(previous), _flatten(current)
    missing = object()
    return [
        f"{key}: {_short(old.get(key, '(unset)'))} -> {_short(new.get(key, '(unset)'))}"
        for key in sorted(old.keys() | new.keys())
        if old.get(key, missing) != new.get(key, missing)
    ]


def _differences(
    previous: dict, identity: dict, previous_config: dict | None = None, config: dict | None = None
) -> str:
    """What differs between a stored run identity and a new one, field by field (the config's changed fields when
    both configs are known, else its sha256; each manifest whose content changed)."""
    diffs = []
    for key in identity:
        was, now = previous.get(key), identity[key]
        if was == now:
            continue
        changes = []
        if key == "config_sha256" and previous_config is not None and config is not None:
            changes = config_changes(previous_config, config)
        if changes:
            diffs.append("config (" + ", ".join(changes) + ")")
        elif key == "manifests" and isinstance(was, dict):
            diffs += [
                f"manifests.{name} (content changed: sha256 was {_short(was.get(name))}, now {_short(sha)})"
                for name, sha in now.items()
                if was.get(name) != sha
            ]
        else:
            diffs.append(f"{key} (was {_short(was)}, now {_short(now)})")
    return ", ".join(diffs)


def _stored_config(out: str, recipe: dict | None) -> dict | None:
    """The output config a previous run recorded: the plan's recipe, else ``index.json``; None if neither."""
    if recipe is not None and isinstance(recipe.get("config"), dict):
        config = dict(recipe["config"])
        config.pop("ray", None)
        return config
    if storage.exists(index_path(out)):
        return json.loads(storage.read_bytes(index_path(out))).get("config")
    return None


def check_existing(out: str, identity: dict, force: bool, config: dict | None = None) -> None:
    """Refuse (unless ``force``) to write into a directory made with another config, seed, input or code, naming
    what changed (``config``: the new run's :func:`datasets.synth_config.output_config`, to name the fields);
    with ``force``, remove the previous run first."""
    previous, recipe = read_plan_metadata(storage.join(out, PLAN_FILE))
    if previous is None and storage.exists(index_path(out)):
        index = json.loads(storage.read_bytes(index_path(out)))
        previous = {k: index.get(k) for k in identity}
    if previous is None:
        if storage.listdir(storage.join(out, SHARDS_DIR)) and not force:
            raise FileExistsError(f"{out}: has shards/ but no plan.parquet; use --force to replace it")
    else:
        detail = _differences(previous, identity, _stored_config(out, recipe), config)
        if detail and not force:
            raise FileExistsError(
                f"{out}: already holds a synthesis run with a different {detail}; use another --out or --force "
                "to replace it"
            )
    if force:
        for part in RUN_PARTS:
            storage.remove(storage.join(out, part))


def _lease(out: str, stale_after_s: float | None = None):
    """The run's lease on ``out``: one synthesis job writes a directory at a time; a second one fails at once
    naming the owner, and a lease without a heartbeat for ``stale_after_s`` is taken over (:mod:`datasets.lease`)."""
    from datasets.lease import DEFAULT_STALE_AFTER_S, hold_lease

    return hold_lease(out, stale_after_s=stale_after_s or DEFAULT_STALE_AFTER_S, what="synth")


def check_synth_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, what: str | None = None
) -> SynthConfig:
    """Load a synth config (default: the shipped one) with dotted overrides and check that this host can render
    every operator its chain may draw; raises a one-line error naming the file, field or codec (``what``, e.g.
    ``"demo config synth.config"``, prefixes it). For callers that must fail before doing other work first
    (``hires demo`` validates its synth config before generating the corpus and banks)."""
    from datasets.config import ConfigError
    from degradations import check_backends

    try:
        cfg = load_synth_config(path, overrides)
        check_backends(cfg.chain)
    except ConfigError as e:
        if what:
            raise ConfigError(f"{what}: {e}") from None
        raise
    return cfg


def check_out(out: str | Path, flag: str = "--out", directory: bool = True) -> None:
    """``out`` names a directory (``directory``; else a file) that this process can create or write into (local
    paths; URIs are checked when written). A UsageError naming ``flag`` otherwise."""
    if is_uri(str(out)):
        return
    path = Path(out)
    if directory and path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {out}: is a file, expected a directory (new or from an earlier run)")
    if not directory and path.is_dir():
        raise UsageError(f"{flag} {out}: is a directory, expected a file path")
    parent = path if directory else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"{flag} {out}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {out}: {parent} is not writable")


def check_inputs(clean: str, noise: str, rir: str, out: str, cfg: SynthConfig) -> None:
    """Every mistake the inputs can hold, found before Ray starts or anything is written; each is one line naming
    the flag: a manifest that is missing, a folder, unreadable, of the wrong kind (``--noise`` given an RIR
    manifest) or without rows; a clean corpus with no utterance long enough for one sample; ``--out`` naming a
    file or an unwritable place."""
    from datasets.manifest import read_manifest

    frames = None
    for flag, path in (("clean", clean), ("noise", noise), ("rir", rir)):
        df = read_manifest(path, kind=INPUT_KINDS[flag], what=f"--{flag}")
        if len(df) == 0:
            raise DataError(f"--{flag} {path}: the manifest has no rows")
        if flag == "clean":
            frames = zip(df["frames"].tolist(), df["sample_rate"].tolist(), strict=True)
            if not any(segment_utterance(int(n), int(sr), cfg)[0] for n, sr in frames):
                seg = cfg.segment
                raise DataError(
                    f"--clean {path}: no utterance is long enough for one {seg.seconds} s sample "
                    f"(min_tail_seconds {seg.min_tail_seconds}, tail {seg.tail})"
                )
    check_out(out)


@contextlib.contextmanager
def _no_leftovers(out: str) -> Iterator[None]:
    """A local output folder this run creates is removed again if the run fails before writing any file into it
    (a refused or failed run leaves no empty folder behind; a run that wrote shards keeps them to resume)."""
    created = not is_uri(out) and not os.path.lexists(out)
    try:
        yield
    except BaseException:
        if created and os.path.isdir(out):
            for folder, _dirs, files in os.walk(out, topdown=False):
                if files:
                    break
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
        raise


def _recipe(
    clean: str, noise: str, rir: str, out: str, cfg: SynthConfig, seed: int
) -> tuple[str, dict[str, str], dict]:
    """``(out, manifests, identity)`` of a run to plan, normalised; fails first (:func:`check_inputs`) if an input
    is wrong or this host cannot render what the chain may draw."""
    from degradations import check_backends

    check_backends(cfg.chain)
    out = _normalize_out(out)
    manifests = {
        "clean": _normalize_input(clean),
        "noise": _normalize_input(noise),
        "rir": _normalize_input(rir),
    }
    check_inputs(**manifests, out=out, cfg=cfg)
    return out, manifests, run_identity(cfg, seed, manifests)


@contextlib.contextmanager
def _rendering(
    out: str, address: str | None, num_cpus: int | None, progress: bool, lease_stale_after_s: float | None
) -> Iterator[tuple[float, Any]]:
    """The run's lease on ``out`` held and Ray joined (or started); yields the CPUs to use and the lease. The lease
    comes first, so a directory another run is writing is refused before Ray starts; a bad address then fails with
    the lease released (and the folder it made removed by :func:`_no_leftovers`). Ray is shut down afterwards if it
    was started here."""
    import ray

    from pipelines.ray_setup import init_ray

    with _lease(out, lease_stale_after_s) as lease:
        started, cpus = init_ray(address, num_cpus, quiet=not progress)
        try:
            yield cpus, lease
        finally:
            if started:
                ray.shutdown()


def _plan(
    clean: str, noise: str, rir: str, out: str, cfg: SynthConfig, seed: int, identity: dict
) -> tuple[Plan, bytes]:
    """Plan the corpus and write ``plan.parquet`` (unless an identical one is there)."""
    from datasets.manifest import read_manifest
    from degradations import Banks

    storage.makedirs(out)
    clean_df = read_manifest(clean, kind="speech")
    catalog = Banks.from_manifests(noise, rir, sr=cfg.segment.sample_rate).catalog()
    plan = make_plan(clean_df, cfg, seed, catalog)
    if plan.table.num_rows == 0:
        raise DataError(
            f"{clean}: no utterance is long enough for one {cfg.segment.seconds} s sample "
            f"(min_tail_seconds {cfg.segment.min_tail_seconds}, tail {cfg.segment.tail})"
        )
    recipe = {
        "manifests": {"clean": clean, "noise": noise, "rir": rir},
        "config": cfg.model_dump(mode="json"),
        "seed": seed,
        "samples_per_shard": plan.cfg.shards.samples_per_shard,
        "stats": plan.stats.as_dict(),
    }
    plan_path = storage.join(out, PLAN_FILE)
    data = plan_bytes(plan.table, identity, recipe)
    if not storage.exists(plan_path) or storage.read_bytes(plan_path) != data:
        storage.write_bytes(plan_path, data)
    return plan, data


def plan_synth(
    clean: str,
    noise: str,
    rir: str,
    out: str,
    cfg: SynthConfig,
    seed: int = 0,
    force: bool = False,
    lease_stale_after_s: float | None = None,
) -> PlanResult:
    """Write only ``out/plan.parquet`` and return its summary (``hires synth plan``)."""
    out, manifests, identity = _recipe(clean, noise, rir, out, cfg, seed)
    with _no_leftovers(out), _lease(out, lease_stale_after_s):
        check_existing(out, identity, force, output_config(cfg))
        plan, _ = _plan(**manifests, out=out, cfg=cfg, seed=seed, identity=identity)
    summary = plan_summary(plan.table, cfg.segment.seconds)
    summary["samples_per_shard"] = plan.cfg.shards.samples_per_shard
    summary["bank_files_below_rate"] = plan.stats.bank_files_below_rate
    return PlanResult(out, storage.join(out, PLAN_FILE), summary)


def run_synth(
    clean: str,
    noise: str,
    rir: str,
    out: str,
    cfg: SynthConfig,
    seed: int = 0,
    address: str | None = None,
    num_cpus: int | None = None,
    force: bool = False,
    progress: bool = True,
    on_shard: Callable[[dict], None] | None = None,
    lease_stale_after_s: float | None = None,
) -> SynthSummary:
    """Plan and render a synthesis run into ``out`` (local path or URI); see the module docstring."""
    out, manifests, identity = _recipe(clean, noise, rir, out, cfg, seed)
    if not force:
        check_existing(out, identity, force, output_config(cfg))  # a mismatch fails before Ray starts
    with (
        _no_leftovers(out),
        _rendering(out, address, num_cpus, progress, lease_stale_after_s) as (cpus, lease),
    ):
        check_existing(
            out, identity, force, output_config(cfg)
        )  # again: the directory is ours only from here
        plan, data = _plan(**manifests, out=out, cfg=cfg, seed=seed, identity=identity)
        return _render(
            out,
            plan.table,
            data,
            plan.cfg,
            seed,
            identity,
            plan.stats,
            manifests,
            cpus,
            progress,
            on_shard,
            lease,
        )


def render_synth(
    out: str,
    address: str | None = None,
    num_cpus: int | None = None,
    progress: bool = True,
    on_shard: Callable[[dict], None] | None = None,
    lease_stale_after_s: float | None = None,
) -> SynthSummary:
    """Render the plan in ``out`` (``hires synth render``): manifests, config and seed come from the plan.

    Refused when the manifests' content or the code changed since planning (the plan would no longer be what
    they give): plan again, then render.
    """
    from degradations import check_backends

    out = _normalize_out(out)
    plan_path = storage.join(out, PLAN_FILE)
    stored, recipe = read_plan_metadata(plan_path)
    if stored is None:
        raise UsageError(f"{plan_path}: no plan; write one with `hires synth plan ... --out {out}`")
    if recipe is None:
        raise DataError(
            f"{plan_path}: the plan does not record its recipe (made by an older hires): plan again"
        )
    try:
        cfg = SynthConfig.model_validate(recipe["config"])
    except ValidationError as e:
        raise DataError(f"{plan_path}: the recipe's config is invalid: {e}") from None
    check_backends(cfg.chain)
    manifests = dict(recipe["manifests"])
    identity = run_identity(cfg, int(recipe["seed"]), manifests)
    detail = _differences(stored, identity)
    if detail:
        raise IncompatibleError(
            f"{plan_path}: planned with a different {detail}; plan again (hires synth plan ... --force)"
        )
    resolved = cfg.model_copy(deep=True)
    resolved.shards.samples_per_shard = int(recipe["samples_per_shard"])
    with _rendering(out, address, num_cpus, progress, lease_stale_after_s) as (cpus, lease):
        data = storage.read_bytes(plan_path)
        if read_plan_metadata(plan_path, data)[0] != stored:
            raise IncompatibleError(f"{plan_path}: replaced by another plan while this render started")
        table = pq.read_table(pa.BufferReader(data), columns=["shard", "split", "key"], use_threads=False)
        stats = PlanStats(**recipe["stats"])
        seed = int(recipe["seed"])
        return _render(
            out, table, data, resolved, seed, identity, stats, manifests, cpus, progress, on_shard, lease
        )


def _render(
    out: str,
    table: pa.Table,
    plan_data: bytes,
    cfg: SynthConfig,
    seed: int,
    identity: dict,
    stats: PlanStats,
    manifests: dict[str, str],
    cpus: float,
    progress: bool,
    on_shard: Callable[[dict], None] | None,
    lease: Any = None,
) -> SynthSummary:
    """Render every shard of a written plan, then write ``index.json`` (only while the lease is still ours: a run
    that stalled past the stale time and was taken over must not publish over the new owner's index)."""
    if not is_uri(out):
        storage.remove(storage.join(out, "tmp"))  # scratch files of killed tasks
    counts = table.group_by(["shard", "split"]).aggregate([("key", "count")]).sort_by("shard").to_pylist()
    specs = [
        {"shard": c["shard"], "name": shard_name(c["shard"]), "split": c["split"], "planned": c["key_count"]}
        for c in counts
    ]
    ctx = RenderContext(
        out=out,
        noise_manifest=manifests["noise"],
        rir_manifest=manifests["rir"],
        cfg=cfg,
        seed=seed,
        code_version=identity["code_version"],
    )
    entries, wall = _render_all(specs, ctx, cpus, progress, on_shard)
    if not is_uri(out) and not storage.listdir(storage.join(out, "tmp")):
        storage.remove(storage.join(out, "tmp"))
    index = build_index(cfg, identity, stats, plan_data, entries)
    if lease is not None:
        lease.beat()  # renews it now, or finds that another run took it over
        lease.check()
    storage.write_bytes(index_path(out), index_bytes(index))
    return SynthSummary.from_run(out, index, entries, wall, cpus)


def _render_all(specs, ctx: RenderContext, cpus: float, progress: bool, on_shard) -> tuple[list[dict], float]:
    """One Ray Data task per shard; a progress bar over samples; entries sorted by shard name."""
    import ray
    from tqdm import tqdm

    data_ctx = ray.data.DataContext.get_current()
    data_ctx.enable_progress_bars = False
    data_ctx.print_on_execution_start = False
    ds = ray.data.from_items(specs, override_num_blocks=len(specs))
    per_task = ctx.cfg.ray.cpus_per_task
    ds = ds.map(
        functools.partial(render_shard, ctx=ctx),
        compute=ray.data.TaskPoolStrategy(size=max(1, min(len(specs), int(cpus // per_task)))),
        num_cpus=per_task,
    )
    total = sum(s["planned"] for s in specs)
    entries: list[dict] = []
    start = time.perf_counter()
    rendered_s, kept = 0.0, 0
    with tqdm(total=total, unit="sample", disable=not progress, dynamic_ncols=True, desc="synth") as bar:
        for row in ds.iter_rows():
            entry = dict(row)
            entry["rejects"] = json.loads(entry["rejects"])
            entries.append(entry)
            if entry["kept"]:
                kept += 1
            else:
                rendered_s += entry["seconds"]
            elapsed = time.perf_counter() - start
            bar.update(entry["samples"] + len(entry["rejects"]))
            bar.set_postfix_str(
                f"{rendered_s / 3600:.2f} h rendered, {rendered_s / max(elapsed, 1e-9):.0f}x RT, {kept} kept"
            )
            if on_shard is not None:
                on_shard(entry)
    wall = time.perf_counter() - start
    names = {e["name"] for e in entries}
    missing = [s["name"] for s in specs if s["name"] not in names]
    if missing or len(entries) != len(specs):
        raise RuntimeError(
            f"render finished without shard(s) {', '.join(missing[:5])} "
            f"({len(entries)} results for {len(specs)} shards)"
        )
    return sorted(entries, key=lambda e: e["name"]), wall

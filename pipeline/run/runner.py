"""One runner for every stage: versions, deterministic shards, Ray Data workers, exactly-once commits.

How a stage runs:
1. Its version is the hash of everything that decides its rows (`stage_identity`). A complete
   version is never recomputed (its parts are checked cheaply first); a new identity is a new
   folder and the old one stays.
2. The driver takes the version's lease (`Version.lease`): one writer per version.
3. Its items (sorted by id) are cut into fixed shards of `rows_per_shard`; the plan is recorded
   in `_manifest.json` and `_plan.parquet` on the first attempt and reused by every resume.
4. Ray Data streams the pending shards through the stage's steps (`pipeline.run.workers`):
   workers read the upstream columns they need, run the steps in batches, and the last step's
   worker stages the shard's rows and failures (`Version.stage_shard`); the driver commits each
   shard with a small record (`Version.commit_shard`). A shard staged but not committed (driver
   killed in between) is simply recomputed, so every item ends up exactly once in rows or failures.

The version hashes the stage config without its run settings (`RunSettings`: workers, GPUs,
batch and shard sizes, device, dtype), which are recorded in the provenance instead.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

from pipeline import config as config_lib
from pipeline.run.stage import Stage, run_settings
from pipeline.run.workers import (
    PART,
    ROW,
    UPSTREAM_FAILURE,
    ShardJob,
    build_dataset,
    isolate,
    streams,
)
from pipeline.store.lease import Lease
from pipeline.store.schema import SCHEMA_VERSION
from pipeline.store.storage import StorageError, Store
from pipeline.store.version import (
    DamagedOutputError,
    InputNotReadyError,
    Version,
    latest_pointer,
    now,
    provenance_metadata,
    version_of,
)

log = logging.getLogger(__name__)


@dataclass
class RunnerConfig:
    rows_per_shard: int = field(default=32, metadata=config_lib.bounds(min=1))
    # Parallel workers per stage; None lets Ray use every CPU (or GPU) the cluster offers.
    max_workers: int | None = field(default=None, metadata=config_lib.bounds(min=1))
    # Task workers (decoders) are replaced after about this many items: decord and PyAV leak.
    recycle_after_items: int = field(default=512, metadata=config_lib.bounds(min=1))
    # Ray cluster to join; None means RAY_ADDRESS if set, else a local Ray instance.
    address: str | None = None
    progress: bool = True
    # A driver's lease on the version it writes expires this long after its last heartbeat.
    lease_seconds: float = field(default=60.0, metadata=config_lib.bounds(min=1))
    # How long a second driver on the same version waits for the lease before it stops.
    lease_wait_seconds: float = field(default=0.0, metadata=config_lib.bounds(min=0))


class OutputWriteError(RuntimeError):
    """A write to the output failed mid-run; the message names the path and what is committed."""


@dataclass
class StageResult:
    stage: str
    version: str
    items: int
    rows: int
    failures: int
    computed_items: int  # items processed by this call (0 when up to date)
    seconds: float
    up_to_date: bool

    @property
    def items_per_second(self) -> float:
        return self.computed_items / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        if self.up_to_date:
            return (
                f"{self.stage} {self.version}: up to date ({self.items} items, {self.rows} rows, "
                f"{self.failures} failures); nothing recomputed"
            )
        return (
            f"{self.stage} {self.version}: {self.items} items -> {self.rows} rows, "
            f"{self.failures} failures; computed {self.computed_items} items in "
            f"{self.seconds:.1f} s ({self.items_per_second:.2f} items/s)"
        )


def ensure_ray(address: str | None = None) -> None:
    import ray
    from ray.data import DataContext

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    context = DataContext.get_current()
    context.enable_progress_bars = False  # ours counts items, not blocks (shards)
    context.print_on_execution_start = False
    # Shards whose worker keeps dying are dropped by Ray Data instead of ending the run; the
    # runner isolates them. Python exceptions never get there: `workers.run_step` catches them.
    context.max_errored_blocks = -1
    # Per-dataset chatter ("execution finished", "progress bars disabled") drowns our summary.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    logging.getLogger("ray.data._internal.execution.streaming_executor").setLevel(logging.WARNING)


def stage_identity(stage: Stage, config: Any, inputs: dict[str, Version]) -> dict[str, Any]:
    missing = [name for name in stage.inputs if name not in inputs]
    if missing:
        raise ValueError(f"stage {stage.name} needs the output of {', '.join(missing)}")
    return {
        "stage": stage.name,
        "schema_version": SCHEMA_VERSION,
        "config": _decisive_config(config),
        "inputs": {name: inputs[name].version for name in stage.inputs},
        **stage.identity(config),
    }


def _decisive_config(config: Any) -> dict[str, Any]:
    """The config that decides the rows: all of it but the run settings (`RunSettings`)."""
    data = config_lib.to_dict(config)
    if isinstance(data, dict):
        data.pop("run", None)
    return data


def stage_version(stage: Stage, config: Any, inputs: dict[str, Version]) -> str:
    return version_of(stage_identity(stage, config, inputs))


def run_stage(
    store: Store, stage: Stage, config: Any, inputs: dict[str, Version], runner: RunnerConfig
) -> StageResult:
    identity = stage_identity(stage, config, inputs)
    version = version_of(identity)
    output = Version(store, stage.name, version)
    manifest = output.manifest()
    if manifest is not None and manifest.get("complete"):
        return _up_to_date(output, manifest)
    upstream = {name: inputs[name] for name in stage.inputs}
    for name in stage.inputs:
        _check_input(stage, upstream[name])

    with output.lease(runner.lease_seconds, runner.lease_wait_seconds) as lease:
        manifest = output.manifest()  # another driver may have finished it
        if manifest is not None and manifest.get("complete"):
            return _up_to_date(output, manifest)
        settings = run_settings(config)
        items = stage.items(config, upstream)
        _check_unique(items, stage)
        items, parts = attach_upstream(stage, items, upstream)
        items = items.sort_by(stage.key)
        if manifest is None:
            manifest = _plan(stage, version, identity, items.num_rows, settings.rows_per_shard or runner.rows_per_shard)
            output.write_plan(items.column(stage.key).combine_chunks(), manifest["rows_per_shard"], manifest)
            output.write_manifest(manifest)
        elif manifest["num_items"] != items.num_rows:
            raise DamagedOutputError(
                f"{store.path(output.manifest_path)}: the recorded plan has {manifest['num_items']} items but "
                f"the inputs now give {items.num_rows} (the record was edited, or the upstream output changed "
                f"under the same version); {output.repair_hint()}")
        elif not output.has_plan():  # removed by `tvr verify --repair` as damaged: the same items, planned again
            output.write_plan(items.column(stage.key).combine_chunks(), manifest["rows_per_shard"], manifest)
        output.recover()
        committed = output.commits()
        size = manifest["rows_per_shard"]  # the plan's, whatever the run settings say now
        pending = [s for s in range(manifest["num_shards"]) if s not in committed]
        if committed:
            log.warning("%s %s: resuming, %d of %d shards already committed", stage.name, version,
                        len(committed), manifest["num_shards"])
        provenance = {**stage.provenance(config), "run": json.dumps(config_lib.to_dict(settings), sort_keys=True)}
        context = stage.context(config, upstream) if stage.context is not None else None
        job = ShardJob(stage, config, settings, stage.output_schema(config), output,
                       provenance_metadata({**identity, "version": version}, provenance), upstream, parts, context)
        shards = [(s, _to_ipc(items.slice(s * size, size))) for s in pending]
        ensure_ray(runner.address)  # before the clock starts: Ray's start-up is per run, not per item
        started = time.perf_counter()
        computed = _compute_and_commit(job, shards, runner, lease, manifest, committed)
        seconds = time.perf_counter() - started

        lease.ensure_held()
        output.clear_staging()  # empty attempt folders of committed shards
        manifest["complete"] = True
        manifest["finished"] = now()
        manifest["rows"] = sum(r["rows"] for r in committed.values())
        manifest["failures"] = sum(r["failures"] for r in committed.values())
        output.write_manifest(manifest)
    output.mark_latest()
    return _result(manifest, computed_items=computed, seconds=seconds, up_to_date=False)


def _compute_and_commit(job: ShardJob, shards: list[tuple[int, bytes]], runner: RunnerConfig, lease: Lease,
                        manifest: dict, committed: dict[int, dict]) -> int:
    """Run the pending shards on Ray and commit each as it finishes; returns the items computed."""
    output = job.output
    computed = 0
    total = manifest["num_items"] - sum(r["items"] for r in committed.values())
    with tqdm(total=total, unit="item", desc=output.stage, disable=not runner.progress) as bar:
        summaries = _execute(job, shards, runner, manifest["rows_per_shard"])
        for summary in summaries:
            error = summary["write_error"]
            if not error:
                lease.ensure_held()
                try:
                    record = output.commit_shard(summary["shard"], json.loads(summary["files"]), summary["seconds"])
                except StorageError as exc:
                    error = str(exc)
            if error:
                summaries.close()  # stop Ray Data first, so no worker stages more parts after the cleanup
                raise _stopped(output, manifest, committed, error)
            committed[summary["shard"]] = record
            computed += record["items"]
            bar.update(record["items"])
            bar.set_postfix(failures=sum(r["failures"] for r in committed.values()))
    return computed


def _up_to_date(output: Version, manifest: dict) -> StageResult:
    output.check_committed(manifest)  # a deleted or truncated part is not "up to date"
    if latest_pointer(output.store, output.stage) is None:
        output.mark_latest()
    return _result(manifest, computed_items=0, seconds=0.0, up_to_date=True)


def _check_input(stage: Stage, upstream: Version) -> None:
    manifest = upstream.manifest()
    if manifest is None or not manifest.get("complete"):
        state = "has no folder" if manifest is None else "is not complete"
        raise InputNotReadyError(
            f"stage {stage.name} reads {upstream.stage} {upstream.version} (the version this config gives), "
            f"which {state} in {upstream.store.root}; run {upstream.stage} first or add it to --stages")
    upstream.check_committed(manifest)


def _stopped(output: Version, manifest: dict, committed: dict, error: str) -> OutputWriteError:
    try:  # staged parts of uncommitted shards only take space now; a rerun recomputes them anyway
        output.clear_staging()
    except StorageError:
        pass
    return OutputWriteError(
        f"{error}; stopped {output.stage} {output.version} with {len(committed)} of {manifest['num_shards']} "
        f"shards committed (committed shards are kept: fix the storage and rerun to finish)")


def _plan(stage: Stage, version: str, identity: dict, num_items: int, rows_per_shard: int) -> dict:
    if rows_per_shard < 1:
        raise ValueError(f"runner.rows_per_shard must be at least 1, got {rows_per_shard}")
    return {
        "stage": stage.name,
        "version": version,
        "identity": identity,
        "key": stage.key,
        "created": now(),
        "num_items": num_items,
        "rows_per_shard": rows_per_shard,
        # An empty input still gets one (empty) shard, so readers always find the schema.
        "num_shards": max(1, math.ceil(num_items / rows_per_shard)),
        "complete": False,
    }


def _result(manifest: dict, computed_items: int, seconds: float, up_to_date: bool) -> StageResult:
    return StageResult(
        stage=manifest["stage"],
        version=manifest["version"],
        items=manifest["num_items"],
        rows=manifest.get("rows", 0),
        failures=manifest.get("failures", 0),
        computed_items=computed_items,
        seconds=seconds,
        up_to_date=up_to_date,
    )


def _check_unique(items: pa.Table, stage: Stage) -> None:
    keys = items.column(stage.key)
    if keys.null_count:
        raise ValueError(f"{stage.name}: {keys.null_count} items have no {stage.key}")
    if len(keys.unique()) != len(keys):
        counts = pa.compute.value_counts(keys).to_pylist()
        repeated = [c["values"] for c in counts if c["counts"] > 1][:5]
        raise ValueError(f"{stage.name}: item ids repeat ({stage.key} {repeated}); ids must be unique")


# ---- upstream rows and failures ------------------------------------------------------------------


def attach_upstream(stage: Stage, items: pa.Table, readers: dict[str, Version]) -> tuple[pa.Table, dict]:
    """Add to the item table, for each input the stage reads, where each item's upstream row lies
    (part and row), and why an item has none (`upstream_failed`, with the upstream reason). Items
    meet upstream rows on the upstream stage's key (a tag request `v1@t0.7` has a `video_id`
    column for keyframes' `video_id`). Only that key column of each upstream part is read here;
    the workers read the rest."""
    parts: dict[str, list[str]] = {}
    reasons: dict[str, dict[str, str]] = {}
    keys: dict[str, str] = {}
    for name in stage.reads:
        keys[name] = readers[name].key()
        if keys[name] not in items.column_names:
            raise ValueError(f"stage {stage.name} reads {name}, whose rows are keyed by {keys[name]}, "
                             f"but its items have no {keys[name]} column")
        located, parts[name] = readers[name].locations(keys[name])
        items = items.join(located.rename_columns([keys[name], PART + name, ROW + name]), keys[name],
                           join_type="left outer")
        failed = readers[name].failures(columns=["item_id", "reason", "message"]).to_pylist()
        reasons[name] = {row["item_id"]: f"{row['reason']}: {row['message']}" for row in failed}
    if not stage.reads:
        return items, parts
    upstream_ids = {name: items.column(keys[name]).to_pylist() for name in stage.reads}
    found = {name: items.column(PART + name).is_valid().to_pylist() for name in stage.reads}
    why = [next((f"{name}: {reasons[name].get(upstream_ids[name][i], 'no row and no failure for this item')}"
                 for name in stage.reads if not found[name][i]), None) for i in range(items.num_rows)]
    return items.append_column(UPSTREAM_FAILURE, pa.array(why, pa.string())), parts


# ---- running the shards on Ray ---------------------------------------------------------------------


def _execute(job: ShardJob, shards: list[tuple[int, bytes]], runner: RunnerConfig, rows_per_shard: int):
    """Yield one summary per completed shard, in completion order; a shard whose workers kept
    dying is then re-run one item at a time."""
    if not shards:
        return
    import ray
    from ray.data import DataContext

    gpus = ray.cluster_resources().get("GPU", 0)
    if job.settings.num_gpus > gpus:  # Ray Data would wait for them forever
        raise config_lib.ConfigError(
            f"config value {job.stage.name}.run.num_gpus={job.settings.num_gpus:g} asks for more GPUs per worker "
            f"than the Ray cluster has ({gpus:g}); set it to 0 to run on CPUs")
    # Before the dataset is built: a Dataset keeps the context it was created under.
    DataContext.get_current().set_config("backpressure_policies.enabled",
                                         _backpressure_policies(job, runner, streams(job)))
    finished = set()
    dataset = build_dataset(job, shards, runner.max_workers, runner.recycle_after_items, rows_per_shard)
    with warnings.catch_warnings():
        # Fewer shards than workers (a small run) is fine; Ray Data warns about it.
        warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks")
        for summary in dataset.iter_rows():
            finished.add(summary["shard"])
            yield summary
    for shard, payload in shards:
        if shard not in finished:
            yield isolate(job, shard, payload)


def _backpressure_policies(job: ShardJob, runner: RunnerConfig, streamed: bool) -> list:
    """Ray Data's backpressure policies for a stage run: only the worker cap, when it binds.

    Workers write their rows to Parquet themselves and return a few numbers, so there is no
    output queue to hold back, and the policies only start tasks late (measured on 2 cores: 1.55
    of 2 workers busy with Ray Data's defaults, 1.77 with the concurrency cap alone, 1.96 with
    none). The cap is what enforces the worker count for tasks, so it stays when it binds; a
    stage whose steps stream between pools keeps Ray Data's defaults, which bound the shards
    held between steps.
    """
    import ray
    from ray.data._internal.execution import backpressure_policy

    workers = job.settings.workers or runner.max_workers
    if streamed:
        return list(backpressure_policy.ENABLED_BACKPRESSURE_POLICIES)
    if workers is None or any(step.stateful for step in job.stage.steps):  # actor pools are sized by their strategy
        return []
    unit, need = ("GPU", job.settings.num_gpus) if job.settings.num_gpus else ("CPU", job.settings.num_cpus)
    if workers * need >= ray.cluster_resources().get(unit, 0):
        return []  # the cluster cannot run more workers than the cap anyway
    return [backpressure_policy.ConcurrencyCapBackpressurePolicy]


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()

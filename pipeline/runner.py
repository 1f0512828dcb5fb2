"""One runner for every stage: versions, deterministic shards, Ray Data workers, exactly-once commits.

How a stage runs:
1. Its version is the hash of everything that decides its rows (`stage_identity`). A complete
   version is never recomputed (its parts are checked cheaply first); a new identity is a new
   folder and the old one stays.
2. The driver takes the version's lease (`pipeline.lease`): one writer per version.
3. Its items (sorted by id) are cut into fixed shards of `rows_per_shard`; the plan is recorded
   in `_manifest.json` and `_plan.parquet` on the first attempt and reused by every resume.
4. Ray Data runs one task (or actor call) per pending shard. The worker processes the shard's
   items in batches and stages rows and failures (`pipeline.commit`); the driver commits each
   shard with a small record. A shard staged but not committed (driver killed in between) is
   simply recomputed, so every item ends up exactly once in rows or failures.
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
from pipeline.commit import check_committed, commit_shard, read_commits, recover, stage_shard, write_plan
from pipeline.lease import Lease
from pipeline.outputs import (
    STAGING_DIR,
    InputNotReadyError,
    content_hash,
    mark_latest,
    now,
    provenance_metadata,
    read_manifest,
    write_manifest,
)
from pipeline.schema import FAILURES, SCHEMA_VERSION
from pipeline.stage import BatchFn, Failure, InputReader, Stage, StageOutput
from pipeline.storage import StorageError, Store

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
    # runner isolates them. Python exceptions never get there: process_items catches them.
    context.max_errored_blocks = -1
    # Per-dataset chatter ("execution finished", "progress bars disabled") drowns our summary.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    logging.getLogger("ray.data._internal.execution.streaming_executor").setLevel(logging.WARNING)


def stage_identity(stage: Stage, config: Any, inputs: dict[str, StageOutput]) -> dict[str, Any]:
    missing = [name for name in stage.inputs if name not in inputs]
    if missing:
        raise ValueError(f"stage {stage.name} needs the output of {', '.join(missing)}")
    return {
        "stage": stage.name,
        "schema_version": SCHEMA_VERSION,
        "config": config_lib.to_dict(config),
        "inputs": {name: inputs[name].version for name in stage.inputs},
        **stage.identity(config),
    }


def stage_version(stage: Stage, config: Any, inputs: dict[str, StageOutput]) -> str:
    return content_hash(stage_identity(stage, config, inputs))


def run_stage(
    store: Store, stage: Stage, config: Any, inputs: dict[str, StageOutput], runner: RunnerConfig
) -> StageResult:
    identity = stage_identity(stage, config, inputs)
    version = content_hash(identity)
    output = StageOutput(stage.name, version)
    manifest = read_manifest(store, stage.name, version)
    if manifest is not None and manifest.get("complete"):
        return _up_to_date(store, output, manifest)
    for name in stage.inputs:
        _check_input(store, stage, inputs[name])

    with Lease(store, stage.name, version, runner.lease_seconds, runner.lease_wait_seconds) as lease:
        manifest = read_manifest(store, stage.name, version)  # another driver may have finished it
        if manifest is not None and manifest.get("complete"):
            return _up_to_date(store, output, manifest)
        readers = {name: InputReader(store, inputs[name]) for name in stage.inputs}
        items = stage.items(config, readers).sort_by(stage.key)
        _check_unique(items, stage)
        if manifest is None:
            manifest = _plan(stage, version, identity, items.num_rows, runner.rows_per_shard)
            write_plan(store, stage.name, version, items.column(stage.key).combine_chunks(),
                       manifest["rows_per_shard"], manifest)
            write_manifest(store, manifest)
        elif manifest["num_items"] != items.num_rows:
            raise RuntimeError(
                f"{stage.name} {version}: the recorded plan has {manifest['num_items']} items but the "
                f"inputs now give {items.num_rows}; the upstream output changed under the same version"
            )
        recover(store, stage.name, version)
        committed = read_commits(store, stage.name, version)
        size = manifest["rows_per_shard"]
        pending = [s for s in range(manifest["num_shards"]) if s not in committed]
        if committed:
            log.warning("%s %s: resuming, %d of %d shards already committed", stage.name, version,
                        len(committed), manifest["num_shards"])
        job = _ShardJob(stage, config, store, version,
                        provenance_metadata({**identity, "version": version}, stage.provenance(config)))
        shards = [(s, items.slice(s * size, size)) for s in pending]
        ensure_ray(runner.address)  # before the clock starts: Ray's start-up is per run, not per item
        started = time.perf_counter()
        computed = _compute_and_commit(job, shards, runner, lease, manifest, committed)
        seconds = time.perf_counter() - started

        lease.ensure_held()
        store.delete(stage.name, version, STAGING_DIR)  # empty attempt folders of committed shards
        manifest["complete"] = True
        manifest["finished"] = now()
        manifest["rows"] = sum(r["rows"] for r in committed.values())
        manifest["failures"] = sum(r["failures"] for r in committed.values())
        write_manifest(store, manifest)
    mark_latest(store, stage.name, version)
    return _result(manifest, computed_items=computed, seconds=seconds, up_to_date=False)


def _compute_and_commit(job: "_ShardJob", shards: list[tuple[int, pa.Table]], runner: RunnerConfig, lease: Lease,
                        manifest: dict, committed: dict[int, dict]) -> int:
    """Run the pending shards on Ray and commit each as it finishes; returns the items computed."""
    store, name, version = job.store, job.stage.name, job.version
    computed = 0
    with tqdm(total=sum(t.num_rows for _, t in shards), unit="item", desc=name, disable=not runner.progress) as bar:
        summaries = _execute(job, shards, runner)
        for summary in summaries:
            error = summary["write_error"]
            if not error:
                lease.ensure_held()
                try:
                    record = commit_shard(store, name, version, summary["shard"], json.loads(summary["files"]),
                                          summary["seconds"])
                except StorageError as exc:
                    error = str(exc)
            if error:
                summaries.close()  # stop Ray Data first, so no worker stages more parts after the cleanup
                raise _stopped(store, StageOutput(name, version), manifest, committed, error)
            committed[summary["shard"]] = record
            computed += record["items"]
            bar.update(record["items"])
            bar.set_postfix(failures=sum(r["failures"] for r in committed.values()))
    return computed


def _up_to_date(store: Store, output: StageOutput, manifest: dict) -> StageResult:
    check_committed(store, output, manifest)  # a deleted or truncated part is not "up to date"
    if not store.exists(output.stage, "LATEST"):
        mark_latest(store, output.stage, output.version)
    return _result(manifest, computed_items=0, seconds=0.0, up_to_date=True)


def _check_input(store: Store, stage: Stage, output: StageOutput) -> None:
    manifest = read_manifest(store, output.stage, output.version)
    if manifest is None or not manifest.get("complete"):
        state = "has no folder" if manifest is None else "is not complete"
        raise InputNotReadyError(
            f"stage {stage.name} reads {output.stage} {output.version} (the version this config gives), "
            f"which {state} in {store.root}; run {output.stage} first or add it to --stages")
    check_committed(store, output, manifest)


def _stopped(store: Store, output: StageOutput, manifest: dict, committed: dict, error: str) -> OutputWriteError:
    try:  # staged parts of uncommitted shards only take space now; a rerun recomputes them anyway
        store.delete(output.stage, output.version, STAGING_DIR)
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


# ---- inside the workers ------------------------------------------------------------------------


@dataclass
class _ShardJob:
    stage: Stage
    config: Any
    store: Store
    version: str
    metadata: dict[str, str]

    def run(self, batch: pa.Table, batch_fn: BatchFn) -> dict[str, list]:
        out: dict[str, list] = {key: [] for key in ("shard", "files", "seconds", "write_error")}
        for shard, payload in zip(batch["shard"].to_pylist(), batch["items"].to_pylist()):
            started = time.perf_counter()
            items = _from_ipc(payload).to_pylist()
            rows, failures = process_items(self.stage, batch_fn, items)
            summary = self.write(shard, rows, failures, time.perf_counter() - started)
            for key, value in summary.items():
                out[key].append(value)
        return out

    def write(self, shard: int, rows: list[dict], failures: list[dict], seconds: float) -> dict:
        """Stage the shard's parts; a storage error is reported to the driver, not raised.

        Raising would look like a crashed worker to Ray Data, which retries the shard and then
        isolates it item by item: hours of decoding repeated against a full disk.
        """
        try:
            files = stage_shard(self.store, self.stage.name, self.version, shard,
                                pa.Table.from_pylist(rows, schema=self.stage.schema),
                                pa.Table.from_pylist(failures, schema=FAILURES), self.metadata)
        except StorageError as exc:
            return {"shard": shard, "files": "[]", "seconds": seconds, "write_error": str(exc)}
        return {"shard": shard, "files": json.dumps(files), "seconds": seconds, "write_error": None}


def process_items(stage: Stage, batch_fn: BatchFn, items: list[dict]) -> tuple[list[dict], list[dict]]:
    """Run `batch_fn` over items in batches; an exception costs only the item that raised it."""
    rows, failures = [], []
    for start in range(0, len(items), stage.batch_size):
        chunk = items[start : start + stage.batch_size]
        for item, result in zip(chunk, _call_isolating_errors(stage, batch_fn, chunk)):
            if isinstance(result, Failure):
                failures.append(_failure_row(stage, item, result))
            else:
                rows.append(result)
    return rows, failures


def _failure_row(stage: Stage, item: dict, failure: Failure) -> dict:
    return {"item_id": item[stage.key], "stage": stage.name, "reason": failure.reason,
            "message": failure.message}


def _call_isolating_errors(stage: Stage, batch_fn: BatchFn, chunk: list[dict]) -> list:
    try:
        results = batch_fn(chunk)
    except Exception as exc:  # noqa: BLE001 - retried item by item below to find the culprit
        if len(chunk) == 1:
            return [Failure("error", f"{type(exc).__name__}: {exc}")]
        return [r for item in chunk for r in _call_isolating_errors(stage, batch_fn, [item])]
    if len(results) != len(chunk):
        raise RuntimeError(
            f"stage {stage.name} returned {len(results)} results for {len(chunk)} items; "
            "a batch function must return exactly one row or Failure per item"
        )
    return results


def _run_shard_task(batch: pa.Table, job: _ShardJob) -> dict[str, list]:
    return job.run(batch, job.stage.setup(job.config))


class _ShardActor:
    """A long-lived worker for stateful stages: `setup` (model loading) runs once."""

    def __init__(self, job: _ShardJob):
        self.job = job
        self.batch_fn = job.stage.setup(job.config)

    def __call__(self, batch: pa.Table) -> dict[str, list]:
        return self.job.run(batch, self.batch_fn)


# A worker process that dies (a decoder segfault, the OOM killer) is retried this often before
# its shard is re-run one item per process, so the one bad item becomes a failure row.
CRASH_RETRIES = 2


def _execute(job: _ShardJob, shards: list[tuple[int, pa.Table]], runner: RunnerConfig):
    """Yield one summary per completed shard, in completion order."""
    if not shards:
        return
    finished = set()
    for summary in _execute_shards(job, shards, runner):
        finished.add(summary["shard"])
        yield summary
    for shard, table in shards:
        if shard not in finished:
            log.warning("%s: shard %d lost its worker %d times; re-running it one item per process",
                        job.stage.name, shard, CRASH_RETRIES + 1)
            yield _isolate(job, shard, table)


def _isolate(job: _ShardJob, shard: int, table: pa.Table) -> dict:
    import ray

    started = time.perf_counter()
    items = table.to_pylist()
    remote = ray.remote(max_retries=0, num_cpus=job.stage.resources.num_cpus,
                        num_gpus=job.stage.resources.num_gpus)(_process_one)
    pending = [remote.remote(job, item) for item in items]
    rows, failures = [], []
    for item, ref in zip(items, pending):
        try:
            item_rows, item_failures = ray.get(ref)
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.OutOfMemoryError) as exc:
            item_rows, item_failures = [], [_failure_row(job.stage, item, Failure(
                "worker_crashed", f"the worker process died while processing this item: {exc}"))]
        rows += item_rows
        failures += item_failures
    return job.write(shard, rows, failures, time.perf_counter() - started)


def _process_one(job: _ShardJob, item: dict) -> tuple[list[dict], list[dict]]:
    return process_items(job.stage, job.stage.setup(job.config), [item])


def _backpressure_policies(stage: Stage, runner: RunnerConfig) -> list:
    """Ray Data's backpressure policies for a stage run: only the worker cap, when it binds.

    Workers write their rows to Parquet themselves and return a few numbers, so there is no
    output queue to hold back, and the policies only start tasks late (measured on 2 cores: 1.55
    of 2 workers busy with Ray Data's defaults, 1.77 with the concurrency cap alone, 1.96 with
    none). The cap is what enforces `runner.max_workers` for tasks, so it stays when it binds.
    """
    import ray

    if runner.max_workers is None or stage.stateful:  # actor pools are sized by their strategy
        return []
    unit, need = ("GPU", stage.resources.num_gpus) if stage.resources.num_gpus else ("CPU", stage.resources.num_cpus)
    if runner.max_workers * need >= ray.cluster_resources().get(unit, 0):
        return []  # the cluster cannot run more workers than the cap anyway
    from ray.data._internal.execution.backpressure_policy import ConcurrencyCapBackpressurePolicy

    return [ConcurrencyCapBackpressurePolicy]


def _execute_shards(job: _ShardJob, shards: list[tuple[int, pa.Table]], runner: RunnerConfig):
    import ray
    from ray.data import DataContext

    DataContext.get_current().set_config(
        "backpressure_policies.enabled", _backpressure_policies(job.stage, runner))
    tasks = [{"shard": shard, "items": _to_ipc(table)} for shard, table in shards]
    dataset = ray.data.from_items(tasks, override_num_blocks=len(tasks))
    resources = job.stage.resources
    common: dict[str, Any] = dict(batch_size=1, batch_format="pyarrow", num_cpus=resources.num_cpus)
    if resources.num_gpus:
        common["num_gpus"] = resources.num_gpus
    if resources.memory_gb:
        common["memory"] = resources.memory_gb * 2**30
    # Ray Data retries dead workers forever unless told otherwise, and a video that crashes
    # its decoder would then hang the run. Only `ray_remote_args` can bound retries today
    # (deprecated in Ray 2.60 with no replacement yet; pyproject keeps Ray below 2.64).
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        if job.stage.stateful:
            dataset = dataset.map_batches(
                _ShardActor, fn_constructor_args=(job,),
                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=runner.max_workers),
                max_task_retries=CRASH_RETRIES, **common,
            )
        else:
            shards_per_process = max(1, runner.recycle_after_items // _rows(shards))
            dataset = dataset.map_batches(
                _run_shard_task, fn_args=(job,), max_calls=shards_per_process,
                compute=ray.data.TaskPoolStrategy(size=runner.max_workers),
                max_retries=CRASH_RETRIES, **common,
            )
    with warnings.catch_warnings():
        # Fewer shards than workers (a small run) is fine; Ray Data warns about it.
        warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks")
        yield from dataset.iter_rows()


def _rows(shards: list[tuple[int, pa.Table]]) -> int:
    return max(1, max(t.num_rows for _, t in shards))


def _from_ipc(payload: bytes) -> pa.Table:
    return pa.ipc.open_stream(payload).read_all()


def _to_ipc(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()

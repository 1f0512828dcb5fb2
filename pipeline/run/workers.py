"""What runs inside Ray for a stage: reading upstream columns, the stage's steps over each shard,
staging the shard's parts, and isolating a shard whose worker keeps dying.

A shard travels through Ray Data as one row: `{"shard": n, "payload": bytes}`. The driver's
payload is the shard's light item table (Arrow IPC: ids, paths, and for each input the stage
`reads`, the part and row where the item's upstream row lies). The first step's worker reads the
upstream columns from the committed part files itself, so pixels never pass through the driver.
Between steps the payload is the shard's items as they stand (pickled, numpy arrays included);
the last step's worker stages the shard's rows and failures and hands the driver a summary.
"""

from __future__ import annotations

import json
import logging
import pickle
import time
import warnings
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.run.stage import BatchFn, Failure, RunSettings, Stage, Step
from pipeline.store.schema import FAILURES
from pipeline.store.storage import StorageError
from pipeline.store.version import Version

log = logging.getLogger(__name__)

# Columns the runner adds to a stage's item table (never seen by a step).
PART = "_part."  # + input name: index into ShardJob.parts[input]
ROW = "_row."  # + input name: row within that part
UPSTREAM_FAILURE = "_upstream_failure"  # why the item cannot be processed, or null

# A worker process that dies (a decoder segfault, the OOM killer) is retried this often before
# its shard is re-run one item at a time, so the one bad item becomes a failure row.
CRASH_RETRIES = 2


@dataclass
class ShardJob:
    """Everything a worker needs for one stage run; pickled once to every worker."""

    stage: Stage
    config: Any
    settings: RunSettings
    schema: pa.Schema
    output: Version  # the version being written
    metadata: dict[str, str]  # provenance for every Parquet file
    inputs: dict[str, Version]  # the input versions, by input name
    parts: dict[str, list[str]]  # per input the stage reads: its row parts (`Version.locations`)
    context: Any = None  # `Stage.context`, built on the driver


@dataclass
class InFlight:
    """A shard between steps: the items still going and the failure rows so far."""

    shard: int
    items: list[dict]
    failures: list[dict]
    seconds: float  # work done on it so far


# ---- one step over one shard --------------------------------------------------------------------


def start_shard(job: ShardJob, shard: int, payload: bytes) -> InFlight:
    """The driver's light items, with upstream failures turned into failure rows and the columns
    the stage reads from its inputs filled in."""
    table = pa.ipc.open_stream(payload).read_all()
    flight = InFlight(shard, [], [], 0.0)
    for item in table.to_pylist():
        reason = item.pop(UPSTREAM_FAILURE, None)
        if reason is not None:
            flight.failures.append(failure_row(job.stage, item, Failure("upstream_failed", reason)))
        else:
            flight.items.append(item)
    read_upstream_columns(job, flight.items)
    return flight


def read_upstream_columns(job: ShardJob, items: list[dict]) -> None:
    """Fill in, for each input the stage reads, the wanted columns of each item's upstream row."""
    for name, columns in job.stage.reads.items():
        fields = columns if isinstance(columns, dict) else {column: column for column in columns}
        by_part: dict[int, list[dict]] = {}
        for item in items:
            by_part.setdefault(item.pop(PART + name), []).append(item)
        for part, members in by_part.items():
            table = job.inputs[name].read_part(job.parts[name][part], columns=list(fields))
            rows = table.take(pa.array([item.pop(ROW + name) for item in members], pa.int64())).to_pylist()
            for item, row in zip(members, rows):
                item.update({fields[column]: value for column, value in row.items()})


def run_step(job: ShardJob, step: Step, batch_fn: BatchFn, flight: InFlight) -> InFlight:
    """One step over the shard's items in batches; an exception costs only the item that raised it."""
    started = time.perf_counter()
    size = job.settings.batch_size if step.main else max(1, len(flight.items))
    key = job.stage.key
    going: list[dict] = []
    for start in range(0, len(flight.items), size):
        chunk = flight.items[start : start + size]
        for item, result in zip(chunk, call_isolating_errors(job.stage, step, batch_fn, chunk)):
            if isinstance(result, Failure):
                flight.failures.append(failure_row(job.stage, item, result))
            else:
                result.setdefault(key, item[key])
                going.append(result)
    flight.items = going
    flight.seconds += time.perf_counter() - started
    return flight


def call_isolating_errors(stage: Stage, step: Step, batch_fn: BatchFn, chunk: list[dict]) -> list:
    try:
        results = batch_fn(chunk)
    except Exception as exc:  # noqa: BLE001 - retried item by item below to find the culprit
        if len(chunk) == 1:
            return [Failure("error", f"{step.name}: {type(exc).__name__}: {exc}")]
        return [r for item in chunk for r in call_isolating_errors(stage, step, batch_fn, [item])]
    if len(results) != len(chunk):
        raise RuntimeError(
            f"stage {stage.name} step {step.name} returned {len(results)} results for {len(chunk)} items; "
            "a batch function must return exactly one result or Failure per item"
        )
    return results


def failure_row(stage: Stage, item: dict, failure: Failure) -> dict:
    return {"item_id": item[stage.key], "stage": stage.name, "reason": failure.reason, "message": failure.message}


def write_shard(job: ShardJob, flight: InFlight) -> dict:
    """Stage the shard's parts; a storage error is reported to the driver, not raised.

    Raising would look like a crashed worker to Ray Data, which retries the shard and then
    isolates it item by item: hours of decoding repeated against a full disk.
    """
    try:
        files = job.output.stage_shard(flight.shard, pa.Table.from_pylist(flight.items, schema=job.schema),
                                       pa.Table.from_pylist(flight.failures, schema=FAILURES), job.metadata)
    except StorageError as exc:
        return {"shard": flight.shard, "files": "[]", "seconds": flight.seconds, "write_error": str(exc)}
    return {"shard": flight.shard, "files": json.dumps(files), "seconds": flight.seconds, "write_error": None}


# ---- Ray Data workers ---------------------------------------------------------------------------


class StepsWorker:
    """Runs steps `first..last` of a stage over each shard it is given, set up once per worker.
    The first step of the stage starts from the driver's payload; the last one writes the shard."""

    def __init__(self, job: ShardJob, first: int, last: int):
        self.job = job
        self.first, self.last = first, last
        self.steps = [(step, job.stage.set_up(step, job.config, job.context))
                      for step in job.stage.steps[first : last + 1]]

    def __call__(self, batch: pa.Table) -> dict[str, list]:
        out: dict[str, list] = {}
        for shard, payload in zip(batch["shard"].to_pylist(), batch["payload"].to_pylist()):
            result = self.process(shard, payload)
            for key, value in result.items():
                out.setdefault(key, []).append(value)
        return out

    def process(self, shard: int, payload: bytes) -> dict:
        started = time.perf_counter()
        flight = start_shard(self.job, shard, payload) if self.first == 0 else pickle.loads(payload)
        flight.seconds += time.perf_counter() - started
        for step, batch_fn in self.steps:
            flight = run_step(self.job, step, batch_fn, flight)
        if self.last == len(self.job.stage.steps) - 1:
            return write_shard(self.job, flight)
        return {"shard": shard, "payload": pickle.dumps(flight, protocol=5)}


def _run_steps_task(batch: pa.Table, job: ShardJob, first: int, last: int) -> dict[str, list]:
    return StepsWorker(job, first, last)(batch)


def pipelined(job: ShardJob) -> bool:
    """Steps in separate worker pools when the main step takes an accelerator (see `Step`)."""
    return job.settings.num_gpus > 0 and len(job.stage.steps) > 1


def last_step_transform(job: ShardJob):
    """The Ray Data transform the last step hands its work to for this config, or None."""
    last = job.stage.steps[-1]
    if last.dataset is None:
        return None
    return last.dataset(job.config, job.context) if job.stage.context is not None else last.dataset(job.config)


def streams(job: ShardJob) -> bool:
    """Whether the stage's operators stream into one another (rather than one map per shard)."""
    return pipelined(job) or last_step_transform(job) is not None


def build_dataset(job: ShardJob, shards: list[tuple[int, bytes]], max_workers: int | None,
                  recycle_after_items: int, rows_per_shard: int):
    """The Ray Data pipeline over the pending shards: one map per group of steps, or, when the
    last step hands its work to a Ray Data transform, the steps before it, then the transform over
    one row per item, then the rows regrouped by shard and written."""
    import ray

    tasks = [{"shard": shard, "payload": payload} for shard, payload in shards]
    dataset = ray.data.from_items(tasks, override_num_blocks=len(tasks))
    steps = job.stage.steps
    transform = last_step_transform(job)
    if transform is not None:
        return _through_transform(job, dataset, transform)
    groups = [(i, i) for i in range(len(steps))] if pipelined(job) else [(0, len(steps) - 1)]
    with warnings.catch_warnings():
        # Ray Data retries dead workers forever unless told otherwise, and a video that crashes
        # its decoder would then hang the run. Only `ray_remote_args` can bound retries today
        # (deprecated in Ray 2.60 with no replacement yet; pyproject keeps Ray below 2.64).
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        for first, last in groups:
            group = steps[first : last + 1]
            main = any(step.main for step in group)
            options = _resources(job.settings, main)
            size = (job.settings.workers or max_workers) if main else None
            if any(step.stateful for step in group):
                dataset = dataset.map_batches(
                    StepsWorker, fn_constructor_args=(job, first, last),
                    compute=ray.data.ActorPoolStrategy(min_size=1, max_size=size),
                    max_task_retries=CRASH_RETRIES, **options)
            else:
                shards_per_process = max(1, recycle_after_items // max(1, rows_per_shard))
                dataset = dataset.map_batches(
                    _run_steps_task, fn_args=(job, first, last), max_calls=shards_per_process,
                    compute=ray.data.TaskPoolStrategy(size=size),
                    max_retries=CRASH_RETRIES, **options)
    return dataset


# ---- a last step run by a Ray Data transform ------------------------------------------------------

# The columns of the per-item rows a transform gets and must hand back beside its result.
DATASET_KEEP = ("_shard", "_index", "_count", "_key", "_carry", "_item")


def item_of(row: dict) -> dict:
    """The item (as the steps before left it) that a transform's row stands for."""
    return pickle.loads(row["_item"])


def answered(row: dict, result: dict | Failure) -> dict:
    """The row a transform returns for `row`: the runner's columns and the item's result (a row
    of the stage's schema, or a Failure)."""
    return {**{key: row[key] for key in DATASET_KEEP if key != "_item"}, "_result": pickle.dumps(result)}


def _through_transform(job: ShardJob, dataset, transform):
    # Steps before the last run per shard as usual (at least start_shard: upstream columns and
    # failures), the shard is spread into one row per item for the transform, and its rows are
    # gathered again to be written. The gathering waits for every shard (a shuffle), so shards
    # commit only once all are answered; a rerun still recomputes only uncommitted shards.
    last = len(job.stage.steps) - 1
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        dataset = dataset.map_batches(_run_steps_task, fn_args=(job, 0, last - 1), batch_size=1,
                                      batch_format="pyarrow", max_retries=CRASH_RETRIES)
    dataset = transform(dataset.flat_map(_spread, fn_args=(job.stage.key,)), DATASET_KEEP)
    return dataset.groupby("_shard").map_groups(_gather_and_write, fn_args=(job,), batch_format="pyarrow")


def _spread(row: dict, key: str) -> list[dict]:
    """One row per item of a shard; the first carries the shard's failures so far. A shard with no
    item left makes no row: the driver then writes it through `isolate`, which loads nothing."""
    flight: InFlight = pickle.loads(row["payload"])
    carry = pickle.dumps(InFlight(flight.shard, [], flight.failures, flight.seconds))
    return [{"_shard": flight.shard, "_index": i, "_count": len(flight.items), "_key": item[key],
             "_carry": carry if i == 0 else b"", "_item": pickle.dumps(item)} for i, item in enumerate(flight.items)]


def _gather_and_write(group: pa.Table, job: ShardJob) -> pa.Table:
    rows = sorted(group.to_pylist(), key=lambda r: r["_index"])
    if not rows or len(rows) != rows[0]["_count"]:
        return _SUMMARY.empty_table()  # incomplete: the driver isolates the shard
    flight: InFlight = pickle.loads(rows[0]["_carry"])
    started = time.perf_counter()
    for row in rows:
        result = pickle.loads(row["_result"])
        if isinstance(result, Failure):
            flight.failures.append(failure_row(job.stage, {job.stage.key: row["_key"]}, result))
        else:
            flight.items.append(result)
    flight.seconds += time.perf_counter() - started
    return pa.Table.from_pylist([write_shard(job, flight)], schema=_SUMMARY)


# What a shard's last worker hands the driver (see `write_shard`).
_SUMMARY = pa.schema([("shard", pa.int64()), ("files", pa.string()), ("seconds", pa.float64()),
                      ("write_error", pa.string())])


def _resources(settings: RunSettings, main: bool) -> dict[str, Any]:
    options: dict[str, Any] = dict(batch_size=1, batch_format="pyarrow", num_cpus=settings.num_cpus if main else 1)
    if main and settings.num_gpus:
        options["num_gpus"] = settings.num_gpus
    if main and settings.memory_gb:
        options["memory"] = settings.memory_gb * 2**30
    return options


# ---- isolating a shard whose worker keeps dying -------------------------------------------------


class _IsolationWorker:
    """All of a stage's steps in one process, one item per call: set up once, and again only
    after an item has killed it."""

    def __init__(self, job: ShardJob):
        self.job = job
        self.steps = [(step, job.stage.set_up(step, job.config, job.context)) for step in job.stage.steps]

    def process(self, flight: InFlight) -> InFlight:
        for step, batch_fn in self.steps:
            flight = run_step(self.job, step, batch_fn, flight)
        return flight


def isolate(job: ShardJob, shard: int, payload: bytes) -> dict:
    """Re-run a shard one item at a time in a worker of its own. An item whose call kills the
    worker becomes a `worker_crashed` failure and a fresh worker takes the rest, so the stage's
    setup (a model load) runs once per shard, plus once after each item that crashed."""
    import ray

    started = time.perf_counter()
    whole = start_shard(job, shard, payload)
    if whole.items:  # (a shard with nothing left to compute never reaches a step's workers)
        log.warning("%s: shard %d did not come back from its workers (they died %d times); running it one item "
                    "at a time", job.stage.name, shard, CRASH_RETRIES + 1)
    actor_class = ray.remote(max_restarts=0, max_task_retries=0, num_cpus=job.settings.num_cpus,
                             num_gpus=job.settings.num_gpus)(_IsolationWorker)
    worker = None
    done = InFlight(shard, [], list(whole.failures), 0.0)
    for item in whole.items:
        worker = worker or actor_class.remote(job)
        try:
            result = ray.get(worker.process.remote(InFlight(shard, [item], [], 0.0)))
        except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                ray.exceptions.OutOfMemoryError) as exc:
            worker = None
            done.failures.append(failure_row(job.stage, item, Failure(
                "worker_crashed", f"the worker process died while processing this item: {_first_line(exc)}")))
            continue
        done.items += result.items
        done.failures += result.failures
    if worker is not None:
        ray.kill(worker)
    done.seconds = time.perf_counter() - started
    return write_shard(job, done)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

"""The runner's promises: versions by content, exactly-once shards, failure rows, resume."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from toy import TOY, TOY_SCHEMA, ToyConfig, read, toy_inputs

from pipeline.run.runner import RunnerConfig, run_stage
from pipeline.run.stage import Stage, Step
from pipeline.run.workers import call_isolating_errors
from pipeline.store.storage import Store
from pipeline.store.version import Version


def test_every_item_exactly_once_in_rows_or_failures(tmp_path, ray_session):
    store = Store.open(str(tmp_path / "out"))
    manifest = toy_inputs(store, 23, bad={3, 17}, boom={5})
    result = run_stage(store, TOY, ToyConfig(), manifest,
                       RunnerConfig(rows_per_shard=5, progress=False))
    assert (result.items, result.rows, result.failures) == (23, 20, 3)
    rows = read(store, "toy", result.version)
    fails = read(store, "failures", "toy", result.version)
    assert sorted(rows["video_id"].to_pylist()) == [f"v-{i:03d}" for i in range(23) if i not in {3, 5, 17}]
    assert dict(zip(rows["video_id"].to_pylist(), rows["doubled"].to_pylist()))["v-010"] == 20
    by_id = {r["item_id"]: r for r in fails.to_pylist()}
    assert set(by_id) == {"v-003", "v-005", "v-017"}
    assert by_id["v-003"]["reason"] == "corrupt"
    # The exception in one item of a batch costs that item only, with its message.
    assert by_id["v-005"]["reason"] == "error" and "exploded on v-005" in by_id["v-005"]["message"]
    # ceil(23 / 5) parts, plus the item plan that `tvr verify` checks them against
    parts = ["_plan.parquet"] + [f"part-{i:05d}.parquet" for i in range(5)]
    assert store.list_files("toy", result.version, suffix=".parquet") == parts
    assert store.read_text("toy", "LATEST").strip() == result.version


def test_parquet_carries_provenance(tmp_path, ray_session):
    store = Store.open(str(tmp_path / "out"))
    manifest = toy_inputs(store, 3)
    result = run_stage(store, TOY, ToyConfig(factor=3), manifest,
                       RunnerConfig(progress=False))
    meta = pq.read_schema(store.path("toy", result.version, "part-00000.parquet")).metadata
    assert meta[b"tvr.stage"] == b"toy"
    identity = json.loads(meta[b"tvr.identity"])
    assert identity["version"] == result.version
    assert identity["config"] == {"factor": 3}
    assert identity["inputs"] == {"videos": manifest["videos"].version}


def test_unchanged_rerun_recomputes_nothing_and_config_change_is_new_version(tmp_path, ray_session):
    store = Store.open(str(tmp_path / "out"))
    manifest = toy_inputs(store, 8)
    runner = RunnerConfig(rows_per_shard=3, progress=False)
    first = run_stage(store, TOY, ToyConfig(), manifest, runner)
    stamp = (tmp_path / "out" / "toy" / first.version / "part-00000.parquet").stat().st_mtime_ns

    again = run_stage(store, TOY, ToyConfig(), manifest, runner)
    assert again.up_to_date and again.computed_items == 0 and again.version == first.version
    assert (tmp_path / "out" / "toy" / first.version / "part-00000.parquet").stat().st_mtime_ns == stamp

    changed = run_stage(store, TOY, ToyConfig(factor=5), manifest, runner)
    assert changed.version != first.version and changed.computed_items == 8
    assert store.list_dirs("toy") == sorted([first.version, changed.version])
    old = read(store, "toy", first.version)
    new = read(store, "toy", changed.version)
    assert sorted(old["doubled"].to_pylist()) == [2 * i for i in range(8)]  # old one untouched
    assert sorted(new["doubled"].to_pylist()) == [5 * i for i in range(8)]
    assert store.read_text("toy", "LATEST").strip() == changed.version


def test_new_input_version_gives_new_version(tmp_path, ray_session):
    store = Store.open(str(tmp_path / "out"))
    runner = RunnerConfig(progress=False)
    a = run_stage(store, TOY, ToyConfig(), toy_inputs(store, 4), runner)
    b = run_stage(store, TOY, ToyConfig(), toy_inputs(store, 5), runner)
    assert a.version != b.version and b.items == 5


def test_resume_processes_only_uncommitted_shards(tmp_path, ray_session):
    store = Store.open(str(tmp_path / "out"))
    manifest = toy_inputs(store, 10)
    runner = RunnerConfig(rows_per_shard=3, progress=False)
    done = run_stage(store, TOY, ToyConfig(), manifest, runner)
    version = done.version
    # A driver killed midway: shard 1 was committed but not yet moved out of staging, shards 2
    # and 3 were staged (or half-written) but never committed.
    record = json.loads(store.read_text("toy", version, "_commits", "part-00001.json"))
    for file in record["files"]:
        store.move(file["final"], file["staged"])
    for shard in (2, 3):
        store.delete("toy", version, "_commits", f"part-{shard:05d}.json")
        store.move(f"toy/{version}/part-{shard:05d}.parquet", f"toy/{version}/_staging/dead/part-{shard:05d}.parquet")
        store.delete(Version(store, "toy", version).failures_path, f"part-{shard:05d}.parquet")
    (tmp_path / "out" / "toy" / version / ".tmp-deadbeef-part-00003.parquet").write_bytes(b"half")
    Version(store, "toy", version).write_manifest({**Version(store, "toy", version).manifest(), "complete": False})
    assert read(store, "toy", version).num_rows == 3  # readers see committed, published parts only

    resumed = run_stage(store, TOY, ToyConfig(), manifest, runner)
    assert resumed.version == version and not resumed.up_to_date
    assert resumed.computed_items == 3 + 1  # shard 1 was committed: published, not recomputed
    rows = read(store, "toy", version)
    assert sorted(rows["video_id"].to_pylist()) == [f"v-{i:03d}" for i in range(10)]
    assert not store.exists("toy", version, "_staging")
    assert not store.remove_temporaries("toy", version)  # leftovers were cleaned
    assert Version(store, "toy", version).commits()[1]["committed"] == record["committed"]


def test_empty_input_still_writes_a_readable_empty_shard(tmp_path, ray_session):
    store = Store.open(str(tmp_path / "out"))
    result = run_stage(store, TOY, ToyConfig(), toy_inputs(store, 0),
                       RunnerConfig(progress=False))
    table = read(store, "toy", result.version)
    assert table.num_rows == 0 and table.schema.names == TOY_SCHEMA.names


def test_batch_returning_wrong_count_is_a_stage_bug():
    step = Step("lose", lambda c: (lambda items: []))
    with pytest.raises(RuntimeError, match="exactly one result or Failure per item"):
        call_isolating_errors(TOY, step, step.setup(None), [{"video_id": "v-000", "path": "ok/0.mp4"}])


def test_a_crashing_worker_costs_only_its_item(tmp_path, ray_session):
    store = Store.open(str(tmp_path / "out"))
    manifest = toy_inputs(store, 9, segv={4})
    result = run_stage(store, TOY, ToyConfig(), manifest,
                       RunnerConfig(rows_per_shard=3, progress=False))
    assert (result.items, result.rows, result.failures) == (9, 8, 1)
    fails = read(store, "failures", "toy", result.version).to_pylist()
    assert [(f["item_id"], f["reason"]) for f in fails] == [("v-004", "worker_crashed")]
    rows = read(store, "toy", result.version)
    assert sorted(rows["video_id"].to_pylist()) == [f"v-{i:03d}" for i in range(9) if i != 4]


TIMED_SCHEMA = pa.schema([("video_id", pa.string()), ("start", pa.float64()), ("end", pa.float64())])


def _timed_setup(config):
    import time

    def batch(items):
        rows = []
        for item in items:
            start = time.time()
            time.sleep(0.4)
            rows.append({"video_id": item["video_id"], "start": start, "end": time.time()})
        return rows

    return batch


TIMED = Stage(**{**TOY.__dict__, "name": "timed", "schema": TIMED_SCHEMA, "steps": (Step("sleep", _timed_setup),)})


@pytest.mark.parametrize("max_workers, overlapping", [(1, False), (None, True)])
def test_max_workers_caps_parallel_workers(tmp_path, ray_session, max_workers, overlapping):
    store = Store.open(str(tmp_path / "out"))
    result = run_stage(store, TIMED, ToyConfig(), toy_inputs(store, 6),
                       RunnerConfig(rows_per_shard=1, max_workers=max_workers, progress=False))
    spans = sorted((r["start"], r["end"]) for r in read(store, "timed", result.version).to_pylist())
    overlaps = any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))
    assert overlaps is overlapping  # 2 CPUs: uncapped, two shards run at once

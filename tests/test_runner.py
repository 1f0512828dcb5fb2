"""The runner's promises: versions by content, exactly-once shards, failure rows, resume."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipeline import outputs
from pipeline.runner import RunnerConfig, process_items, run_stage
from pipeline.schema import VIDEOS
from pipeline.stage import Failure, Stage
from pipeline.storage import Store

TOY_SCHEMA = pa.schema([("video_id", pa.string()), ("doubled", pa.int64())])


@dataclass
class ToyConfig:
    factor: int = 2


def _toy_items(config, inputs):
    return inputs["manifest"].table("videos", columns=["video_id", "path"])


def _toy_setup(config):
    def batch(items):
        results = []
        for item in items:
            n = int(item["video_id"].split("-")[1])
            if "segv" in item["path"]:
                os.kill(os.getpid(), signal.SIGSEGV)  # a decoder crashing the whole process
            if "boom" in item["path"]:
                raise RuntimeError(f"exploded on {item['video_id']}")
            if "bad" in item["path"]:
                results.append(Failure("corrupt", f"{item['path']} is bad"))
            else:
                results.append({"video_id": item["video_id"], "doubled": n * config.factor})
        return results

    return batch


TOY = Stage(
    name="toy",
    description="multiplies the number in each id",
    key="video_id",
    inputs=("manifest",),
    config_type=ToyConfig,
    schema=TOY_SCHEMA,
    items=_toy_items,
    setup=_toy_setup,
    batch_size=4,
)


def _manifest(store: Store, n: int, bad=(), boom=(), segv=()):
    ids = [f"v-{i:03d}" for i in range(n)]
    kinds = [("bad" if i in bad else "boom" if i in boom else "segv" if i in segv else "ok") for i in range(n)]
    paths = [f"{kind}/{i}.mp4" for i, kind in enumerate(kinds)]
    videos = pa.table({"video_id": ids, "path": paths, "split": ["test"] * n, "extra": [None] * n},
                      schema=VIDEOS)
    from pipeline.schema import CAPTIONS, MANIFEST_PROBLEMS

    tables = {"videos": videos, "captions": CAPTIONS.empty_table(), "problems": MANIFEST_PROBLEMS.empty_table()}
    return outputs.write_dataset_manifest(store, tables, {"format": "test"})


def _read(store: Store, *parts: str) -> pa.Table:
    return ds.dataset(store.path(*parts), format="parquet").to_table()


def test_every_item_exactly_once_in_rows_or_failures(tmp_path, ray_session):
    store = Store.open(str(tmp_path / "out"))
    manifest = _manifest(store, 23, bad={3, 17}, boom={5})
    result = run_stage(store, TOY, ToyConfig(), {"manifest": manifest},
                       RunnerConfig(rows_per_shard=5, progress=False))
    assert (result.items, result.rows, result.failures) == (23, 20, 3)
    rows = _read(store, "toy", result.version)
    fails = _read(store, "failures", "toy", result.version)
    assert sorted(rows["video_id"].to_pylist()) == [f"v-{i:03d}" for i in range(23) if i not in {3, 5, 17}]
    assert dict(zip(rows["video_id"].to_pylist(), rows["doubled"].to_pylist()))["v-010"] == 20
    by_id = {r["item_id"]: r for r in fails.to_pylist()}
    assert set(by_id) == {"v-003", "v-005", "v-017"}
    assert by_id["v-003"]["reason"] == "corrupt"
    # The exception in one item of a batch costs that item only, with its message.
    assert by_id["v-005"]["reason"] == "error" and "exploded on v-005" in by_id["v-005"]["message"]
    assert len(store.list_files("toy", result.version, suffix=".parquet")) == 5  # ceil(23 / 5)
    assert store.read_text("toy", "LATEST").strip() == result.version


def test_parquet_carries_provenance(tmp_path, ray_session):
    store = Store.open(str(tmp_path / "out"))
    manifest = _manifest(store, 3)
    result = run_stage(store, TOY, ToyConfig(factor=3), {"manifest": manifest},
                       RunnerConfig(progress=False))
    meta = pq.read_schema(store.path("toy", result.version, "part-00000.parquet")).metadata
    assert meta[b"tvr.stage"] == b"toy"
    identity = json.loads(meta[b"tvr.identity"])
    assert identity["version"] == result.version
    assert identity["config"] == {"factor": 3}
    assert identity["inputs"] == {"manifest": manifest.version}


def test_unchanged_rerun_recomputes_nothing_and_config_change_is_new_version(tmp_path, ray_session):
    store = Store.open(str(tmp_path / "out"))
    manifest = _manifest(store, 8)
    runner = RunnerConfig(rows_per_shard=3, progress=False)
    first = run_stage(store, TOY, ToyConfig(), {"manifest": manifest}, runner)
    stamp = (tmp_path / "out" / "toy" / first.version / "part-00000.parquet").stat().st_mtime_ns

    again = run_stage(store, TOY, ToyConfig(), {"manifest": manifest}, runner)
    assert again.up_to_date and again.computed_items == 0 and again.version == first.version
    assert (tmp_path / "out" / "toy" / first.version / "part-00000.parquet").stat().st_mtime_ns == stamp

    changed = run_stage(store, TOY, ToyConfig(factor=5), {"manifest": manifest}, runner)
    assert changed.version != first.version and changed.computed_items == 8
    assert store.list_dirs("toy") == sorted([first.version, changed.version])
    old = _read(store, "toy", first.version)
    new = _read(store, "toy", changed.version)
    assert sorted(old["doubled"].to_pylist()) == [2 * i for i in range(8)]  # old one untouched
    assert sorted(new["doubled"].to_pylist()) == [5 * i for i in range(8)]
    assert store.read_text("toy", "LATEST").strip() == changed.version


def test_new_input_version_gives_new_version(tmp_path, ray_session):
    store = Store.open(str(tmp_path / "out"))
    runner = RunnerConfig(progress=False)
    a = run_stage(store, TOY, ToyConfig(), {"manifest": _manifest(store, 4)}, runner)
    b = run_stage(store, TOY, ToyConfig(), {"manifest": _manifest(store, 5)}, runner)
    assert a.version != b.version and b.items == 5


def test_resume_processes_only_unrecorded_shards(tmp_path, ray_session):
    store = Store.open(str(tmp_path / "out"))
    manifest = _manifest(store, 10)
    runner = RunnerConfig(rows_per_shard=3, progress=False)
    done = run_stage(store, TOY, ToyConfig(), {"manifest": manifest}, runner)
    # Simulate a driver killed after shard 1 was written but before it (and 2, 3) were
    # recorded: drop their records and leave a half-written temporary behind.
    record = outputs.read_manifest(store, "toy", done.version)
    for name in ("part-00001.parquet", "part-00002.parquet", "part-00003.parquet"):
        del record["shards"][name]
    record["complete"] = False
    outputs.write_manifest(store, record)
    store.fs.delete_file(store.path("toy", done.version, "part-00002.parquet"))
    (tmp_path / "out" / "toy" / done.version / ".tmp-deadbeef-part-00003.parquet").write_bytes(b"half")

    resumed = run_stage(store, TOY, ToyConfig(), {"manifest": manifest}, runner)
    assert resumed.version == done.version and not resumed.up_to_date
    assert resumed.computed_items == 3 + 3 + 1
    rows = _read(store, "toy", done.version)
    assert sorted(rows["video_id"].to_pylist()) == [f"v-{i:03d}" for i in range(10)]
    assert not store.remove_temporaries("toy", done.version)  # leftovers were cleaned


def test_empty_input_still_writes_a_readable_empty_shard(tmp_path, ray_session):
    store = Store.open(str(tmp_path / "out"))
    result = run_stage(store, TOY, ToyConfig(), {"manifest": _manifest(store, 0)},
                       RunnerConfig(progress=False))
    table = _read(store, "toy", result.version)
    assert table.num_rows == 0 and table.schema.names == TOY_SCHEMA.names


def test_batch_returning_wrong_count_is_a_stage_bug():
    stage = Stage(**{**TOY.__dict__, "setup": lambda c: (lambda items: [])})
    with pytest.raises(RuntimeError, match="exactly one row or Failure per item"):
        process_items(stage, stage.setup(None), [{"video_id": "v-000", "path": "ok"}])


def test_a_crashing_worker_costs_only_its_item(tmp_path, ray_session):
    store = Store.open(str(tmp_path / "out"))
    manifest = _manifest(store, 9, segv={4})
    result = run_stage(store, TOY, ToyConfig(), {"manifest": manifest},
                       RunnerConfig(rows_per_shard=3, progress=False))
    assert (result.items, result.rows, result.failures) == (9, 8, 1)
    fails = _read(store, "failures", "toy", result.version).to_pylist()
    assert [(f["item_id"], f["reason"]) for f in fails] == [("v-004", "worker_crashed")]
    rows = _read(store, "toy", result.version)
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


TIMED = Stage(**{**TOY.__dict__, "name": "timed", "schema": TIMED_SCHEMA, "setup": _timed_setup})


@pytest.mark.parametrize("max_workers, overlapping", [(1, False), (None, True)])
def test_max_workers_caps_parallel_workers(tmp_path, ray_session, max_workers, overlapping):
    store = Store.open(str(tmp_path / "out"))
    result = run_stage(store, TIMED, ToyConfig(), {"manifest": _manifest(store, 6)},
                       RunnerConfig(rows_per_shard=1, max_workers=max_workers, progress=False))
    spans = sorted((r["start"], r["end"]) for r in _read(store, "timed", result.version).to_pylist())
    overlaps = any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))
    assert overlaps is overlapping  # 2 CPUs: uncapped, two shards run at once

"""The runner for model stages: workers read upstream columns themselves, steps stream between
worker pools when a stage takes GPUs, run settings stay out of the version, upstream failures are
accounted once, and a crashing shard is isolated with one setup per shard."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from toy import TOY, ToyConfig, read, toy_inputs

from pipeline.run.runner import RunnerConfig, attach_upstream, run_stage, stage_version
from pipeline.run.stage import RunSettings, Stage, Step
from pipeline.stages import STAGES, in_dependency_order
from pipeline.store.storage import Store
from pipeline.store.version import Version

# ---- a stage reading the toy stage's rows ---------------------------------------------------------

READER_SCHEMA = pa.schema([("video_id", pa.string()), ("plus_one", pa.int64()), ("pids", pa.list_(pa.int64()))])


@dataclass
class ReaderConfig:
    loads_file: str = ""  # where each setup appends a line: counts model loads across processes
    crash_on: str = ""  # the item whose embed step kills its worker process
    run: RunSettings = field(default_factory=lambda: RunSettings(batch_size=2))


def _light_items(config, inputs):
    return inputs["videos"].table(columns=["video_id"])


def _mark_setup(config):
    def mark(items):
        return [{**item, "pids": [os.getpid()]} for item in items]

    return mark


def _embed_setup(config):
    if config.loads_file:
        with open(config.loads_file, "a") as f:
            f.write(f"{os.getpid()}\n")

    def embed(items):
        rows = []
        for item in items:
            if item["video_id"] == config.crash_on:
                os.kill(os.getpid(), signal.SIGSEGV)
            rows.append({"video_id": item["video_id"], "plus_one": item["doubled"] + 1,
                         "pids": item["pids"] + [os.getpid()]})
        return rows

    return embed


READER = Stage(
    name="reader", description="reads toy rows in its workers", key="video_id", inputs=("videos", "toy"),
    config_type=ReaderConfig, schema=READER_SCHEMA, items=_light_items,
    steps=(Step("mark", _mark_setup, main=False), Step("embed", _embed_setup, stateful=True)),
    reads={"toy": ("doubled",)},
)


def _toy_then(store: Store, n: int, **kinds) -> dict[str]:
    inputs = toy_inputs(store, n, **kinds)
    toy = run_stage(store, TOY, ToyConfig(), inputs, RunnerConfig(rows_per_shard=3, progress=False))
    return {**inputs, "toy": Version(store, "toy", toy.version)}


def test_driver_items_hold_locations_not_upstream_columns(tmp_path, ray_session):
    store = Store.open(str(tmp_path / "out"))
    inputs = _toy_then(store, 7, bad=(2,))
    readers = {name: inputs[name] for name in READER.inputs}
    items, parts = attach_upstream(READER, _light_items(None, readers), readers)
    assert "doubled" not in items.column_names  # the workers read it
    assert set(items.column_names) == {"video_id", "_part.toy", "_row.toy", "_upstream_failure"}
    assert len(parts["toy"]) == 3  # toy's committed row parts, shards of 3
    by_id = {r["video_id"]: r for r in items.to_pylist()}
    assert by_id["v-002"]["_part.toy"] is None
    assert by_id["v-002"]["_upstream_failure"].startswith("toy: corrupt: bad/2.mp4 is bad")
    row = by_id["v-005"]
    located = pq.read_table(store.path(parts["toy"][row["_part.toy"]])).slice(row["_row.toy"], 1).to_pylist()[0]
    assert located["video_id"] == "v-005" and located["doubled"] == 10


def test_workers_read_upstream_and_failures_are_accounted_once(tmp_path, ray_session):
    store = Store.open(str(tmp_path / "out"))
    inputs = _toy_then(store, 7, bad=(2, 6))
    result = run_stage(store, READER, ReaderConfig(), inputs, RunnerConfig(rows_per_shard=2, progress=False))
    rows = {r["video_id"]: r["plus_one"] for r in read(store, "reader", result.version).to_pylist()}
    assert rows == {f"v-{i:03d}": 2 * i + 1 for i in range(7) if i not in (2, 6)}
    failures = read(store, "failures", "reader", result.version).to_pylist()
    assert sorted((f["item_id"], f["reason"]) for f in failures) == [("v-002", "upstream_failed"),
                                                                     ("v-006", "upstream_failed")]
    assert all(f["message"].startswith("toy: corrupt: ") for f in failures)


@pytest.mark.parametrize("num_gpus, separate", [(0, False), (1, True)])
def test_steps_share_a_worker_without_gpus_and_stream_between_pools_with(tmp_path, ray_session, num_gpus, separate):
    # The test session's Ray declares one logical GPU; the steps use none of it but its scheduling.
    store = Store.open(str(tmp_path / "out"))
    inputs = _toy_then(store, 6)
    config = ReaderConfig(run=RunSettings(batch_size=2, num_gpus=num_gpus, workers=1))
    result = run_stage(store, READER, config, inputs, RunnerConfig(rows_per_shard=2, progress=False))
    table = read(store, "reader", result.version)
    assert table.num_rows == 6
    assert all((first != second) is separate for first, second in table.column("pids").to_pylist())


def test_run_settings_do_not_change_the_version_and_are_recorded(tmp_path, ray_session):
    store = Store.open(str(tmp_path / "out"))
    inputs = toy_inputs(store, 5)
    first = run_stage(store, TOY, ToyConfig(run=RunSettings(batch_size=1, workers=1)), inputs,
                      RunnerConfig(progress=False))
    moved = ToyConfig(run=RunSettings(batch_size=3, workers=2, num_cpus=0.5, rows_per_shard=2))
    assert stage_version(TOY, moved, inputs) == first.version
    assert run_stage(store, TOY, moved, inputs, RunnerConfig(progress=False)).up_to_date
    assert stage_version(TOY, ToyConfig(factor=3), inputs) != first.version
    part = store.path("toy", first.version, "part-00000.parquet")
    assert json.loads(pq.read_schema(part).metadata[b"tvr.run"])["batch_size"] == 1


def test_per_stage_rows_per_shard_overrides_the_runner(tmp_path, ray_session):
    store = Store.open(str(tmp_path / "out"))
    result = run_stage(store, TOY, ToyConfig(run=RunSettings(rows_per_shard=2)), toy_inputs(store, 5),
                       RunnerConfig(rows_per_shard=32, progress=False))
    assert Version(store, "toy", result.version).manifest()["num_shards"] == 3


def test_a_crashing_shard_is_isolated_with_one_setup_per_shard(tmp_path, ray_session):
    store = Store.open(str(tmp_path / "out"))
    inputs = _toy_then(store, 12)
    loads = tmp_path / "loads.txt"
    config = ReaderConfig(loads_file=str(loads), crash_on="v-005", run=RunSettings(batch_size=2, workers=1))
    result = run_stage(store, READER, config, inputs, RunnerConfig(rows_per_shard=12, progress=False))
    failures = read(store, "failures", "reader", result.version).to_pylist()
    assert [(f["item_id"], f["reason"]) for f in failures] == [("v-005", "worker_crashed")]
    assert read(store, "reader", result.version).num_rows == 11
    # The actor pool loads on each (re)start of its worker (the first try, 2 retries, and the
    # pool's replacement worker), then the isolation loads once, and once more after the item
    # that crashed. Isolating one item per process would have loaded 12 times on top.
    assert len(loads.read_text().split()) <= 4 + 2


def test_stage_order_follows_declared_inputs():
    order = list(STAGES)
    assert order.index("probe") < order.index("keyframes") < order.index("frame_features")

    def stage(name, *inputs):
        return Stage(name=name, description="", key="video_id", inputs=inputs, config_type=ToyConfig,
                     schema=READER_SCHEMA, items=_light_items, steps=(Step("s", _mark_setup),))

    ordered = in_dependency_order({"c": stage("c", "b"), "a": stage("a", "videos"), "b": stage("b", "a", "captions")})
    assert list(ordered) == ["a", "b", "c"]
    with pytest.raises(RuntimeError, match="cycle"):
        in_dependency_order({"a": stage("a", "b"), "b": stage("b", "a")})
    with pytest.raises(RuntimeError, match="which no stage writes"):
        in_dependency_order({"a": stage("a", "nothing")})


def test_asking_for_more_gpus_than_the_cluster_has_is_a_clear_error(tmp_path, ray_session):
    from pipeline.config import ConfigError

    store = Store.open(str(tmp_path / "out"))
    inputs = _toy_then(store, 2)
    config = ReaderConfig(run=RunSettings(num_gpus=2))  # the test session's Ray has 1
    with pytest.raises(ConfigError, match=r"reader.run.num_gpus=2 .* than the Ray cluster has \(1\)"):
        run_stage(store, READER, config, inputs, RunnerConfig(progress=False))


# ---- a last step handed to a Ray Data transform (as Ray Data LLM's processor is) -------------------


def _transform_for(config):
    if not config.crash_on:  # reuse the field: "transform" turns the Ray Data path on
        return None

    def transform(dataset, keep):
        from pipeline.run.stage import Failure
        from pipeline.run.workers import answered, item_of

        def answer(row):
            item = item_of(row)
            if item["doubled"] == 8:  # v-004: the transform itself reports a failure for one item
                return answered(row, Failure("generation_error", "no answer for four"))
            return answered(row, {"video_id": item["video_id"], "plus_one": item["doubled"] + 1,
                                  "pids": item["pids"] + [os.getpid()]})

        return dataset.map(answer)

    return transform


TRANSFORMED = Stage(**{**READER.__dict__, "name": "transformed",
                       "steps": (Step("mark", _mark_setup, main=False),
                                 Step("embed", _embed_setup, stateful=True, dataset=_transform_for))})


def test_a_last_step_can_be_a_ray_data_transform(tmp_path, ray_session):
    store = Store.open(str(tmp_path / "out"))
    inputs = _toy_then(store, 9, bad=(2, 6, 7))  # shard 3 (v-006, v-007) has nothing left to compute
    config = ReaderConfig(crash_on="transform")
    result = run_stage(store, TRANSFORMED, config, inputs, RunnerConfig(rows_per_shard=2, progress=False))
    rows = {r["video_id"]: r["plus_one"] for r in read(store, "transformed", result.version).to_pylist()}
    assert rows == {f"v-{i:03d}": 2 * i + 1 for i in (0, 1, 3, 5, 8)}
    failures = {f["item_id"]: f["reason"] for f in read(store, "failures", "transformed", result.version).to_pylist()}
    assert failures == {"v-002": "upstream_failed", "v-004": "generation_error", "v-006": "upstream_failed",
                        "v-007": "upstream_failed"}
    assert Version(store, "transformed", result.version).manifest()["num_shards"] == 5
    # Without a transform for this config the same stage runs its workers as usual.
    plain = run_stage(store, TRANSFORMED, ReaderConfig(), inputs, RunnerConfig(rows_per_shard=2, progress=False))
    assert plain.version != result.version and plain.rows == 6

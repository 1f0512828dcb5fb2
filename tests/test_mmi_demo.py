"""The demo's MMI output is deterministic for a fixed seed: a fresh worker, set up from the demo's
config in this process (its own model loads, no Ray), recomputes every stored row of every MMI
stage exactly, with the tiny transformers models and the real question pools."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.demo.end_to_end import demo_config
from pipeline.run.runner import _to_ipc, attach_upstream, run_settings
from pipeline.run.workers import ShardJob, run_step, start_shard
from pipeline.stages import STAGES
from pipeline.store.storage import Store
from pipeline.store.version import Version, latest_pointer

MMI = ("question_clusters", "demonstrations", "text_skeletons", "video_skeletons", "skeleton_scores")


def _recomputed(store: Store, config, name: str) -> tuple[list[dict], list[dict]]:
    """Every item of the stage's LATEST version computed again, as one shard in this process."""
    stage = STAGES[name]
    version = Version(store, name, latest_pointer(store, name))
    inputs = {i: Version(store, i, v) for i, v in version.manifest()["identity"]["inputs"].items()}
    items, parts = attach_upstream(stage, stage.items(config, inputs), inputs)
    context = stage.context(config, inputs) if stage.context is not None else None
    job = ShardJob(stage, config, run_settings(config), stage.output_schema(config), version, {}, inputs, parts,
                   context)
    flight = start_shard(job, 0, _to_ipc(items.sort_by(stage.key)))
    for step in stage.steps:
        flight = run_step(job, step, stage.set_up(step, config, context), flight)
    return flight.items, flight.failures


@pytest.mark.parametrize("name", MMI)
def test_a_fresh_worker_recomputes_the_demos_mmi_rows_exactly(demo_out, name):
    store = Store.open(str(demo_out))
    config = getattr(demo_config(demo_out), name)
    rows, failures = _recomputed(store, config, name)
    version = Version(store, name, latest_pointer(store, name))
    stored = version.table()
    key = STAGES[name].key
    assert rows, f"{name}: nothing recomputed"
    assert pa.Table.from_pylist(rows, schema=stored.schema).sort_by(key).equals(stored.sort_by(key)), name
    assert sorted(f["item_id"] for f in failures) == sorted(version.failures().column("item_id").to_pylist())

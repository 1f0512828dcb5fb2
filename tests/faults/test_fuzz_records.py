"""Fuzz the small files a run trusts: `_manifest.json`, commit records and `_plan.parquet`.

Each example copies a finished run (the manifest's three tables and probe on three clips), damages
one of those files with random or type-confused contents, and runs `tvr status`, `tvr verify`,
`tvr run`, `tvr verify --repair` and `tvr run` again through `pipeline.cli.main`. Each must
succeed or stop with one line (exit 1: damaged output), never a traceback; the repair must leave
output that verifies, and the run after it must not fail. `tvr run` stops where it would start
Ray for the shards it has to compute: everything before that (reading and checking the records,
rewriting the manifest's tables, planning, recovering) is what is under test, and starting Ray
per example would cost seconds each.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
import tempfile
from pathlib import Path
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.demo import synth
from pipeline.store.storage import parquet_bytes


class ReachedRay(Exception):
    """`tvr run` got past every check to the shards it has to compute."""


@pytest.fixture(scope="module")
def finished(tmp_path_factory, ray_session) -> tuple[Path, Path, list[str]]:
    """A finished `tvr run --stages probe` (OUT and its config), and the record files in it."""
    base = tmp_path_factory.mktemp("fuzz")
    videos = base / "data" / "videos"
    videos.mkdir(parents=True)
    with (base / "data" / "captions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id", "path", "caption"])
        for name in ("a", "b", "c"):
            synth.make_clip(videos / f"{name}.mp4", seconds=1, width=96, height=64, fps=5)
            writer.writerow([name, f"{name}.mp4", f"clip {name}"])
    config = base / "run.yaml"
    config.write_text(f"dataset: {{format: generic, annotations: {base}/data/captions.csv, videos: {videos}}}\n"
                      f"runner: {{rows_per_shard: 2, progress: false}}\n")
    out = base / "out"
    assert main(["run", str(config), "--set", f"out={out}", "--stages", "probe"]) == 0
    records = sorted(str(p.relative_to(out)) for p in out.glob("*/*/*")
                     if p.name in ("_manifest.json", "_plan.parquet"))
    records += sorted(str(p.relative_to(out)) for p in out.glob("*/*/_commits/*.json"))
    assert {r.split("/")[0] for r in records} == {"videos", "captions", "manifest", "probe"}
    return out, config, records


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2**40) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)


def _paths(value, prefix=()):
    """Every key path into a JSON value (dict keys and list indices)."""
    found = [prefix] if prefix else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, inner in items:
        found += _paths(inner, (*prefix, key))
    return found


def _damaged_json(data: st.DataObject, document) -> bytes:
    """The document with one field removed or replaced by any JSON value, or something else entirely."""
    how = data.draw(st.sampled_from(["drop", "replace", "whole", "bytes"]), label="how")
    paths = _paths(document)
    if how == "bytes":
        return data.draw(st.binary(max_size=40), label="bytes")
    if how == "whole" or not paths:
        return json.dumps(data.draw(JSON, label="document")).encode()
    path = data.draw(st.sampled_from(paths), label="path")
    parent = document
    for key in path[:-1]:
        parent = parent[key]
    if how == "drop":
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(JSON, label="value")
    return json.dumps(document).encode()


def _damaged_plan(data: st.DataObject, plan: bytes) -> bytes:
    table = pq.read_table(pa.BufferReader(plan))
    copy = json.loads(table.schema.metadata[b"tvr.manifest"])
    how = data.draw(st.sampled_from(["copy", "columns", "bytes"]), label="plan damage")
    if how == "copy":
        text = _damaged_json(data, copy).decode("utf-8", "replace")
        return parquet_bytes(table.replace_schema_metadata(None), {"tvr.manifest": text})
    if how == "columns":
        n = table.num_rows
        columns = data.draw(st.fixed_dictionaries({}, optional={
            "item_id": st.sampled_from([table.column("item_id"), pa.array(range(n)), pa.array([None] * n, pa.string()),
                                        pa.array([f"x{i}" for i in range(n + 1)])]),
            "shard": st.sampled_from([table.column("shard"), pa.array([str(i) for i in range(n)]),
                                      pa.array([-1] * n, pa.int32()), pa.array([99] * n, pa.int64())]),
        }), label="columns")
        if not columns:
            columns = {"other": pa.array([1])}
        longest = max(len(c) for c in columns.values())
        columns = {k: c if len(c) == longest else pa.array([None] * longest, c.type) for k, c in columns.items()}
        return parquet_bytes(pa.table(columns), {"tvr.manifest": json.dumps(copy)})
    return plan[:data.draw(st.integers(0, len(plan) - 1), label="truncated at")]


def _tvr(*argv: str) -> tuple[int | str, str]:
    """main(argv): its exit status ("ray" when `tvr run` reached Ray) and the error lines it printed."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err), \
            mock.patch("pipeline.run.runner.ensure_ray", side_effect=ReachedRay):
        try:
            status = main(list(argv))
        except ReachedRay:
            status = "ray"
    errors = [line for line in err.getvalue().splitlines() if line.startswith("tvr ")]
    assert len(errors) <= 1 and "Traceback" not in err.getvalue(), err.getvalue()
    if errors:  # one line, naming the command
        assert status == 1 and errors[0].startswith(f"tvr {argv[0]}: error: "), errors
    elif status == 1:  # verify's findings, listed on stdout
        assert argv[0] == "verify"
    return status, err.getvalue()


@settings(max_examples=120, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_damaged_records_give_one_line_errors_and_repair_mends_them(finished, data):
    pristine, config, records = finished
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out"
        shutil.copytree(pristine, out)
        target = out / data.draw(st.sampled_from(records), label="file")
        original = target.read_bytes()
        if target.name == "_plan.parquet":
            target.write_bytes(_damaged_plan(data, original))
        else:
            target.write_bytes(_damaged_json(data, json.loads(original)))
        run = ("run", str(config), "--set", f"out={out}", "--stages", "probe")

        assert _tvr("status", str(out))[0] == 0
        assert _tvr("verify", str(out))[0] in (0, 1)
        assert _tvr(*run)[0] in (0, 1, "ray")
        status, printed = _tvr("verify", str(out), "--repair")
        assert status == 0, printed  # the repair leaves output that verifies
        status, printed = _tvr(*run)
        assert status in (0, "ray"), printed

"""Records that lie: a manifest that two datasets share, a `_manifest.json`, commit record or item
plan that is valid JSON (or Parquet) but lacks fields or has the wrong types, leftover staging.

Each is damaged output: `tvr run` stops with one line naming the file, `tvr status` marks it,
`tvr verify` names it and `tvr verify --repair` rebuilds or withdraws it so the next run
recomputes nothing that was committed and is still good.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from toy import TOY, ToyConfig, toy_inputs, toy_manifest

from pipeline.cli import main
from pipeline.flow import verify_outputs
from pipeline.run.runner import RunnerConfig, run_stage
from pipeline.store.dataset_manifest import read_dataset_manifest
from pipeline.store.storage import Store, parquet_bytes
from pipeline.store.version import DamagedOutputError, Version

RUNNER = RunnerConfig(rows_per_shard=3, progress=False)


# ---- the manifest's version depends on what it links ---------------------------------------------


def test_two_datasets_with_the_same_problems_keep_their_own_manifest(tmp_path):
    store = Store.open(str(tmp_path / "out"))
    first = toy_manifest(store, 3)  # no problems, as the second
    second = toy_manifest(store, 4)
    assert first.manifest.version != second.manifest.version
    record = first.manifest.manifest()
    assert (record["videos"], record["captions"]) == (first.videos.version, first.captions.version)
    reread = read_dataset_manifest(store, first.manifest.version, video_root=str(tmp_path))
    assert reread.videos.version == first.videos.version
    assert verify_outputs(store.root).ok


def test_provenance_moves_but_links_never_do(tmp_path):
    store = Store.open(str(tmp_path / "out"))
    first = toy_manifest(store, 3, root="/videos")
    moved = toy_manifest(store, 3, root="/moved")
    assert moved.manifest.version == first.manifest.version and moved.videos.version == first.videos.version
    assert Version(store, "videos", first.videos.version).manifest()["root"] == "/moved"
    with pytest.raises(ValueError, match="refusing to write .*videos is"):  # the writer's own check
        first.manifest.write_manifest({**first.manifest.manifest(), "videos": "0123456789ab"})


@pytest.mark.parametrize("edit", ["links", "identity"])
def test_a_manifest_pointing_elsewhere_is_damaged(tmp_path, edit, capsys):
    """What the old code did to a manifest whose version another dataset shared: links rewritten
    (with or without its identity) to the other dataset's versions."""
    store = Store.open(str(tmp_path / "out"))
    first = toy_manifest(store, 3)
    second = toy_manifest(store, 4)
    record = first.manifest.manifest()
    record["videos"] = second.videos.version
    if edit == "identity":
        record["identity"]["videos"] = second.videos.version
    store.write_json(record, first.manifest.manifest_path)
    path = store.path(first.manifest.manifest_path)
    problem = "videos is" if edit == "links" else "its identity gives version"
    with pytest.raises(DamagedOutputError, match=f"{path} is damaged \\({problem}"):
        toy_manifest(store, 3)
    with pytest.raises(DamagedOutputError, match=f"{path} is damaged"):
        read_dataset_manifest(store, first.manifest.version, video_root=str(tmp_path))
    capsys.readouterr()
    assert main(["verify", store.root]) == 1
    assert f"{path}: damaged ({problem}" in capsys.readouterr().out
    assert main(["verify", store.root, "--repair"]) == 0  # no plan to rebuild it from: removed
    again = toy_manifest(store, 3)  # and written again, under its own version, linking its own videos
    assert again.manifest.version == first.manifest.version
    assert again.manifest.manifest()["videos"] == first.videos.version


# ---- records that are valid JSON but not valid records -------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, ray_session):
    """A complete toy version of 10 items in 4 shards (two failures), copied by each test."""
    root = tmp_path_factory.mktemp("pristine") / "out"
    store = Store.open(str(root))
    return root, run_stage(store, TOY, ToyConfig(), toy_inputs(store, 10, bad={2, 7}), RUNNER).version


@pytest.fixture
def out(pristine, tmp_path):
    root, version = pristine
    shutil.copytree(root, tmp_path / "out")
    store = Store.open(str(tmp_path / "out"))
    return store, toy_inputs(store, 10, bad={2, 7}), Version(store, "toy", version)


def _edit_json(store: Store, path: str, edit) -> None:
    store.write_json(edit(json.loads(store.read_text(path))), path)


def _without(name: str):
    return lambda data: {k: v for k, v in data.items() if k != name}


def _file(index: int, **fields):
    """A record with `fields` changed in its files[index]."""
    return lambda r: {**r, "files": [{**f, **fields} if i == index else f for i, f in enumerate(r["files"])]}


def _edit_plan_copy(store: Store, version: Version, edit) -> None:
    table = pq.read_table(store.path(version.plan_path))
    copy = json.loads(table.schema.metadata[b"tvr.manifest"])
    copy = edit(copy)
    store.write_bytes(parquet_bytes(table.replace_schema_metadata(None), {"tvr.manifest": json.dumps(copy)}),
                      version.plan_path)


MANIFEST_DAMAGE = {
    "num_shards missing": (_without("num_shards"), "num_shards is missing"),
    "num_shards a string": (lambda m: {**m, "num_shards": "4"}, 'num_shards is a string "4", not a whole number'),
    "num_items negative": (lambda m: {**m, "num_items": -1}, "num_items is -1, below 0"),
    "complete a string": (lambda m: {**m, "complete": "yes"}, "complete is a string"),
    "rows missing": (_without("rows"), "complete, but rows is missing"),
    "identity edited": (lambda m: {**m, "identity": {**m["identity"], "config": {"factor": 3}}},
                        "its identity gives version"),
    "emptied": (lambda m: {"stage": None}, "stage is null, not a string"),
    "a list": (lambda m: [m], "a JSON list, not an object"),
}


@pytest.mark.parametrize("damage", sorted(MANIFEST_DAMAGE))
def test_a_manifest_with_missing_or_mistyped_fields_is_damaged_and_rebuilt(out, damage, capsys):
    store, inputs, version = out
    edit, problem = MANIFEST_DAMAGE[damage]
    _edit_json(store, version.manifest_path, edit)
    path = store.path(version.manifest_path)
    with pytest.raises(DamagedOutputError, match=re.escape(f"{path} is damaged ({problem}")):
        run_stage(store, TOY, ToyConfig(), inputs, RUNNER)
    _commands_name_it_then_repair(store, f"{path}: damaged ({problem}")
    rerun = run_stage(store, TOY, ToyConfig(), inputs, RUNNER)
    assert rerun.computed_items == 0 and (rerun.rows, rerun.failures) == (8, 2)  # rebuilt from the plan


def test_a_manifest_that_differs_from_its_plan_is_rebuilt_from_it(out, capsys):
    """Valid on its own (5 items in 2 shards of 3), but not what was planned."""
    store, inputs, version = out
    _edit_json(store, version.manifest_path, lambda m: {**m, "num_items": 5, "num_shards": 2, "rows": 3})
    _commands_name_it_then_repair(store, f"{store.path(version.manifest_path)}: differs from the copy in "
                                         f"{version.plan_path} on num_items, num_shards", status_shows=False)
    assert run_stage(store, TOY, ToyConfig(), inputs, RUNNER).computed_items == 0


RECORD_DAMAGE = {
    "files missing": (_without("files"), "files is not a list"),
    "rows a string": (lambda r: {**r, "rows": "3"}, "rows is a string"),
    "items disagree": (lambda r: {**r, "items": 9}, "9 items, but 3 rows and 0 failures"),
    "a file elsewhere": (_file(0, final="../../elsewhere.parquet"), "files[0] is '../../elsewhere.parquet', not"),
    "staged elsewhere": (_file(1, staged="/tmp/x"), "files[1] is staged at '/tmp/x', outside"),
    "sha256 a number": (_file(0, sha256=12), "files[0]: sha256 is a whole number 12, not a string"),
    "shard a boolean": (lambda r: {**r, "shard": True}, "shard is true, not a whole number"),
}


@pytest.mark.parametrize("damage", sorted(RECORD_DAMAGE))
def test_a_commit_record_with_missing_or_mistyped_fields_is_damaged_and_withdrawn(out, damage, capsys):
    store, inputs, version = out
    edit, problem = RECORD_DAMAGE[damage]
    _edit_json(store, version.record_path(1), edit)
    path = store.path(version.record_path(1))
    with pytest.raises(DamagedOutputError, match=re.escape(f"{path}: damaged commit record ({problem}")):
        run_stage(store, TOY, ToyConfig(), inputs, RUNNER)
    _commands_name_it_then_repair(store, f"{path}: damaged commit record ({problem}")
    rerun = run_stage(store, TOY, ToyConfig(), inputs, RUNNER)
    assert rerun.computed_items == 3 and (rerun.rows, rerun.failures) == (8, 2)  # only shard 1 again


PLAN_DAMAGE = {
    "copy lacks num_shards": (lambda s, v: _edit_plan_copy(s, v, _without("num_shards")),
                              "damaged item plan (its copy of the record: num_shards is missing)"),
    "shard a string": (lambda s, v: s.write_bytes(parquet_bytes(
        pa.table({"item_id": ["v-000"], "shard": ["0"]}), {"tvr.manifest": json.dumps(v.manifest())}), v.plan_path),
        "damaged item plan (item_id is string and shard string)"),
    "not Parquet": (lambda s, v: s.write_bytes(b"PAR1 nothing", v.plan_path), "damaged item plan ("),
}


@pytest.mark.parametrize("damage", sorted(PLAN_DAMAGE))
def test_a_damaged_plan_is_removed_and_the_next_run_writes_it_again(out, damage, capsys):
    store, inputs, version = out
    damage_it, problem = PLAN_DAMAGE[damage]
    damage_it(store, version)
    _commands_name_it_then_repair(store, f"{store.path(version.plan_path)}: {problem}", status_shows=False)
    assert not version.has_plan()
    rerun = run_stage(store, TOY, ToyConfig(), inputs, RUNNER)
    assert rerun.computed_items == 0 and version.has_plan()  # verified again by the autouse check


def _commands_name_it_then_repair(store: Store, finding: str, status_shows: bool = True) -> None:
    """status marks it (where it reads the file), verify names it in one line, repair mends it."""
    capsys = _Capture()
    with capsys:
        assert main(["status", store.root]) == 0
    assert ("DAMAGED" in capsys.out) is status_shows, capsys.out
    with capsys:
        assert main(["verify", store.root]) == 1
    assert finding in capsys.out, capsys.out
    assert all(line.startswith((store.root, "verify ")) for line in capsys.out.splitlines())  # one line each
    with capsys:
        assert main(["verify", store.root, "--repair"]) == 0, capsys.out
    assert "repaired: " in capsys.out


class _Capture:
    """stdout of a block, as text (the tests' own capsys is per test, these calls are several)."""

    def __enter__(self):
        import contextlib
        import io

        self._buffer = io.StringIO()
        self._redirect = contextlib.redirect_stdout(self._buffer)
        self._redirect.__enter__()

    def __exit__(self, *exc):
        self._redirect.__exit__(*exc)
        self.out = self._buffer.getvalue()


# ---- staging -------------------------------------------------------------------------------------


def test_the_manifest_tables_leave_no_staging_and_verify_finds_an_empty_attempt_folder(tmp_path, capsys):
    store = Store.open(str(tmp_path / "out"))
    outputs = toy_manifest(store, 3)
    for version in (outputs.videos, outputs.captions, outputs.manifest):
        assert not store.exists(version.path, "_staging"), version.path
    os.makedirs(store.path(outputs.videos.path, "_staging", "0123abcd"))  # a killed attempt's empty folder
    capsys.readouterr()
    assert main(["verify", store.root]) == 1
    assert f"{store.root}/{outputs.videos.path}/_staging: not committed" in capsys.readouterr().out
    assert main(["verify", store.root, "--repair"]) == 0
    assert not store.exists(outputs.videos.path, "_staging")


def test_a_missing_plan_is_named_as_missing(tmp_path):
    store = Store.open(str(tmp_path / "out"))
    with pytest.raises(DamagedOutputError, match=r"_plan.parquet: damaged item plan \(it is missing\); "):
        Version(store, "toy", "0123456789ab").read_plan()

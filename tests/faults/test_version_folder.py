"""The version folder on its own: what `Version` commits, what it shows, and which records it refuses.

Fast and Ray-free: a `Store` on tmp_path, small pyarrow tables for shards and the real `Version`
driven the way the runner drives it (stage, commit, recover, withdraw), so that every promise of
`pipeline.store.version` is checked without running a stage.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline import __version__
from pipeline.store.lease import LeaseHeldError
from pipeline.store.schema import FAILURES, SCHEMA_VERSION
from pipeline.store.storage import StorageError, Store, parquet_bytes
from pipeline.store.version import (
    DamagedOutputError,
    Version,
    _field_problem,
    complete_version,
    content_hash,
    failure_versions,
    latest,
    latest_path,
    latest_pointer,
    looks_like_stage,
    now,
    point_latest,
    provenance_metadata,
    shard_name,
    stage_folders,
    version_of,
    versions,
)

ROWS = pa.schema([("item_id", pa.string()), ("value", pa.int64())])
IDENTITY = {"stage": "toy", "config": {"factor": 2}}
VERSION = "21e418602313"  # version_of(IDENTITY), pinned: a changed hash would orphan every stored version
CREATED = "2026-01-01T00:00:00+00:00"
SHA = "0" * 64


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.open(str(tmp_path / "out"))


@pytest.fixture
def version(store) -> Version:
    return Version(store, "toy", VERSION)


def _identity(n: int) -> dict:
    return {"stage": "toy", "config": {"factor": n}}


def _record(version: Version, identity: dict | None = None, num_items: int = 5, rows_per_shard: int = 2,
            **fields) -> dict:
    """A valid `_manifest.json` of `version` (not complete), with `fields` changed."""
    record = {"stage": version.stage, "version": version.version, "identity": identity or IDENTITY,
              "key": "item_id", "created": CREATED, "num_items": num_items, "rows_per_shard": rows_per_shard,
              "num_shards": max(1, -(-num_items // rows_per_shard)), "complete": False}
    return {**record, **fields}


def _done(record: dict, rows: int, failures: int, finished: str = "2026-01-02T00:00:00+00:00") -> dict:
    return {**record, "complete": True, "finished": finished, "rows": rows, "failures": failures}


def _rows(ids: list[str]) -> pa.Table:
    return pa.table({"item_id": ids, "value": [int(i.split("-")[1]) * 2 for i in ids]}, schema=ROWS)


def _failures(ids: list[str]) -> pa.Table:
    n = len(ids)
    return pa.table({"item_id": ids, "stage": ["toy"] * n, "reason": ["corrupt"] * n,
                     "message": [f"{i} is bad" for i in ids]}, schema=FAILURES)


def _commit(version: Version, shard: int, ok: list[str], bad: list[str] = (), seconds: float = 0.0) -> dict:
    files = version.stage_shard(shard, _rows(ok), _failures(list(bad)), {"stage": "toy"})
    return version.commit_shard(shard, files, seconds)


def _staged_record(version: Version, shard: int, ok: list[str], bad: list[str] = ()) -> dict:
    """The record a driver killed between commit and publish leaves: written, its files still staged."""
    files = version.stage_shard(shard, _rows(ok), _failures(list(bad)), {})
    record = {"shard": shard, "items": len(ok) + len(bad), "rows": len(ok), "failures": len(bad), "files": files,
              "seconds": 0.0, "committed": CREATED}
    version.store.write_json(record, version.record_path(shard))
    return record


def _complete_version(store: Store, n: int, finished: str) -> Version:
    version = Version(store, "toy", version_of(_identity(n)))
    _commit(version, 0, ["v-000"])
    version.write_manifest(_done(_record(version, _identity(n), num_items=1), 1, 0, finished))
    return version


def _hint(store: Store, what: str = "withdraws it so the next run recomputes it") -> str:
    return f"`tvr verify {store.root} --stage toy --repair` {what}"


def _files(store: Store, folder: str) -> list[str]:
    return store.walk_files(folder)


# ---- identity: content_hash and version_of --------------------------------------------------------


def test_content_hash_is_pinned_and_ignores_key_order_and_key_types():
    assert content_hash({"b": [1, 2], "a": {1: "x"}}) == "ccaca516006b"
    assert content_hash({"a": {"1": "x"}, "b": [1, 2]}) == "ccaca516006b"  # as the JSON record reads back
    assert content_hash([]) == "4f53cda18c2b"
    assert content_hash("x", 64) == "ba2df4903a2c14e86dc3bcca58911b44ac1d2514b7227bf6eb08cfb978f55a1b"
    assert content_hash("x", 5) == "ba2df"


def test_content_hash_of_values_json_cannot_hold_is_their_text():
    class Path:
        def __str__(self):
            return "/videos"

    assert content_hash({"root": Path()}) == content_hash({"root": "/videos"})


def test_a_version_is_the_hash_of_its_whole_identity():
    assert version_of(IDENTITY) == VERSION == content_hash(IDENTITY)
    assert version_of(_identity(3)) != VERSION


def test_a_table_versioned_by_its_rows_keeps_its_row_hash_prefix():
    rows_only = {"stage": "videos", "schema_version": 2, "content_sha256": "abcdef0123456789" * 4}
    assert version_of(rows_only) == "abcdef012345"
    assert version_of({**rows_only, "content_sha256": 7}) == content_hash({**rows_only, "content_sha256": 7})
    more = {**rows_only, "root": "/videos"}
    assert version_of(more) == content_hash(more)
    fewer = {"stage": "videos", "content_sha256": "abcdef0123456789"}
    assert version_of(fewer) == content_hash(fewer)


def test_now_is_utc_to_the_second():
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", now())


def test_shard_names_sort_as_numbers_up_to_100000_shards():
    assert shard_name(7) == "part-00007.parquet"
    assert shard_name(123456) == "part-123456.parquet"


def test_provenance_metadata_names_schema_package_stage_identity_and_extras():
    meta = provenance_metadata({"stage": "toy", "b": 1, "a": "x"}, {"model": "clip"})
    assert meta == {"tvr.schema_version": str(SCHEMA_VERSION), "tvr.package_version": __version__,
                    "tvr.stage": "toy", "tvr.identity": '{"a": "x", "b": 1, "stage": "toy"}', "tvr.model": "clip"}
    with_path = provenance_metadata({"stage": "toy", "root": PurePosixPath("/videos")}, {})
    assert with_path["tvr.identity"] == '{"root": "/videos", "stage": "toy"}'  # as its JSON record reads


# ---- where things lie ---------------------------------------------------------------------------


def test_paths_of_a_version(store, version):
    assert version.path == f"toy/{VERSION}"
    assert version.failures_path == f"failures/toy/{VERSION}"
    assert version.manifest_path == f"toy/{VERSION}/_manifest.json"
    assert version.plan_path == f"toy/{VERSION}/_plan.parquet"
    assert version.record_path(3) == f"toy/{VERSION}/_commits/part-00003.json"
    assert latest_path("toy") == "toy/LATEST"
    assert version.repair_hint() == _hint(store)


def test_versions_are_equal_by_stage_and_version_not_by_store_or_root(store, tmp_path):
    elsewhere = Store.open(str(tmp_path / "elsewhere"))
    moved = Version(elsewhere, "toy", VERSION, root="/videos")
    assert moved == Version(store, "toy", VERSION) and hash(moved) == hash(Version(store, "toy", VERSION))
    assert moved != Version(store, "toy", "0123456789ab") and moved != Version(store, "tags", VERSION)
    rooted = Version(store, "toy", VERSION).with_root("/data")
    assert rooted.root == "/data" and rooted.store is store and rooted.version == VERSION


def test_the_lease_is_the_versions_lease_file(store, version):
    lease = version.lease(ttl_seconds=30, wait_seconds=0)
    assert (lease.path, lease.what, lease.ttl, lease.wait) == (f"toy/{VERSION}/_lease.json", f"toy {VERSION}", 30, 0)
    with lease:
        assert json.loads(store.read_text(lease.path))["ttl_seconds"] == 30
        with pytest.raises(LeaseHeldError, match=f"^toy {VERSION} is being written by"):
            version.lease().acquire()
    assert version.stray_files({}) == []  # released: the file is gone
    default = version.lease()
    assert (default.ttl, default.wait) == (60.0, 0.0)
    assert version.lease(wait_seconds=0.5).wait == 0.5


# ---- the record: _manifest.json -----------------------------------------------------------------


def test_a_written_record_reads_back_and_completes_the_version(store, version):
    assert version.manifest() is None and not version.is_complete()
    record = _record(version)
    version.write_manifest(record)
    assert version.manifest() == record and not version.is_complete()
    assert json.loads(store.read_text(version.manifest_path)) == record
    version.write_manifest(_done(record, 4, 1))
    assert version.is_complete()


def test_the_writer_refuses_a_value_json_cannot_hold_naming_its_type(store, version):
    with pytest.raises(ValueError, match=re.escape('root is PurePosixPath "/videos", not a string')):
        version.write_manifest(_record(version, root=PurePosixPath("/videos")))


def test_the_writer_refuses_a_record_it_would_not_read(store, version):
    with pytest.raises(ValueError, match=re.escape(f"refusing to write toy/{VERSION}/_manifest.json: "
                                                   "num_items is -1, below 0")):
        version.write_manifest(_record(version, num_items=-1, num_shards=1))
    assert not store.exists(version.manifest_path)


@pytest.mark.parametrize("data, problem", [
    (b"\xff\xfe", "'utf-8' codec can't decode byte 0xff"),
    (b'{"stage": ', "Expecting value: line 1 column 11 (char 10)"),
])
def test_an_unreadable_record_is_damaged_naming_the_file(store, version, data, problem):
    store.write_bytes(data, version.manifest_path)
    with pytest.raises(DamagedOutputError) as caught:
        version.manifest()
    assert str(caught.value).startswith(f"{store.path(version.manifest_path)} is damaged ({problem}")
    assert str(caught.value).endswith(f"); {_hint(store, 'rebuilds it')}")
    assert caught.value.problem.startswith(problem)


def test_a_record_that_lies_is_damaged_with_its_problem_on_one_line(store, version):
    store.write_json(_record(version, stage="to\ny"), version.manifest_path)
    with pytest.raises(DamagedOutputError) as caught:
        version.manifest()
    problem = f"it is the record of to y {VERSION}, not of toy {VERSION}"
    assert caught.value.problem == problem
    assert str(caught.value) == (f"{store.path(version.manifest_path)} is damaged ({problem}); "
                                 f"{_hint(store, 'rebuilds it')}")
    with pytest.raises(DamagedOutputError):
        version.is_complete()


def _without(record: dict, name: str) -> dict:
    return {k: v for k, v in record.items() if k != name}


RECORD_FIELDS = [  # name, a wrong value, how the problem shows it, what it should be, required
    ("stage", None, "null", "a string", True),
    ("version", 12, "a whole number 12", "a string", True),
    ("identity", [], "a list []", "an object", True),
    ("created", 0, "a whole number 0", "a string", True),
    ("num_items", "5", 'a string "5"', "a whole number", True),
    ("rows_per_shard", 2.0, "a number 2.0", "a whole number", True),
    ("num_shards", False, "false", "a whole number", True),
    ("complete", 1, "a whole number 1", "true/false", True),
    ("finished", 1, "a whole number 1", "a string", False),
    ("rows", None, "null", "a whole number", False),
    ("failures", "0", 'a string "0"', "a whole number", False),
    ("root", ["/videos"], 'a list ["/videos"]', "a string", False),
    ("source", "x.json", 'a string "x.json"', "an object", False),
]


@pytest.mark.parametrize("name, wrong, shown, wanted, required", RECORD_FIELDS, ids=[f[0] for f in RECORD_FIELDS])
def test_every_record_field_is_checked_for_presence_and_type(version, name, wrong, shown, wanted, required):
    record = _record(version)
    if name in ("finished", "rows", "failures"):  # complete records need them; unfinished ones may hold them
        record = _done(record, 4, 1)
    assert version.manifest_problem({**record, name: wrong}) == f"{name} is {shown}, not {wanted}"
    missing = version.manifest_problem(_without(record, name))
    if required:
        assert missing == f"{name} is missing"
    elif name in ("finished", "rows", "failures"):
        assert missing == f"complete, but {name} is missing"
    else:
        assert missing is None


def test_the_key_is_a_column_name_or_null(version):
    assert version.manifest_problem(_record(version, key=None)) is None
    assert version.manifest_problem(_record(version, key=list(range(30)))) == (
        "key is a list [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 1, not a string or null")
    assert version.manifest_problem(_record(version, key=True)) == "key is true, not a string or null"


@pytest.mark.parametrize("fields, problem", [
    ({"num_items": -1, "num_shards": 1}, "num_items is -1, below 0"),
    ({"rows_per_shard": 0}, "rows_per_shard is 0, below 1"),
    ({"num_shards": 0}, "num_shards is 0, below 1"),
    ({"num_items": True}, "num_items is true, not a whole number"),
])
def test_counts_below_their_minimum_are_refused(version, fields, problem):
    assert version.manifest_problem({**_record(version), **fields}) == problem


def test_the_least_counts_are_valid(version):
    assert version.manifest_problem(_record(version, num_items=0, rows_per_shard=1)) is None
    assert version.manifest_problem(_done(_record(version, num_items=0, rows_per_shard=1), 0, 0)) is None
    assert version.manifest_problem(_record(version, num_items=1, rows_per_shard=1)) is None


def test_a_record_that_is_no_object_is_refused(version):
    assert version.manifest_problem([1]) == "a JSON list, not an object"
    assert version.manifest_problem(None) == "a JSON NoneType, not an object"


def test_a_record_of_another_version_or_stage_is_refused(store, version):
    other = "0123456789ab"
    assert version.manifest_problem({**_record(version), "version": other}) == (
        f"it is the record of toy {other}, not of toy {VERSION}")
    assert version.manifest_problem(_record(version, stage="tags")) == (
        f"it is the record of tags {VERSION}, not of toy {VERSION}")
    tags = Version(store, "tags", VERSION)
    assert tags.manifest_problem(_record(tags)) == "its identity names stage 'toy'"
    assert version.manifest_problem(_record(version, identity={"config": 1})) == "its identity names stage None"


def test_an_edited_identity_gives_another_version(version):
    problem = version.manifest_problem(_record(version, identity=_identity(3)))
    assert problem == f"its identity gives version {version_of(_identity(3))}, not {VERSION} (edited, or moved)"


def test_fields_the_identity_holds_must_agree_with_it(store):
    identity = {"stage": "toy", "videos": "aaaaaaaaaaaa", "captions": "bbbbbbbbbbbb"}
    version = Version(store, "toy", version_of(identity))
    record = _record(version, identity, videos="aaaaaaaaaaaa", captions="bbbbbbbbbbbb")
    assert version.manifest_problem(record) is None
    assert version.manifest_problem({**record, "videos": "cccccccccccc"}) == (
        "videos is 'cccccccccccc' but its identity says 'aaaaaaaaaaaa'")
    both = {**record, "videos": "cccccccccccc", "captions": "dddddddddddd"}  # the first by name
    assert version.manifest_problem(both) == "captions is 'dddddddddddd' but its identity says 'bbbbbbbbbbbb'"


@pytest.mark.parametrize("items, per_shard, shards, valid", [
    (5, 2, 3, True), (5, 2, 2, False), (4, 2, 2, True), (4, 2, 3, False), (0, 3, 1, True), (1, 3, 1, True),
    (6, 3, 1, False), (7, 1, 7, True),
])
def test_the_shard_count_follows_items_and_shard_size(version, items, per_shard, shards, valid):
    problem = version.manifest_problem(_record(version, num_items=items, rows_per_shard=per_shard, num_shards=shards))
    if valid:
        assert problem is None
    else:
        right = max(1, -(-items // per_shard))
        assert problem == (f"num_shards is {shards}, but {items} items in shards of {per_shard} make {right}")


def test_a_complete_record_accounts_for_every_item(version):
    record = _record(version)
    assert version.manifest_problem(_done(record, 4, 1)) is None
    assert version.manifest_problem(_done(record, 4, 0)) == "complete with 4 rows and 0 failures, but 5 items"
    assert version.manifest_problem(_done(record, 5, 1)) == "complete with 5 rows and 1 failures, but 5 items"
    assert version.manifest_problem({**record, "rows": 1, "failures": 0}) is None  # not complete: counts so far


def test_field_problem_names_types_outside_json_by_their_python_name():
    assert _field_problem({"n": b"x"}, "n", bytes) is None
    assert _field_problem({"n": 3}, "n", bytes) == "n is a whole number 3, not bytes"
    assert _field_problem({"n": [1]}, "n", (dict, list)) is None
    assert _field_problem({}, "n", int) == "n is missing"
    assert _field_problem({}, "n", int, 0, False) is None
    assert _field_problem({"n": 0}, "n", int, 0) is None
    assert _field_problem({"n": -1}, "n", int, 0) == "n is -1, below 0"
    assert _field_problem({"n": -1}, "n", int) is None
    assert _field_problem({"n": True}, "n", (bool, int)) is None
    assert _field_problem({"n": True}, "n", bool) is None
    assert _field_problem({"n": {"a": 1}}, "n", str) == 'n is an object {"a": 1}, not a string'


# ---- LATEST ---------------------------------------------------------------------------------------


def test_latest_points_at_the_newest_complete_version(store):
    assert latest(store, "toy") is None and latest_pointer(store, "toy") is None
    old = _complete_version(store, 1, "2026-01-02T00:00:00+00:00")
    old.mark_latest()
    assert latest(store, "toy") == old and store.read_text("toy/LATEST") == f"{old.version}\n"
    new = _complete_version(store, 2, "2026-01-03T00:00:00+00:00")
    new.mark_latest()
    assert latest(store, "toy") == new
    old.mark_latest()  # rerunning the old config computes nothing: LATEST stays
    assert latest_pointer(store, "toy") == new.version
    new.mark_latest()
    assert latest_pointer(store, "toy") == new.version


def test_a_version_finished_at_the_same_second_takes_latest(store):
    first = _complete_version(store, 1, "2026-01-02T00:00:00+00:00")
    first.mark_latest()
    second = _complete_version(store, 2, "2026-01-02T00:00:00+00:00")
    second.mark_latest()
    assert latest_pointer(store, "toy") == second.version


def test_latest_moves_off_a_version_that_is_not_complete(store):
    complete = _complete_version(store, 1, "2026-01-02T00:00:00+00:00")
    unfinished = Version(store, "toy", version_of(_identity(2)))
    unfinished.write_manifest(_record(unfinished, _identity(2)))
    point_latest(store, "toy", unfinished.version)
    assert latest(store, "toy") is None  # LATEST names it, but it is no complete version
    complete.mark_latest()
    assert latest(store, "toy") == complete


@pytest.mark.parametrize("pointed", ["damaged", "no record", "unfinished"])
def test_a_version_without_a_finished_record_takes_latest_from_one_that_lost_it(store, pointed):
    other = Version(store, "toy", version_of(_identity(2)))
    if pointed == "damaged":
        store.write_bytes(b"{", other.manifest_path)
    elif pointed == "unfinished":
        other.write_manifest(_record(other, _identity(2), finished="2099-01-01T00:00:00+00:00"))
    point_latest(store, "toy", other.version)
    ours = _complete_version(store, 1, "2026-01-02T00:00:00+00:00")
    ours.mark_latest()
    assert latest_pointer(store, "toy") == ours.version


def test_an_unfinished_version_does_not_take_latest_from_a_complete_one(store):
    complete = _complete_version(store, 1, "2026-01-02T00:00:00+00:00")
    complete.mark_latest()
    unfinished = Version(store, "toy", version_of(_identity(2)))
    unfinished.write_manifest(_record(unfinished, _identity(2)))
    unfinished.mark_latest()
    assert latest_pointer(store, "toy") == complete.version
    Version(store, "toy", version_of(_identity(3))).mark_latest()  # no record at all
    assert latest_pointer(store, "toy") == complete.version


def test_point_latest_writes_removes_and_reads_back_stripped(store):
    store.write_text("x", "toy/aaa/part-00000.parquet")
    point_latest(store, "toy", "abc")
    assert store.read_text("toy/LATEST") == "abc\n" and latest_pointer(store, "toy") == "abc"
    store.write_text("  abc \n\n", "toy/LATEST")
    assert latest_pointer(store, "toy") == "abc"
    point_latest(store, "toy", None)
    assert not store.exists("toy/LATEST") and latest_pointer(store, "toy") is None
    assert store.walk_files("") == ["toy/aaa/part-00000.parquet"]  # LATEST alone
    point_latest(store, "toy", None)  # nothing there is fine


def test_complete_version_names_latest_or_a_complete_version(store):
    assert complete_version(store, "toy") is None
    done = _complete_version(store, 1, "2026-01-02T00:00:00+00:00")
    assert complete_version(store, "toy") is None  # not marked latest yet
    assert complete_version(store, "toy", done.version) == done
    done.mark_latest()
    assert complete_version(store, "toy") == done
    unfinished = Version(store, "toy", version_of(_identity(2)))
    unfinished.write_manifest(_record(unfinished, _identity(2)))
    assert complete_version(store, "toy", unfinished.version) is None
    assert complete_version(store, "toy", "0123456789ab") is None


# ---- the versions of a stage --------------------------------------------------------------------


def test_versions_lists_version_folders_by_name(store):
    for folder in ("toy/bbb", "toy/aaa", "toy/_scratch", "toy/.hidden", "failures/toy/ccc", "failures/toy/aaa"):
        store.write_text("x", folder, "file")
    point_latest(store, "toy", "aaa")
    assert [v.version for v in versions(store, "toy")] == ["aaa", "bbb"]
    assert all(v.stage == "toy" and v.store is store for v in versions(store, "toy"))
    assert failure_versions(store, "toy") == [Version(store, "toy", "aaa"), Version(store, "toy", "ccc")]
    assert all(v.store is store for v in failure_versions(store, "toy"))
    assert failure_versions(store, "tags") == [] and versions(store, "tags") == []


def test_stage_folders_leave_out_failures_and_hidden_folders(store):
    for folder in ("toy", "tags", "failures", "_tmp", ".cache"):
        store.write_text("x", folder, "file")
    store.write_text("x", "README")
    assert stage_folders(store) == ["tags", "toy"]


def test_a_stage_folder_has_latest_a_record_or_commits(store):
    point_latest(store, "one", "aaa")
    store.write_text("{}", "two/aaa/_manifest.json")
    store.write_text("{}", "three/aaa/_commits/part-00000.json")
    store.write_text("x", "four/aaa/part-00000.parquet")
    store.write_text("{}", "four/_aaa/_manifest.json")
    assert [looks_like_stage(store, s) for s in ("one", "two", "three", "four", "five")] == [
        True, True, True, False, False]


# ---- the plan -----------------------------------------------------------------------------------


def test_the_plan_assigns_items_to_shards_in_order_and_carries_the_record(store, version):
    record = _record(version)
    assert not version.has_plan()
    version.write_plan(pa.array([10, 11, 12, 13, 14]), 2, record)
    assert version.has_plan()
    table, copy = version.read_plan()
    assert table.to_pydict() == {"item_id": ["10", "11", "12", "13", "14"], "shard": [0, 0, 1, 1, 2]}
    assert table.schema.field("shard").type == pa.int32() and copy == record
    raw = pq.read_schema(store.path(version.plan_path)).metadata[b"tvr.manifest"]
    assert raw == json.dumps(record, sort_keys=True).encode()


def test_an_empty_plan_is_valid(version):
    record = _record(version, num_items=0)
    version.write_plan(pa.array([], pa.string()), 2, record)
    table, copy = version.read_plan()
    assert table.num_rows == 0 and copy == record


def _plan(store: Store, version: Version, columns: dict, metadata: dict | None) -> None:
    store.write_bytes(parquet_bytes(pa.table(columns), metadata), version.plan_path)


@pytest.mark.parametrize("damage, problem", [
    ("missing", "it is missing"),
    ("not parquet", "Parquet magic bytes not found"),
    ("no metadata", "it carries no copy of the record"),
    ("no record copy", "it carries no copy of the record"),
    ("copy not json", "Expecting value: line 1 column 1 (char 0)"),
    ("copy not utf-8", "'utf-8' codec can't decode byte 0xff"),
])
def test_an_unreadable_plan_is_damaged_naming_the_file(store, version, damage, problem):
    ids = {"item_id": ["a"], "shard": pa.array([0], pa.int32())}
    if damage == "not parquet":
        store.write_bytes(b"PAR1 nothing", version.plan_path)
    elif damage == "no metadata":
        _plan(store, version, ids, None)
    elif damage == "no record copy":
        _plan(store, version, ids, {"other": "x"})
    elif damage == "copy not json":
        _plan(store, version, ids, {"tvr.manifest": "nothing"})
    elif damage == "copy not utf-8":
        table = pa.table(ids).replace_schema_metadata({b"tvr.manifest": b'"\xff"'})
        store.write_bytes(parquet_bytes(table), version.plan_path)
    with pytest.raises(DamagedOutputError) as caught:
        version.read_plan()
    path = store.path(version.plan_path)
    assert str(caught.value).startswith(f"{path}: damaged item plan (")
    assert problem in str(caught.value) and str(caught.value).endswith(f"); {_hint(store)}")
    assert caught.value.problem.startswith("damaged item plan (") and problem in caught.value.problem
    if damage in ("missing", "no metadata", "no record copy"):  # our words, whole
        assert caught.value.problem == f"damaged item plan ({problem})"


def test_a_plan_whose_record_copy_lies_is_damaged(store, version):
    ids = {"item_id": ["a"], "shard": pa.array([0], pa.int32())}
    _plan(store, version, ids, {"tvr.manifest": json.dumps(_without(_record(version, num_items=1), "num_shards"))})
    with pytest.raises(DamagedOutputError) as caught:
        version.read_plan()
    problem = "damaged item plan (its copy of the record: num_shards is missing)"
    assert caught.value.problem == problem
    assert str(caught.value) == f"{store.path(version.plan_path)}: {problem}; {_hint(store)}"
    _plan(store, version, ids, {"tvr.manifest": json.dumps(_record(version, num_items=1, stage="to\ny"))})
    with pytest.raises(DamagedOutputError) as caught:
        version.read_plan()
    assert caught.value.problem == (f"damaged item plan (its copy of the record: it is the record of to y {VERSION}, "
                                    f"not of toy {VERSION})")


I32 = pa.int32()


@pytest.mark.parametrize("columns, problem", [
    ({"shard": pa.array([0] * 5, I32), "item_id": list("abcde")},
     "columns ['shard', 'item_id'], expected ['item_id', 'shard']"),
    ({"item_id": list("abcde")}, "columns ['item_id'], expected ['item_id', 'shard']"),
    ({"item_id": list("abcde"), "shard": pa.array([0] * 5, I32), "x": [1] * 5},
     "columns ['item_id', 'shard', 'x'], expected ['item_id', 'shard']"),
    ({"item_id": [1, 2, 3, 4, 5], "shard": pa.array([0] * 5, I32)}, "item_id is int64 and shard int32"),
    ({"item_id": list("abcde"), "shard": list("00000")}, "item_id is string and shard string"),
    ({"item_id": list("abcd") + [None], "shard": pa.array([0] * 5, I32)}, "it has empty item ids or shards"),
    ({"item_id": list("abcde"), "shard": pa.array([0, 0, 1, 1, None], I32)}, "it has empty item ids or shards"),
    ({"item_id": list("abcd"), "shard": pa.array([0, 0, 1, 1], I32)}, "it plans 4 items, its record 5"),
    ({"item_id": list("abcdef"), "shard": pa.array([0, 0, 1, 1, 2, 2], I32)}, "it plans 6 items, its record 5"),
    ({"item_id": list("abcde"), "shard": pa.array([-1, 0, 1, 1, 2], I32)}, "shards -1..2, outside the 3 planned"),
    ({"item_id": list("abcde"), "shard": pa.array([0, 0, 1, 1, 3], I32)}, "shards 0..3, outside the 3 planned"),
])
def test_a_plan_whose_columns_disagree_with_its_record_is_damaged(store, version, columns, problem):
    _plan(store, version, columns, {"tvr.manifest": json.dumps(_record(version))})
    with pytest.raises(DamagedOutputError) as caught:
        version.read_plan()
    assert caught.value.problem == f"damaged item plan ({problem})"


def test_a_plan_may_use_any_integer_type_and_leave_shards_empty(store, version):
    _plan(store, version, {"item_id": list("abcde"), "shard": pa.array([0, 0, 0, 2, 2], pa.int64())},
          {"tvr.manifest": json.dumps(_record(version))})
    table, _ = version.read_plan()
    assert table.column("shard").to_pylist() == [0, 0, 0, 2, 2]


# ---- committing shards --------------------------------------------------------------------------


def test_staged_parts_are_invisible_until_committed(store, version):
    files = version.stage_shard(3, _rows(["v-006", "v-007"]), _failures(["v-008"]), {"stage": "toy"})
    staging = files[0]["staged"].rpartition("/")[0]
    assert re.fullmatch(f"toy/{VERSION}/_staging/[0-9a-f]{{12}}", staging)
    assert [f["staged"] for f in files] == [f"{staging}/part-00003.parquet", f"{staging}/failures-part-00003.parquet"]
    assert [f["final"] for f in files] == [f"toy/{VERSION}/part-00003.parquet",
                                           f"failures/toy/{VERSION}/part-00003.parquet"]
    for file, rows in zip(files, (2, 1)):
        assert file["rows"] == rows and file["bytes"] == store.size(file["staged"])
        assert file["sha256"] == store.sha256(file["staged"])
        assert not store.exists(file["final"])
    for file in files:  # the provenance goes into the failures' part too
        assert pq.read_schema(store.path(file["staged"])).metadata[b"stage"] == b"toy"
    assert version.committed_paths() == [] and version.commits() == {}
    with pytest.raises(ValueError, match=f"^toy/{VERSION} has no committed parts$"):
        version.table()
    assert version.failures().num_rows == 0 and version.failures().schema.names == FAILURES.names
    assert version.failures(columns=["reason"]).schema.names == ["reason"]
    assert version.stage_shard(3, _rows([]), _failures([]), {})[0]["staged"].rpartition("/")[0] != staging


def test_a_commit_writes_the_record_then_publishes_its_files(store, version):
    record = _commit(version, 1, ["v-002", "v-003"], ["v-004"], seconds=1.23456)
    assert {k: record[k] for k in ("shard", "items", "rows", "failures", "seconds")} == {
        "shard": 1, "items": 3, "rows": 2, "failures": 1, "seconds": 1.235}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", record["committed"])
    assert store.read_json(version.record_path(1)) == record == version.read_record(1)
    for file in record["files"]:
        assert store.size(file["final"]) == file["bytes"] and not store.exists(file["staged"])
    assert version.table().to_pydict() == {"item_id": ["v-002", "v-003"], "value": [4, 6]}
    assert version.failures().column("item_id").to_pylist() == ["v-004"]
    assert version.commits() == {1: record}
    files = version.stage_shard(2, _rows(["v-005"]), _failures([]), {})
    assert version.commit_shard(2, files)["seconds"] == 0.0  # no time given, none recorded


def test_exactly_the_committed_shards_are_visible(store, version):
    _commit(version, 2, ["v-004"], ["v-005"])
    _commit(version, 0, ["v-000", "v-001"])
    version.stage_shard(1, _rows(["v-002", "v-003"]), _failures([]), {})  # staged, never committed
    store.write_bytes(parquet_bytes(_rows(["v-099"])), version.path, "part-00009.parquet")  # no record
    assert version.committed_paths() == [f"toy/{VERSION}/part-00000.parquet", f"toy/{VERSION}/part-00002.parquet"]
    assert version.committed_paths(failures=True) == [f"failures/toy/{VERSION}/part-00000.parquet",
                                                      f"failures/toy/{VERSION}/part-00002.parquet"]
    assert sorted(version.table().column("item_id").to_pylist()) == ["v-000", "v-001", "v-004"]
    assert version.table(columns=["value"]).schema.names == ["value"]
    assert version.failures().column("item_id").to_pylist() == ["v-005"]
    assert version.read_part(version.committed_paths()[1], columns=["item_id"]).to_pydict() == {"item_id": ["v-004"]}


def test_locations_say_which_part_and_row_hold_each_key(version):
    keys, paths = version.locations("item_id")
    assert keys.num_rows == 0 and keys.schema == pa.schema(
        [("item_id", pa.string()), ("part", pa.int32()), ("row", pa.int32())]) and paths == []
    _commit(version, 1, ["v-002", "v-003"])
    _commit(version, 0, ["v-000"], ["v-001"])
    keys, paths = version.locations("item_id")
    assert paths == version.committed_paths()
    assert keys.to_pydict() == {"item_id": ["v-000", "v-002", "v-003"], "part": [0, 1, 1], "row": [0, 0, 1]}
    assert keys.schema.field("part").type == pa.int32() and keys.schema.field("row").type == pa.int32()


def test_part_rows_and_schema_read_only_the_footer(store, version):
    record = _commit(version, 0, ["v-000", "v-001"])
    assert version.part_rows(record["files"][0]["final"]) == 2
    assert version.part_schema(record["files"][0]["final"]).names == ["item_id", "value"]
    store.write_bytes(b"not parquet", "toy/junk.parquet")
    assert version.part_rows("toy/junk.parquet") is None and version.part_rows("toy/none.parquet") is None


def test_holds_files_and_delete_take_the_failures_too(store, version):
    assert not version.holds_files()
    _commit(version, 0, ["v-000"], ["v-001"])
    assert version.holds_files()
    other = _complete_version(store, 3, CREATED)
    version.delete()
    assert not store.exists(version.path) and not store.exists(version.failures_path)
    assert not version.holds_files() and other.is_complete()


# ---- commit records -----------------------------------------------------------------------------


def test_record_names_are_five_or_more_digit_parts(store, version):
    for name in ("part-00001.json", "part-123456.json", "part-0002.json", "xpart-00003.json", "part-00004.json.bak",
                 ".tmp-1234abcd-part-00005.json", "part-00006.jsonx"):
        store.write_text("{}", version.path, "_commits", name)
    assert version.record_names() == {1: "part-00001.json", 123456: "part-123456.json"}


def test_an_unreadable_commit_record_is_damaged_naming_the_file(store, version):
    store.write_bytes(b"\xff", version.record_path(2))
    with pytest.raises(DamagedOutputError) as caught:
        version.commits()
    problem = "damaged commit record ('utf-8' codec can't decode byte 0xff in position 0: invalid start byte)"
    assert caught.value.problem == problem
    assert str(caught.value) == f"{store.path(version.record_path(2))}: {problem}; {_hint(store)}"
    store.write_bytes(b"[1,", version.record_path(2))
    with pytest.raises(DamagedOutputError, match=re.escape("damaged commit record (Expecting value: line 1")):
        version.read_record(2)


def test_a_commit_record_that_lies_is_damaged_naming_the_file(store, version):
    record = _commit(version, 2, ["v-004"])
    store.write_json({**record, "items": 9}, version.record_path(2))
    with pytest.raises(DamagedOutputError) as caught:
        version.read_record(2)
    problem = "damaged commit record (9 items, but 1 rows and 0 failures)"
    assert caught.value.problem == problem
    assert str(caught.value) == f"{store.path(version.record_path(2))}: {problem}; {_hint(store)}"


def _valid_record(version: Version, shard: int = 1) -> dict:
    name = shard_name(shard)
    staging = f"{version.path}/_staging/abc"
    return {"shard": shard, "items": 3, "rows": 2, "failures": 1, "seconds": 0.0, "committed": CREATED, "files": [
        {"final": f"{version.path}/{name}", "staged": f"{staging}/{name}", "bytes": 10, "sha256": SHA, "rows": 2},
        {"final": f"{version.failures_path}/{name}", "staged": f"{staging}/failures-{name}", "bytes": 0,
         "sha256": "a" * 64, "rows": 1}]}


def _edit_file(record: dict, index: int, **fields) -> dict:
    return {**record, "files": [{**f, **fields} if i == index else f for i, f in enumerate(record["files"])]}


def _drop_file_field(record: dict, index: int, name: str) -> dict:
    return {**record, "files": [_without(f, name) if i == index else f for i, f in enumerate(record["files"])]}


def test_a_valid_commit_record_passes(version):
    assert version.record_problem(_valid_record(version), 1) is None
    record = _valid_record(version, 0)
    empty = {**record, "items": 0, "rows": 0, "failures": 0}
    empty = _edit_file(_edit_file(empty, 0, rows=0), 1, rows=0)
    assert version.record_problem(empty, 0) is None
    dotted = _edit_file(record, 0, staged=f"{version.path}/_staging/a..b/part-00000.parquet")
    assert version.record_problem(dotted, 0) is None  # `..` only as a whole path component leaves it


@pytest.mark.parametrize("name", ["shard", "items", "rows", "failures"])
def test_every_count_of_a_commit_record_is_checked(version, name):
    record = _valid_record(version)
    assert version.record_problem(_without(record, name), 1) == f"{name} is missing"
    assert version.record_problem({**record, name: "1"}, 1) == f'{name} is a string "1", not a whole number'
    assert version.record_problem({**record, name: -1}, 1) == f"{name} is -1, below 0"
    assert version.record_problem({**record, name: False}, 1) == f"{name} is false, not a whole number"


def test_the_record_must_be_of_its_shard_and_add_up(version):
    record = _valid_record(version)
    assert version.record_problem([record], 1) == "a JSON list, not an object"
    assert version.record_problem(record, 2) == "it names shard 1"
    assert version.record_problem({**record, "items": 4}, 1) == "4 items, but 2 rows and 1 failures"
    assert version.record_problem({**record, "items": 2}, 1) == "2 items, but 2 rows and 1 failures"


@pytest.mark.parametrize("files", [None, {}, "files", [], [{}], [{}, {}, {}]], ids=str)
def test_the_record_lists_two_files(version, files):
    record = {**_valid_record(version), "files": files} if files is not None else _without(_valid_record(version),
                                                                                             "files")
    assert version.record_problem(record, 1) == "files is not a list of the rows' and the failures' part"


@pytest.mark.parametrize("index", [0, 1])
def test_every_field_of_each_file_is_checked(version, index):
    record = _valid_record(version)
    files = list(record["files"])
    files[index] = "x"
    assert version.record_problem({**record, "files": files}, 1) == f"files[{index}] is not an object"
    for name in ("final", "staged", "bytes", "sha256", "rows"):
        assert version.record_problem(_drop_file_field(record, index, name), 1) == f"files[{index}]: {name} is missing"
    for name in ("final", "staged", "sha256"):
        assert version.record_problem(_edit_file(record, index, **{name: 5}), 1) == (
            f"files[{index}]: {name} is a whole number 5, not a string")
    for name in ("bytes", "rows"):
        assert version.record_problem(_edit_file(record, index, **{name: "5"}), 1) == (
            f'files[{index}]: {name} is a string "5", not a whole number')
        assert version.record_problem(_edit_file(record, index, **{name: -1}), 1) == (
            f"files[{index}]: {name} is -1, below 0")
        assert version.record_problem(_edit_file(record, index, **{name: True}), 1) == (
            f"files[{index}]: {name} is true, not a whole number")


def test_each_file_is_the_shards_part_in_this_version(version):
    record = _valid_record(version)
    rows, failures = (f["final"] for f in record["files"])
    assert version.record_problem(_edit_file(record, 0, final=failures), 1) == (
        f"files[0] is {failures!r}, not {rows!r}")
    assert version.record_problem(_edit_file(record, 1, final=rows), 1) == f"files[1] is {rows!r}, not {failures!r}"
    other = f"toy/{VERSION}/part-00002.parquet"
    assert version.record_problem(_edit_file(record, 0, final=other), 1) == f"files[0] is {other!r}, not {rows!r}"


@pytest.mark.parametrize("staged", [
    "/tmp/x", "toy/0123456789ab/_staging/abc/part-00001.parquet", f"toy/{VERSION}/_stagingx/part-00001.parquet",
    f"toy/{VERSION}/part-00001.parquet", f"toy/{VERSION}/_staging/../part-00001.parquet",
    f"toy/{VERSION}/_staging/abc/../../../elsewhere.parquet", f"x/toy/{VERSION}/_staging/abc/part-00001.parquet",
])
@pytest.mark.parametrize("index", [0, 1])
def test_a_file_is_moved_only_from_this_versions_staging_area(version, staged, index):
    problem = version.record_problem(_edit_file(_valid_record(version), index, staged=staged), 1)
    assert problem == f"files[{index}] is staged at {staged!r}, outside toy/{VERSION}/_staging"


@pytest.mark.parametrize("sha", ["A" * 64, "a" * 63, "a" * 65, "g" * 64, "", "a" * 63 + "\n"])
@pytest.mark.parametrize("index", [0, 1])
def test_a_files_sha256_is_64_lowercase_hex_digits(version, sha, index):
    assert version.record_problem(_edit_file(_valid_record(version), index, sha256=sha), 1) == (
        f"files[{index}]: sha256 is not a sha256")


def test_each_files_rows_are_the_records_rows_or_failures(version):
    record = _valid_record(version)
    assert version.record_problem(_edit_file(record, 0, rows=1), 1) == "files[0] has 1 rows, the record 2"
    assert version.record_problem(_edit_file(record, 1, rows=2), 1) == "files[1] has 2 rows, the record 1"


# ---- withdraw and recover -----------------------------------------------------------------------


@dataclass(frozen=True)
class RecordDeleteFailsStore(Store):
    """A store whose deletes of commit records fail like a read-only disk (a driver dying mid-withdraw)."""

    def delete(self, *parts: str) -> None:
        if "/_commits/" in self.path(*parts):
            raise StorageError(self.path(*parts), OSError(30, "Read-only file system"))
        super().delete(*parts)


def test_withdraw_removes_the_files_before_the_record(store, version):
    record = _commit(version, 1, ["v-002"], ["v-003"])
    kept = _commit(version, 2, ["v-004"])
    dying = Version(RecordDeleteFailsStore(store.fs, store.root), "toy", VERSION)
    with pytest.raises(StorageError):
        dying.withdraw(1)
    # A record without its files, never a file without its record: recover withdraws it.
    assert store.exists(version.record_path(1))
    assert not any(store.exists(f["final"]) for f in record["files"])
    assert version.recover() == [1]
    assert version.commits() == {2: kept}
    assert version.table().column("item_id").to_pylist() == ["v-004"]


def test_withdraw_removes_a_shard_and_nothing_else(store, version):
    _commit(version, 1, ["v-002"], ["v-003"])
    kept = _commit(version, 2, ["v-004"], ["v-005"])
    version.withdraw(1)
    assert version.commits() == {2: kept}
    assert _files(store, version.path) == [f"toy/{VERSION}/_commits/part-00002.json",
                                           f"toy/{VERSION}/part-00002.parquet"]
    assert _files(store, version.failures_path) == [f"failures/toy/{VERSION}/part-00002.parquet"]
    version.withdraw(7)  # nothing there is fine


def test_recover_finishes_publishing_a_committed_record(store, version):
    record = _staged_record(version, 0, ["v-000"], ["v-001"])
    assert version.committed_paths() == [record["files"][0]["final"]] and not store.exists(record["files"][0]["final"])
    assert version.recover() == []
    assert version.table().column("item_id").to_pylist() == ["v-000"]
    assert version.failures().column("item_id").to_pylist() == ["v-001"]
    assert not store.exists(version.path, "_staging")
    assert version.check_committed() == {0: record}


def test_recover_publishes_the_rest_of_a_half_published_record(store, version):
    record = _staged_record(version, 0, ["v-000"], ["v-001"])
    rows, failures = record["files"]
    store.move(rows["staged"], rows["final"])  # killed between the two moves
    assert version.recover() == []
    assert store.size(failures["final"]) == failures["bytes"]
    assert version.failures().column("item_id").to_pylist() == ["v-001"]


def test_recover_replaces_a_torn_part_with_its_staged_bytes(store, version):
    record = _staged_record(version, 0, ["v-000"], ["v-001"])
    rows = record["files"][0]
    store.write_bytes(b"torn", rows["final"])
    assert version.recover() == []
    assert store.sha256(rows["final"]) == rows["sha256"]


def test_recover_withdraws_records_whose_files_are_lost(store, version, caplog):
    lost = _staged_record(version, 3, ["v-006"])
    torn = _staged_record(version, 1, ["v-002"])
    kept = _commit(version, 2, ["v-004"])
    store.delete(lost["files"][0]["staged"])
    store.write_bytes(b"torn", torn["files"][1]["staged"])  # staged, but not the bytes its record names
    with caplog.at_level("WARNING", logger="pipeline.store.version"):
        assert version.recover() == [1, 3]
    assert [r.getMessage() for r in caplog.records if r.name == "pipeline.store.version"] == [
        f"toy {VERSION}: shard {shard} was committed but its files are gone; recomputing it" for shard in (1, 3)]
    assert version.commits() == {2: kept}
    assert _files(store, version.path) == [f"toy/{VERSION}/_commits/part-00002.json",
                                           f"toy/{VERSION}/part-00002.parquet"]
    assert _files(store, version.failures_path) == [f"failures/toy/{VERSION}/part-00002.parquet"]


def test_recover_removes_everything_uncommitted(store, version):
    kept = _commit(version, 0, ["v-000"], ["v-001"])
    version.write_manifest(_record(version))
    version.write_plan(pa.array(["v-000"]), 2, _record(version, num_items=1))
    version.stage_shard(1, _rows(["v-002"]), _failures([]), {})  # never committed
    for folder in (version.path, version.failures_path):
        store.write_bytes(b"x", folder, "part-00005.parquet")  # a part without a record
        store.write_bytes(b"x", folder, ".tmp-1234abcd-part-00005.parquet")
    store.write_bytes(b"x", version.path, "_commits", ".tmp-1234abcd-part-00001.json")
    store.write_bytes(b"x", version.path, ".tmp-1234abcd-_manifest.json")  # a record write cut short
    store.write_text("notes", version.path, "notes.txt")
    assert version.recover() == []
    assert _files(store, version.path) == sorted([
        f"toy/{VERSION}/_commits/part-00000.json", f"toy/{VERSION}/_manifest.json", f"toy/{VERSION}/_plan.parquet",
        f"toy/{VERSION}/notes.txt", f"toy/{VERSION}/part-00000.parquet"])
    assert _files(store, version.failures_path) == [f"failures/toy/{VERSION}/part-00000.parquet"]
    assert version.commits() == {0: kept}


def test_clear_staging_removes_the_staging_area_only(store, version):
    _commit(version, 0, ["v-000"])
    version.stage_shard(1, _rows(["v-002"]), _failures([]), {})
    version.clear_staging()
    assert not store.exists(version.path, "_staging") and version.table().num_rows == 1
    version.clear_staging()  # nothing there is fine


# ---- checking -----------------------------------------------------------------------------------


def test_check_committed_returns_the_records_of_a_sound_version(version):
    records = {0: _commit(version, 0, ["v-000", "v-001"]), 1: _commit(version, 1, ["v-002"], ["v-003"])}
    record = _done(_record(version, num_items=4), 3, 1)
    assert version.check_committed(record) == records == version.check_committed()


def test_a_complete_version_missing_records_is_damaged(store, version):
    _commit(version, 1, ["v-002"])
    record = _done(_record(version, num_items=16, rows_per_shard=2), 16, 0)
    with pytest.raises(DamagedOutputError) as caught:
        version.check_committed(record)
    assert str(caught.value) == (f"{store.path(version.path)} is marked complete but shard(s) [0, 2, 3, 4, 5] have "
                                 f"no commit record; {_hint(store)}")
    assert version.check_committed() == version.commits()  # without the record: only the parts checked


def _damaged_part(store: Store, version: Version, damage) -> tuple[str, DamagedOutputError]:
    record = _commit(version, 0, ["v-000", "v-001"], ["v-002"])
    _commit(version, 1, ["v-003"])
    damage(store, record)
    with pytest.raises(DamagedOutputError) as caught:
        version.check_committed()
    return record, caught.value


def test_a_missing_part_is_damaged_naming_it(store, version):
    record, error = _damaged_part(store, version, lambda s, r: s.delete(r["files"][1]["final"]))
    assert str(error) == f"{store.path(record['files'][1]['final'])}: committed part is missing; {_hint(store)}"


def test_a_part_of_another_size_is_damaged_naming_it(store, version):
    def grow(s, r):
        s.write_bytes(s.read_bytes(r["files"][0]["final"]) + b"x", r["files"][0]["final"])

    record, error = _damaged_part(store, version, grow)
    size = record["files"][0]["bytes"]
    assert str(error) == (f"{store.path(record['files'][0]['final'])}: committed part has {size + 1} bytes, "
                          f"its record says {size}; {_hint(store)}")


def test_a_part_with_an_unreadable_footer_is_damaged_naming_it(store, version):
    def scramble(s, r):
        s.write_bytes(b"x" * r["files"][0]["bytes"], r["files"][0]["final"])

    record, error = _damaged_part(store, version, scramble)
    assert str(error).startswith(f"{store.path(record['files'][0]['final'])}: committed part is not readable "
                                 f"Parquet (")
    assert "Parquet magic bytes not found" in str(error)  # pyarrow's reason
    assert "\n" not in str(error) and str(error).endswith(f"); {_hint(store)}")


def test_a_part_with_other_rows_than_recorded_is_damaged_naming_it(store, version):
    record = _commit(version, 0, ["v-000"])
    store.write_json(_edit_file({**record, "items": 3, "rows": 3}, 0, rows=3), version.record_path(0))
    with pytest.raises(DamagedOutputError) as caught:
        version.check_committed()
    assert str(caught.value) == (f"{store.path(record['files'][0]['final'])}: committed part has 1 rows, its record "
                                 f"says 3; {_hint(store)}")


def test_a_run_checks_sizes_and_footers_not_every_byte(store, version):
    record = _commit(version, 0, ["v-000"])
    edited = _edit_file(record, 0, sha256="f" * 64)  # as a flipped byte in the data would look to `tvr verify`
    store.write_json(edited, version.record_path(0))
    assert version.check_committed() == {0: edited}


def test_only_a_deep_check_reads_every_byte(store, version):
    record = _commit(version, 0, ["v-000"])
    rows = record["files"][0]
    assert version.part_problem(rows, deep=True) is None and version.part_problem(rows, deep=False) is None
    changed = {**rows, "sha256": "f" * 64}
    assert version.part_problem(changed, deep=False) is None
    assert version.part_problem(changed, deep=True) == (
        "committed part's sha256 differs from its record (the bytes changed)")


def test_stray_files_are_those_no_record_or_protocol_file_accounts_for(store, version):
    records = {0: _commit(version, 0, ["v-000"], ["v-001"]), 1: _commit(version, 1, ["v-002"])}
    version.write_manifest(_record(version))
    version.write_plan(pa.array(["v-000"]), 2, _record(version, num_items=1))
    store.write_text("{}", version.path, "_lease.json")
    version.clear_staging()  # as a run does once its shards are committed
    assert version.stray_files(records) == []
    store.write_bytes(b"x", version.path, "part-00007.parquet")
    store.write_bytes(b"x", version.failures_path, "part-00007.parquet")
    store.write_text("{}", version.path, "_commits", "notes.json")
    assert version.stray_files(records) == [f"toy/{VERSION}/_commits/notes.json", f"toy/{VERSION}/part-00007.parquet",
                                            f"failures/toy/{VERSION}/part-00007.parquet"]
    # Parts of a record left out are strays; the record file itself is accounted for by its name.
    assert f"toy/{VERSION}/part-00001.parquet" in version.stray_files({0: records[0]})
    assert f"toy/{VERSION}/_commits/part-00001.json" not in version.stray_files({0: records[0]})


def test_staging_leftovers_are_strays(store, version):
    files = version.stage_shard(2, _rows(["v-004"]), _failures([]), {})
    assert version.stray_files({}) == sorted(f["staged"] for f in files)  # listed by file, not the folder as well
    store.delete(files[0]["staged"])
    store.delete(files[1]["staged"])
    assert version.stray_files({}) == [f"toy/{VERSION}/_staging"]  # empty attempt folders
    version.clear_staging()
    assert version.stray_files({}) == []


# ---- reading the manifest's videos ----------------------------------------------------------------


def test_video_table_strips_only_the_roots_trailing_slashes(store):
    version = Version(store, "toy", VERSION, root="/media/BOX//")
    version.commit_shard(0, version.stage_shard(0, pa.table({"path": ["a.mp4"]}), _failures([]), {}))
    assert version.video_table().to_pydict() == {"path": ["/media/BOX/a.mp4"], "relative_path": ["a.mp4"],
                                                 "video_root": ["/media/BOX"]}


@pytest.mark.parametrize("paths", [[], [None, None]], ids=["no videos", "no paths"])
def test_video_table_columns_are_strings_however_empty(store, paths):
    version = Version(store, "toy", VERSION, root="/videos")
    part = pa.table({"path": pa.array(paths, pa.string())})
    version.commit_shard(0, version.stage_shard(0, part, _failures([]), {}))
    table = version.video_table()
    assert table.schema == pa.schema([("path", pa.string()), ("relative_path", pa.string()),
                                      ("video_root", pa.string())])
    assert table.column("path").to_pylist() == paths


def test_video_table_makes_paths_absolute_under_the_video_root(store):
    version = Version(store, "toy", VERSION, root="/data/videos/")
    files = version.stage_shard(0, pa.table({"video_id": ["a", "b"], "path": ["x/a.mp4", None]}), _failures([]), {})
    version.commit_shard(0, files)
    table = version.video_table()
    assert table.to_pydict() == {"video_id": ["a", "b"], "path": ["/data/videos/x/a.mp4", None],
                                 "relative_path": ["x/a.mp4", None], "video_root": ["/data/videos"] * 2}
    assert table.schema.field("path").type == pa.string() and table.schema.field("video_root").type == pa.string()
    assert version.video_table(columns=["video_id"]).to_pydict() == {"video_id": ["a", "b"]}
    with pytest.raises(ValueError, match=f"^toy/{VERSION} is read without a video root$"):
        version.with_root(None).video_table()


def test_the_key_column_is_what_the_record_names(store, version):
    with pytest.raises(ValueError, match=f"^toy/{VERSION} records no key column$"):
        version.key()
    version.write_manifest(_record(version))
    assert version.key() == "item_id"


# ---- a store that is not the local disk ----------------------------------------------------------


def test_a_version_reads_its_parts_through_the_stores_filesystem(tmp_path):
    """On a cluster the store is s3:// or gs://: every read must go through its filesystem, never the
    local disk (here a subtree of tmp_path, whose relative paths mean nothing to the local disk)."""
    store = Store(pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem()), "tvr-remote-out")
    version = Version(store, "toy", VERSION)
    records = {0: _commit(version, 0, ["v-000", "v-001"], ["v-002"]), 1: _commit(version, 1, ["v-003"])}
    assert version.check_committed() == records
    rows = records[0]["files"][0]
    assert version.part_problem(rows, deep=True) is None
    assert version.part_rows(rows["final"]) == 2 and version.part_schema(rows["final"]).names == ["item_id", "value"]
    assert version.read_part(rows["final"]).column("item_id").to_pylist() == ["v-000", "v-001"]
    assert sorted(version.table().column("item_id").to_pylist()) == ["v-000", "v-001", "v-003"]
    assert version.failures().column("item_id").to_pylist() == ["v-002"]
    keys, _ = version.locations("item_id")
    assert keys.column("part").to_pylist() == [0, 0, 1]

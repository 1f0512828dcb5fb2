"""`tvr verify` finding by finding, on version folders written through the real `Version` API (no Ray).

Each test damages one thing a version folder holds and checks what verify says about it (the file,
and the key part of the problem), what `--repair` does to the folder, and the report's lines.
"""

from __future__ import annotations

import json
import math
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import ConfigError
from pipeline.store.schema import FAILURES
from pipeline.store.storage import Store, parquet_bytes
from pipeline.store.verify import Finding, Report, verify
from pipeline.store.version import Version, latest_pointer, point_latest, version_of

ROWS = pa.schema([("video_id", pa.string()), ("score", pa.int64())])
CREATED = "2026-01-01T00:00:00+00:00"


def ids(n: int, prefix: str = "v") -> list[str]:
    return [f"{prefix}-{i:03d}" for i in range(n)]


def rows_table(items: list[str], schema: pa.Schema = ROWS) -> pa.Table:
    return pa.table({"video_id": items, "score": [int(i.split("-")[1]) for i in items]}, schema=schema)


def failures_table(items: list[str], stage: str = "toy") -> pa.Table:
    n = len(items)
    return pa.table({"item_id": items, "stage": [stage] * n, "reason": ["corrupt"] * n, "message": ["bad"] * n},
                    schema=FAILURES)


def commit(version: Version, shard: int, rows: pa.Table, failures: pa.Table) -> dict:
    return version.commit_shard(shard, version.stage_shard(shard, rows, failures, {"tvr.test": "1"}))


def write_version(store: Store, n: int = 5, per_shard: int = 2, bad: tuple[str, ...] = ("v-003",),
                  stage: str = "toy", salt: str = "", complete: bool = True, finished: str = "2026-01-02T00:00:00Z",
                  shards: dict[int, tuple[list[str], list[str]]] | None = None, key: str | None = "video_id",
                  plan: bool = True, latest: bool = True) -> Version:
    """A version of `n` items (`bad` ones failures) in shards of `per_shard`, committed shard by shard
    as a driver does, its plan written first; `shards` replaces what a shard holds (rows' ids,
    failures' ids). Complete and LATEST unless told otherwise."""
    identity = {"stage": stage, "items": n, "salt": salt}
    version = Version(store, stage, version_of(identity))
    items = ids(n)
    manifest = {"stage": stage, "version": version.version, "identity": identity, "key": key, "created": CREATED,
                "num_items": n, "rows_per_shard": per_shard, "num_shards": max(1, math.ceil(n / per_shard)),
                "complete": False}
    if plan:
        version.write_plan(pa.array(items), per_shard, manifest)
    version.write_manifest(manifest)
    held = dict(shards or {})
    for shard in range(manifest["num_shards"]):
        chunk = items[shard * per_shard:(shard + 1) * per_shard]
        good, failed = held.get(shard, ([i for i in chunk if i not in bad], [i for i in chunk if i in bad]))
        commit(version, shard, rows_table(good), failures_table(failed, stage))
    version.clear_staging()  # as the driver does once every shard is committed
    if complete:
        records = version.commits().values()
        version.write_manifest({**manifest, "complete": True, "finished": finished,
                                "rows": sum(r["rows"] for r in records),
                                "failures": sum(r["failures"] for r in records)})
        if latest:
            version.mark_latest()
    return version


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.open(str(tmp_path / "out"))


def problems(report: Report) -> list[tuple[str, str]]:
    """Each finding's path and problem; its stage and version are checked to be those its path lies in
    (LATEST and the failures folder of a version that does not exist belong to no version)."""
    for f in report.findings:
        parts = f.path.split("/")
        if parts[0] == "failures":
            stage, version = parts[1], parts[2] if len(parts) > 3 else None
        else:
            stage, version = parts[0], parts[1] if len(parts) > 1 and parts[1] != "LATEST" else None
        assert (f.stage, f.version) == (stage, version), f
    return [(f.path, f.problem) for f in report.findings]


def manifest_of(version: Version) -> dict:
    return json.loads(version.store.read_text(version.manifest_path))


def part(version: Version, shard: int, failures: bool = False) -> str:
    folder = version.failures_path if failures else version.path
    return f"{folder}/part-{shard:05d}.parquet"


def files_of(store: Store) -> list[str]:
    return store.walk_files("")


# ---- a clean output, and which stages are checked ----------------------------------------------------


def test_a_clean_version_is_ok_and_counted(store):
    write_version(store)
    report = verify(store.root)
    assert report.ok and report.findings == [] and report.repaired == [] and report.in_progress == []
    assert (report.versions, report.shards, report.items) == (1, 3, 5)
    assert report.render() == f"verify {store.root}: OK; checked 1 versions, 3 shards, 5 items"


def test_repair_of_a_clean_output_changes_nothing(store):
    version = write_version(store)
    before = {path: store.read_bytes(path) for path in files_of(store)}
    report = verify(store.root, repair=True)
    assert report.ok and report.repaired == []
    assert {path: store.read_bytes(path) for path in files_of(store)} == before
    assert latest_pointer(store, "toy") == version.version


def test_a_stage_not_there_is_a_config_error_naming_the_stages_there(store):
    with pytest.raises(ConfigError, match=r"has no output of stage 'toy' \(stages there: none\)"):
        verify(store.root, stage="toy")
    write_version(store)
    write_version(store, stage="other")
    with pytest.raises(ConfigError, match=r"has no output of stage 'nope' \(stages there: other, toy\)"):
        verify(store.root, stage="nope")


def test_only_the_named_stage_is_checked(store):
    write_version(store)
    other = write_version(store, stage="other")
    store.delete(part(other, 0))
    assert verify(store.root, stage="toy").ok
    assert problems(verify(store.root, stage="other")) == [(part(other, 0), "committed part is missing")]
    assert [f.stage for f in verify(store.root).findings] == ["other"]


def test_a_folder_that_is_no_stage_is_checked_only_when_declared(store):
    write_version(store)
    store.write_text("notes", "notes", "draft", "readme.txt")
    assert verify(store.root).ok
    assert verify(store.root, stage="toy").ok
    report = verify(store.root, schemas={"notes": None})
    assert problems(report) == [("notes/draft", "folder with no _manifest.json (not a version)")]
    assert report.findings[0] == Finding("notes", "draft", "notes/draft",
                                         "folder with no _manifest.json (not a version)")


# ---- committed parts against their records -----------------------------------------------------------


@pytest.mark.parametrize("damage", ["append_byte", "remove_byte", "delete", "flip_byte", "garbage_footer"])
def test_a_damaged_part_is_named_with_its_shard(store, damage):
    version = write_version(store)
    path = part(version, 1)
    data = store.read_bytes(path)
    wanted = {"append_byte": f"committed part has {len(data) + 1} bytes, its record says {len(data)}",
              "remove_byte": f"committed part has {len(data) - 1} bytes, its record says {len(data)}",
              "delete": "committed part is missing",
              "flip_byte": "committed part's sha256 differs from its record (the bytes changed)",
              "garbage_footer": "committed part is not readable Parquet"}[damage]
    if damage == "append_byte":
        store.write_bytes(data + b"x", path)
    elif damage == "remove_byte":
        store.write_bytes(data[:-1], path)
    elif damage == "delete":
        store.delete(path)
    elif damage == "flip_byte":
        store.write_bytes(data[:5] + bytes([data[5] ^ 0xFF]) + data[6:], path)  # a page, not the footer
    else:  # same size, zeroed footer
        footer = int.from_bytes(data[-8:-4], "little")
        store.write_bytes(data[:len(data) - 8 - footer] + bytes(footer) + data[-8:], path)
    report = verify(store.root)
    assert [(f.stage, f.version, f.path, f.shard) for f in report.findings] == [("toy", version.version, path, 1)]
    assert report.findings[0].problem.startswith(wanted)
    assert (report.versions, report.shards, report.items) == (1, 3, 5)
    lines = report.render().splitlines()
    assert lines[0].startswith(f"{store.root}/{path}: {wanted}") and len(lines) == 2
    assert lines[1] == f"verify {store.root}: 1 problem(s); checked 1 versions, 3 shards, 5 items"


def test_a_missing_failures_part_is_named(store):
    version = write_version(store)
    store.delete(part(version, 1, failures=True))
    assert problems(verify(store.root)) == [(part(version, 1, failures=True), "committed part is missing")]


def test_repair_withdraws_a_bad_shard_and_marks_its_version_partial(store):
    version = write_version(store)
    store.delete(part(version, 1))
    report = verify(store.root, repair=True)
    folder = version.path
    assert problems(report) == [
        (part(version, 1), "committed part is missing"),
        ("toy/LATEST", f"points at {version.version}, which is not a complete version")]
    assert report.repaired == [f"withdrew shard 1 of {folder}; the next run recomputes it",
                               f"marked {folder} partial",
                               "removed toy/LATEST: no version of toy is complete"]
    assert not store.exists(version.record_path(1)) and not store.exists(part(version, 1, failures=True))
    assert store.exists(part(version, 0)) and store.exists(part(version, 2))
    manifest = manifest_of(version)
    assert manifest["complete"] is False and not {"finished", "rows", "failures"} & manifest.keys()
    assert manifest["num_shards"] == 3 and manifest["created"] == CREATED
    assert latest_pointer(store, "toy") is None
    render = report.render().splitlines()
    assert render[-4:] == [f"repaired: {line}" for line in report.repaired] + [
        f"verify {store.root}: 2 problem(s), 3 repair(s) made; checked 1 versions, 3 shards, 5 items"]
    again = verify(store.root)
    assert again.ok and (again.versions, again.shards, again.items) == (1, 2, 3)


# ---- schemas -----------------------------------------------------------------------------------------


def recommit(version: Version, shard: int, rows: pa.Table, failures: pa.Table | None = None) -> None:
    """Replace a committed shard by other parts, committed as properly (the record matches them)."""
    version.withdraw(shard)
    commit(version, shard, rows, failures if failures is not None else failures_table([]))
    version.clear_staging()


def test_a_part_with_other_columns_than_declared_is_named(store):
    version = write_version(store, bad=())
    renamed = pa.table({"video_id": ["v-002", "v-003"], "points": [2, 3]})
    recommit(version, 1, renamed)
    report = verify(store.root, schemas={"toy": ROWS})
    assert problems(report) == [(part(version, 1), "schema differs from the stage's: columns ['video_id', 'points'], "
                                                   "expected ['video_id', 'score']")]
    assert report.findings[0].shard == 1


def test_a_part_with_another_type_than_declared_is_named(store):
    version = write_version(store, bad=())
    narrow = pa.schema([("video_id", pa.string()), ("score", pa.int32())])
    recommit(version, 2, rows_table(["v-004"], narrow))
    assert problems(verify(store.root, schemas={"toy": ROWS})) == [
        (part(version, 2), "schema differs from the stage's: score is int32, expected int64")]


def test_every_differing_type_is_listed(store):
    version = write_version(store, bad=())
    declared = pa.schema([("video_id", pa.string()), ("score", pa.int64()), ("weight", pa.float64())])
    recommit(version, 0, pa.table({"video_id": ["v-000", "v-001"], "score": pa.array([0, 1], pa.int32()),
                                   "weight": pa.array([1, 2], pa.int16())}))
    assert problems(verify(store.root, schemas={"toy": declared}))[0] == (
        part(version, 0), "schema differs from the stage's: score is int32, expected int64; "
                          "weight is int16, expected double")


def test_nullability_and_metadata_are_not_schema_differences(store):
    write_version(store)
    declared = pa.schema([pa.field("video_id", pa.string(), nullable=False), pa.field("score", pa.int64())],
                         metadata={"about": "the declared schema"})
    assert verify(store.root, schemas={"toy": declared}).ok


def test_undeclared_schema_is_held_to_the_first_readable_part(store):
    version = write_version(store, bad=())
    narrow = pa.schema([("video_id", pa.string()), ("score", pa.int32())])
    recommit(version, 2, rows_table(["v-004"], narrow))
    assert problems(verify(store.root)) == [
        (part(version, 2), "schema differs from the stage's: score is int32, expected int64")]
    store.delete(part(version, 0))  # unreadable: shard 1's schema is the one the others must agree with
    assert problems(verify(store.root)) == [
        (part(version, 0), "committed part is missing"),
        (part(version, 2), "schema differs from the stage's: score is int32, expected int64")]


def test_parts_agreeing_with_each_other_pass_without_a_declared_schema(store):
    narrow = pa.schema([("video_id", pa.string()), ("score", pa.int32())])
    version = write_version(store, bad=())
    for shard, chunk in enumerate((["v-000", "v-001"], ["v-002", "v-003"], ["v-004"])):
        recommit(version, shard, rows_table(chunk, narrow))
    assert verify(store.root).ok
    assert problems(verify(store.root, schemas={"toy": ROWS}))[0][1] == (
        "schema differs from the stage's: score is int32, expected int64")


def test_a_failures_part_is_held_to_the_failures_schema(store):
    version = write_version(store, bad=())
    odd = failures_table([]).append_column("extra", pa.array([], pa.string()))
    recommit(version, 1, rows_table(["v-002", "v-003"]), odd)
    assert problems(verify(store.root)) == [
        (part(version, 1, failures=True), "schema differs from the stage's: columns ['item_id', 'stage', 'reason', "
                                          "'message', 'extra'], expected ['item_id', 'stage', 'reason', 'message']")]


# ---- every planned item exactly once -----------------------------------------------------------------


def test_an_item_in_rows_and_failures_is_repeated_and_its_neighbour_lost(store):
    version = write_version(store, shards={1: (["v-002"], ["v-002"])})
    report = verify(store.root)
    assert problems(report) == [(part(version, 1), "items not exactly once: repeated ['v-002']; lost ['v-003']")]
    assert report.findings[0].shard == 1


def test_an_item_not_in_the_plan_is_named(store):
    version = write_version(store, shards={1: (["v-002"], ["v-999"])})
    assert problems(verify(store.root)) == [
        (part(version, 1), "items not exactly once: lost ['v-003']; not planned ['v-999']")]


def test_an_item_twice_in_the_rows_is_repeated(store):
    version = write_version(store, n=4, bad=(), shards={0: (["v-000", "v-000"], [])})
    assert problems(verify(store.root)) == [
        (part(version, 0), "items not exactly once: repeated ['v-000']; lost ['v-001']")]


def test_items_not_exactly_once_list_five_of_each(store):
    version = write_version(store, n=12, per_shard=12, bad=(), shards={0: (ids(12, "x"), [])})
    assert problems(verify(store.root)) == [
        (part(version, 0), "items not exactly once: lost ['v-000', 'v-001', 'v-002', 'v-003', 'v-004']; "
                           "not planned ['x-000', 'x-001', 'x-002', 'x-003', 'x-004']")]


def test_a_shard_the_plan_does_not_have_holds_only_unplanned_items(store):
    version = write_version(store, complete=False)
    commit(version, 7, rows_table(["v-004"]), failures_table([]))
    version.clear_staging()
    assert problems(verify(store.root)) == [(part(version, 7), "items not exactly once: not planned ['v-004']")]


def test_items_are_not_checked_without_a_key(store):
    write_version(store, key=None, plan=False, shards={1: (["v-002"], ["v-002"])})
    report = verify(store.root)
    assert report.ok and (report.versions, report.shards, report.items) == (1, 3, 5)


def test_repair_withdraws_a_shard_with_items_not_exactly_once(store):
    version = write_version(store, shards={1: (["v-002"], ["v-002"])})
    report = verify(store.root, repair=True)
    assert report.repaired[:2] == [f"withdrew shard 1 of {version.path}; the next run recomputes it",
                                   f"marked {version.path} partial"]
    assert sorted(version.commits()) == [0, 2]
    assert verify(store.root).ok


# ---- shards and totals against the record ------------------------------------------------------------


def test_a_complete_version_missing_a_shard_is_named(store):
    version = write_version(store)
    version.withdraw(1)  # record and parts gone: the totals differ too, but the missing shard says why
    report = verify(store.root)
    assert problems(report) == [(version.path, "marked complete but shard(s) [1] have no commit record")]
    assert report.findings[0].shard is None
    assert (report.versions, report.shards, report.items) == (1, 2, 3)


def test_missing_shards_are_listed_up_to_ten(store):
    version = write_version(store, n=12, per_shard=1)
    for shard in range(12):
        version.withdraw(shard)
    assert problems(verify(store.root)) == [
        (version.path, "marked complete but shard(s) [0, 1, 2, 3, 4, 5, 6, 7, 8, 9] have no commit record")]


def test_repair_marks_a_version_missing_a_shard_partial(store):
    version = write_version(store)
    version.withdraw(2)
    report = verify(store.root, repair=True)
    assert report.repaired == [f"marked {version.path} partial", "removed toy/LATEST: no version of toy is complete"]
    assert manifest_of(version)["complete"] is False
    assert verify(store.root).ok


def test_a_partial_version_may_miss_shards(store):
    version = write_version(store, complete=False, latest=False)
    version.withdraw(1)
    report = verify(store.root, repair=True)
    assert report.ok and report.repaired == []
    assert manifest_of(version)["complete"] is False


def test_wrong_totals_are_named_and_repair_marks_the_version_partial(store):
    version = write_version(store)
    manifest = manifest_of(version)
    assert (manifest["rows"], manifest["failures"]) == (4, 1)
    store.write_json({**manifest, "rows": 3, "failures": 2}, version.manifest_path)
    assert problems(verify(store.root)) == [
        (version.manifest_path, "says 3 rows and 2 failures, its commit records 4 and 1")]
    report = verify(store.root, repair=True)
    assert report.repaired == [f"marked {version.path} partial", "removed toy/LATEST: no version of toy is complete"]
    assert sorted(version.commits()) == [0, 1, 2]  # nothing withdrawn: the parts are good
    assert verify(store.root).ok


def test_totals_of_rows_alone_are_checked(store):
    version = write_version(store)
    store.write_json({**manifest_of(version), "rows": 5, "failures": 0}, version.manifest_path)
    assert problems(verify(store.root)) == [
        (version.manifest_path, "says 5 rows and 0 failures, its commit records 4 and 1")]


# ---- files no record accounts for --------------------------------------------------------------------


def test_stray_files_and_leftover_staging_are_named_and_repair_removes_them(store):
    version = write_version(store)
    copy = store.read_bytes(part(version, 0))
    strays = [part(version, 9), part(version, 9, failures=True), f"{version.path}/_staging/dead/part-00001.parquet",
              f"{version.path}/.tmp-1234abcd-_manifest.json", f"{version.path}/notes/readme.txt"]
    for path in strays:
        store.write_bytes(copy, path)
    report = verify(store.root)
    assert sorted(problems(report)) == sorted((path, "not committed (a stray file)") for path in strays)
    assert {f.shard for f in report.findings} == {None}
    repaired = verify(store.root, repair=True)
    assert sorted(repaired.repaired) == sorted(f"removed {path}" for path in strays)
    assert not any(store.exists(path) for path in strays)
    assert not store.exists(version.path, "_staging")  # the attempt folder that held the stray part too
    assert manifest_of(version)["complete"] is True and latest_pointer(store, "toy") == version.version
    assert verify(store.root).ok


def test_an_empty_staging_folder_is_a_stray_folder(store):
    version = write_version(store)
    version.store.fs.create_dir(store.path(version.path, "_staging", "0123456789ab"), recursive=True)
    assert problems(verify(store.root)) == [(f"{version.path}/_staging", "not committed (a stray folder)")]
    report = verify(store.root, repair=True)
    assert report.repaired == [f"removed {version.path}/_staging"]
    assert not store.exists(version.path, "_staging") and verify(store.root).ok


def test_a_staged_uncommitted_shard_is_stray_once_no_driver_holds_the_version(store):
    version = write_version(store, complete=False, latest=False)
    version.withdraw(2)
    staged = version.stage_shard(2, rows_table(["v-004"]), failures_table([]), {})
    assert sorted(problems(verify(store.root))) == sorted((file["staged"], "not committed (a stray file)")
                                                          for file in staged)
    verify(store.root, repair=True)
    assert not store.exists(version.path, "_staging") and verify(store.root).ok


def test_a_folder_with_files_but_no_record_is_no_version(store):
    write_version(store)
    store.write_text("x", "toy", "abandoned", "part-00000.parquet")
    store.fs.create_dir(store.path("toy", "empty"), recursive=True)  # a driver that stopped before planning
    report = verify(store.root)
    assert problems(report) == [("toy/abandoned", "folder with no _manifest.json (not a version)")]
    assert report.versions == 1
    repaired = verify(store.root, repair=True)
    assert repaired.repaired == ["removed toy/abandoned"]
    assert not store.exists("toy", "abandoned") and store.exists("toy", "empty")
    assert verify(store.root).ok


def test_failures_of_a_version_that_does_not_exist_are_stray(store):
    version = write_version(store)
    store.write_bytes(store.read_bytes(part(version, 0, failures=True)), "failures/toy/0123456789ab/part-00000.parquet")
    report = verify(store.root)
    assert problems(report) == [("failures/toy/0123456789ab", "failures of a version that does not exist")]
    assert report.findings[0].version is None
    assert verify(store.root, repair=True).repaired == ["removed failures/toy/0123456789ab"]
    assert not store.exists("failures/toy/0123456789ab") and store.exists(part(version, 0, failures=True))
    assert verify(store.root).ok


# ---- a damaged or edited _manifest.json --------------------------------------------------------------


@pytest.mark.parametrize("content, problem", [
    (b"not json", "damaged (Expecting value: line 1 column 1 (char 0))"),
    (b"[1, 2]", "damaged (a JSON list, not an object)"),
])
def test_a_damaged_manifest_is_named_and_its_version_not_checked_further(store, content, problem):
    version = write_version(store)
    store.delete(part(version, 1))  # not found: nothing past the record is checked without one
    store.write_bytes(content, version.manifest_path)
    report = verify(store.root)
    assert problems(report) == [(version.manifest_path, problem),
                                ("toy/LATEST", f"points at {version.version}, which is not a complete version")]
    assert report.findings[0].version == version.version
    assert (report.versions, report.shards, report.items) == (0, 0, 0)


def test_repair_rebuilds_a_damaged_manifest_from_the_plan_and_goes_on_checking(store):
    version = write_version(store)
    planned = version.read_plan()[1]
    store.delete(part(version, 1))
    store.write_bytes(b"{", version.manifest_path)
    report = verify(store.root, repair=True)
    assert [path for path, _ in problems(report)] == [version.manifest_path, part(version, 1), "toy/LATEST"]
    assert report.repaired == [
        f"rebuilt {version.manifest_path} from {version.plan_path} (marked partial: the next run re-checks and "
        "completes it)",
        f"withdrew shard 1 of {version.path}; the next run recomputes it",
        "removed toy/LATEST: no version of toy is complete"]
    assert manifest_of(version) == {**planned, "complete": False}
    assert (report.versions, report.shards, report.items) == (1, 3, 5)
    assert verify(store.root).ok


@pytest.mark.parametrize("plan", ["missing", "damaged"])
def test_a_damaged_manifest_with_nothing_to_rebuild_it_from_removes_the_version(store, plan):
    keep = write_version(store, salt="kept")
    version = write_version(store, latest=False)
    if plan == "missing":
        store.delete(version.plan_path)
    else:
        store.write_bytes(b"garbage", version.plan_path)
    store.write_bytes(b"{", version.manifest_path)
    report = verify(store.root, repair=True)
    assert problems(report)[0][0] == version.manifest_path
    assert report.repaired == [f"removed {version.path}: its record cannot be rebuilt; rerun to write it again"]
    assert not store.exists(version.path) and not store.exists(version.failures_path)
    assert store.exists(keep.path) and latest_pointer(store, "toy") == keep.version
    assert verify(store.root).ok


def test_a_manifest_differing_from_the_plans_copy_is_named_and_rebuilt(store):
    version = write_version(store)
    planned = version.read_plan()[1]
    store.write_json({**manifest_of(version), "rows_per_shard": 3, "num_shards": 2}, version.manifest_path)
    report = verify(store.root)
    assert problems(report) == [
        (version.manifest_path, f"differs from the copy in {version.plan_path} on rows_per_shard, num_shards (edited)")]
    repaired = verify(store.root, repair=True)
    assert repaired.repaired == [
        f"rebuilt {version.manifest_path} from {version.plan_path} (marked partial: the next run re-checks and "
        "completes it)", "removed toy/LATEST: no version of toy is complete"]
    assert manifest_of(version) == {**planned, "complete": False}
    assert sorted(version.commits()) == [0, 1, 2]
    assert verify(store.root).ok


def test_a_manifest_naming_another_key_is_checked_against_the_plans_copy(store):
    # An edited key names no column of the parts: verify reports the edit, not pyarrow's error.
    version = write_version(store)
    store.write_json({**manifest_of(version), "key": "other"}, version.manifest_path)
    report = verify(store.root)
    edited = f"differs from the copy in {version.plan_path} on key (edited)"
    assert problems(report) == [(version.manifest_path, edited)]
    assert verify(store.root, repair=True).repaired[0].startswith(f"rebuilt {version.manifest_path}")
    assert manifest_of(version)["key"] == "video_id"


# ---- the item plan -----------------------------------------------------------------------------------


def test_a_complete_version_without_its_plan_is_named_and_marked_partial(store):
    version = write_version(store)
    store.delete(version.plan_path)
    assert problems(verify(store.root)) == [(version.plan_path, "item plan is missing")]
    report = verify(store.root, repair=True)
    assert report.repaired == [f"marked {version.path} partial", "removed toy/LATEST: no version of toy is complete"]
    assert sorted(version.commits()) == [0, 1, 2]
    assert verify(store.root).ok  # a partial version's plan is written again before its next commit


def test_a_damaged_plan_is_named_removed_and_its_version_marked_partial(store):
    version = write_version(store)
    store.write_bytes(b"garbage", version.plan_path)
    report = verify(store.root)
    assert [path for path, _ in problems(report)] == [version.plan_path]
    assert report.findings[0].problem.startswith("damaged item plan (")
    repaired = verify(store.root, repair=True)
    assert repaired.repaired == [
        f"removed {version.plan_path}; the next run writes it again from its inputs",
        f"marked {version.path} partial", "removed toy/LATEST: no version of toy is complete"]
    assert not store.exists(version.plan_path) and sorted(version.commits()) == [0, 1, 2]
    assert verify(store.root).ok


def test_a_plan_whose_copy_disagrees_with_its_rows_is_damaged(store):
    version = write_version(store)
    table = pq.read_table(store.path(version.plan_path))
    store.write_bytes(parquet_bytes(table.slice(0, 4), {"tvr.manifest": table.schema.metadata[b"tvr.manifest"]
                                                        .decode()}), version.plan_path)
    assert problems(verify(store.root)) == [
        (version.plan_path, "damaged item plan (it plans 4 items, its record 5)")]


def test_a_damaged_plan_of_a_partial_version_is_removed_without_more(store):
    version = write_version(store, complete=False, latest=False)
    store.write_bytes(b"garbage", version.plan_path)
    report = verify(store.root, repair=True)
    assert report.repaired == [f"removed {version.plan_path}; the next run writes it again from its inputs"]
    assert manifest_of(version)["complete"] is False
    assert verify(store.root).ok


# ---- LATEST ------------------------------------------------------------------------------------------


def test_latest_naming_nothing_is_named(store):
    write_version(store)
    store.write_text("", "toy", "LATEST")
    assert problems(verify(store.root)) == [("toy/LATEST", "points at nothing, which is not a complete version")]


def test_repair_points_latest_at_the_newest_complete_version(store):
    # The newest by when it finished, neither the first nor the last by name.
    first, newest, last = sorted((write_version(store, salt=salt, latest=False) for salt in "abc"),
                                 key=lambda v: v.version)
    for version, finished in ((first, "2026-01-01T00:00:00Z"), (newest, "2026-03-01T00:00:00Z"),
                              (last, "2026-02-01T00:00:00Z")):
        store.write_json({**manifest_of(version), "finished": finished}, version.manifest_path)
    partial = write_version(store, salt="d", complete=False)
    point_latest(store, "toy", partial.version)
    report = verify(store.root, repair=True)
    assert problems(report) == [("toy/LATEST", f"points at {partial.version}, which is not a complete version")]
    assert report.repaired == [f"pointed toy/LATEST at {newest.version}, the newest complete version"]
    assert latest_pointer(store, "toy") == newest.version
    assert verify(store.root).ok


def test_latest_at_a_complete_version_beside_a_damaged_one_is_fine(store):
    versions = sorted([write_version(store, salt=salt, latest=False) for salt in ("a", "b")], key=lambda v: v.version)
    damaged, pointed = versions
    point_latest(store, "toy", pointed.version)
    store.write_bytes(b"{", damaged.manifest_path)
    assert [path for path, _ in problems(verify(store.root))] == [damaged.manifest_path]


def test_no_latest_is_fine(store):
    write_version(store, latest=False)
    assert verify(store.root, repair=True).ok
    assert latest_pointer(store, "toy") is None


# ---- commit records ----------------------------------------------------------------------------------


def test_a_damaged_commit_record_is_named_and_repair_withdraws_its_shard(store):
    version = write_version(store)
    store.write_bytes(b"{", version.record_path(1))
    report = verify(store.root)
    assert problems(report)[:2] == [
        (version.record_path(1), "damaged commit record (Expecting property name enclosed in double quotes: line 1 "
                                 "column 2 (char 1))"),
        (version.path, "marked complete but shard(s) [1] have no commit record")]
    # its parts are no longer accounted for
    assert sorted(problems(report)[2:]) == [(part(version, 1, failures=True), "not committed (a stray file)"),
                                            (part(version, 1), "not committed (a stray file)")]
    assert (report.shards, report.items) == (2, 3)
    repaired = verify(store.root, repair=True)
    assert repaired.repaired == [f"withdrew shard 1 of {version.path}; the next run recomputes it",
                                 f"marked {version.path} partial",
                                 "removed toy/LATEST: no version of toy is complete"]
    assert not store.exists(version.record_path(1)) and not store.exists(part(version, 1))
    assert verify(store.root).ok


# ---- a version a live driver is writing --------------------------------------------------------------


def test_a_version_under_a_live_lease_is_checked_only_for_what_it_committed(store):
    version = write_version(store, complete=False, latest=False)
    version.withdraw(2)
    staged = version.stage_shard(2, rows_table(["v-004"]), failures_table([]), {})
    store.delete(part(version, 1))
    with version.lease(ttl_seconds=60):
        report = verify(store.root)
        assert problems(report) == [(part(version, 1), "committed part is missing")]
        assert report.in_progress == [version.path]
        assert report.render().splitlines()[1] == (
            f"in progress (lease held, only committed shards checked): {version.path}")
        repaired = verify(store.root, repair=True)
        assert repaired.repaired == [f"withdrew shard 1 of {version.path}; the next run recomputes it"]
        assert all(store.exists(file["staged"]) for file in staged)  # the driver's, not a stray
    assert sorted(path for path, _ in problems(verify(store.root))) == sorted(file["staged"] for file in staged)


def test_a_folder_with_only_a_live_lease_is_a_driver_about_to_plan(store):
    write_version(store)
    folder = Version(store, "toy", "0123456789ab")
    with folder.lease(ttl_seconds=60):
        report = verify(store.root)
        assert report.ok and report.versions == 1 and report.in_progress == []


@pytest.mark.parametrize("lease, live", [
    ({"heartbeat_age": 30, "ttl_seconds": 60}, True),
    ({"heartbeat_age": 90, "ttl_seconds": 60}, False),
    ({"heartbeat_age": 90, "ttl_seconds": 120}, True),
    ({"heartbeat_age": 59}, True),  # no ttl recorded: 60 s
    ({"heartbeat_age": 60.5}, False),
    ({"ttl_seconds": 60}, False),  # no heartbeat: never
])
def test_a_lease_is_live_while_its_heartbeat_is_within_its_ttl(store, lease, live):
    write_version(store)
    folder = Version(store, "toy", "0123456789ab")
    record = {"owner": "elsewhere:1:abcd", "host": "elsewhere", "pid": 1}
    if "heartbeat_age" in lease:
        record["heartbeat"] = time.time() - lease["heartbeat_age"]
    if "ttl_seconds" in lease:
        record["ttl_seconds"] = lease["ttl_seconds"]
    store.write_json(record, folder.path, "_lease.json")
    report = verify(store.root)
    assert problems(report) == ([] if live else [(folder.path, "folder with no _manifest.json (not a version)")])


# ---- the report --------------------------------------------------------------------------------------


def test_render_is_one_line_per_finding_then_repairs_then_the_verdict():
    report = Report("/out", findings=[Finding("toy", "abc", "toy/abc/part-00000.parquet",
                                              "committed part is not readable Parquet (thrift:\n  Invalid data)\n", 0),
                                      Finding("toy", None, "toy/LATEST", "points at nothing")],
                    repaired=["withdrew shard 0 of toy/abc"], versions=2, shards=7, items=40,
                    in_progress=["toy/def"])
    assert not report.ok
    assert report.render() == "\n".join([
        "/out/toy/abc/part-00000.parquet: committed part is not readable Parquet (thrift: Invalid data)",
        "/out/toy/LATEST: points at nothing",
        "repaired: withdrew shard 0 of toy/abc",
        "in progress (lease held, only committed shards checked): toy/def",
        "verify /out: 2 problem(s), 1 repair(s) made; checked 2 versions, 7 shards, 40 items"])
    assert Report("/out", repaired=["removed x"]).render().splitlines()[-1] == (
        "verify /out: OK, 1 repair(s) made; checked 0 versions, 0 shards, 0 items")


def test_every_version_of_every_stage_is_counted(store):
    write_version(store, salt="a")
    write_version(store, salt="b", complete=False, latest=False)
    write_version(store, stage="other", n=3)
    report = verify(store.root)
    assert report.ok and (report.versions, report.shards, report.items) == (3, 8, 13)


def test_a_complete_version_without_a_key_needs_no_plan(store):
    version = write_version(store, key=None, plan=False)
    report = verify(store.root, repair=True)
    assert report.ok and report.repaired == []
    assert manifest_of(version)["complete"] is True


@pytest.mark.parametrize("held, problem", [
    ((["v-002"], []), "items not exactly once: lost ['v-003']"),
    ((["v-002", "v-003", "v-003"], []), "items not exactly once: repeated ['v-003']"),
    ((["v-002", "v-003", "v-005"], []), "items not exactly once: not planned ['v-005']"),
])
def test_a_partial_version_is_held_to_its_plan_shard_by_shard(store, held, problem):
    version = write_version(store, complete=False, latest=False, shards={1: held})
    assert problems(verify(store.root)) == [(part(version, 1), problem)]

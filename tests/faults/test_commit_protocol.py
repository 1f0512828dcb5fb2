"""Faults against the commit protocol, the lease and `tvr verify`, on a toy stage (fast, no videos)."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from toy import TOY, FailingStore, ToyConfig, read, toy_inputs

from pipeline.cli import main
from pipeline.flow import verify_outputs
from pipeline.run.runner import OutputWriteError, RunnerConfig, run_stage, stage_version
from pipeline.store.lease import LeaseHeldError, LeaseLostError
from pipeline.store.storage import Store, parquet_bytes
from pipeline.store.version import DamagedOutputError, Version, latest

RUNNER = RunnerConfig(rows_per_shard=3, progress=False)


@pytest.fixture
def done(tmp_path, ray_session):
    """A complete toy version of 10 items (4 shards), two of them failures."""
    store = Store.open(str(tmp_path / "out"))
    inputs = toy_inputs(store, 10, bad={2, 7})
    result = run_stage(store, TOY, ToyConfig(), inputs, RUNNER)
    return store, inputs, result.version


def _part(store: Store, version: str, shard: int, failures: bool = False) -> str:
    folder = Version(store, "toy", version).failures_path if failures else f"toy/{version}"
    return store.path(folder, f"part-{shard:05d}.parquet")


def test_verify_passes_on_a_clean_run(done):
    store, _, _ = done
    report = verify_outputs(store.root)
    assert report.ok, report.render()
    assert report.items == 10 + 10  # the toy items, and the manifest's videos


def test_verify_of_a_stage_not_there_is_a_one_line_usage_error(done, capsys):
    store, _, _ = done
    assert main(["verify", store.root, "--stage", "tyo"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "has no output of stage 'tyo'" in error and "toy" in error


@pytest.mark.parametrize("damage", ["append_byte", "remove_byte", "delete_part", "flip_byte"])
def test_verify_fails_on_a_damaged_part_and_repair_recomputes_only_it(done, damage):
    store, inputs, version = done
    path = _part(store, version, 1)
    data = open(path, "rb").read()
    if damage == "append_byte":
        open(path, "ab").write(b"x")
    elif damage == "remove_byte":
        open(path, "wb").write(data[:-1])
    elif damage == "delete_part":
        os.remove(path)
    else:  # same size, same footer: only the sha256 tells
        middle = len(data) // 2
        open(path, "wb").write(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])

    report = verify_outputs(store.root)
    assert not report.ok
    assert [f.path for f in report.findings] == [f"toy/{version}/part-00001.parquet"]

    if damage != "flip_byte":  # the cheap check a run makes: size and footer
        with pytest.raises(DamagedOutputError, match="part-00001.parquet"):
            run_stage(store, TOY, ToyConfig(), inputs, RUNNER)

    repaired = verify_outputs(store.root, repair=True)
    assert any("withdrew shard 1" in line for line in repaired.repaired)
    assert verify_outputs(store.root).ok  # partial now, but consistent
    rerun = run_stage(store, TOY, ToyConfig(), inputs, RUNNER)
    assert rerun.computed_items == 3 and (rerun.rows, rerun.failures) == (8, 2)
    assert verify_outputs(store.root).ok
    assert sorted(read(store, "toy", version)["video_id"].to_pylist()) == [
        f"v-{i:03d}" for i in range(10) if i not in (2, 7)]


def test_a_complete_version_missing_a_record_and_its_part_is_not_up_to_date(done):
    store, inputs, version = done
    Version(store, "toy", version).withdraw(1)  # record and parts gone, the record still says complete
    with pytest.raises(DamagedOutputError, match=r"marked complete but shard\(s\) \[1\] have no commit record"):
        run_stage(store, TOY, ToyConfig(), inputs, RUNNER)
    assert main(["verify", store.root, "--repair"]) == 0
    rerun = run_stage(store, TOY, ToyConfig(), inputs, RUNNER)
    assert rerun.computed_items == 3 and (rerun.rows, rerun.failures) == (8, 2)


@pytest.mark.leaves_damage
def test_an_unreadable_footer_is_one_line_in_verify(done, capsys):
    """pyarrow's thrift errors end in a newline; verify's listing keeps one line per finding."""
    store, _, version = done
    path = _part(store, version, 1)
    data = open(path, "rb").read()
    footer = int.from_bytes(data[-8:-4], "little")  # same size, garbage footer
    open(path, "wb").write(data[:len(data) - 8 - footer] + bytes(footer) + data[-8:])
    capsys.readouterr()
    assert main(["verify", store.root]) == 1
    out = capsys.readouterr().out
    assert f"{path}: committed part is not readable Parquet (Couldn't deserialize thrift: TProtocolException: " \
           f"Invalid data)\n" in out
    assert all(line.startswith((store.root, "verify ")) for line in out.splitlines()), out


def test_garbage_manifest_is_named_and_repair_rebuilds_it(done):
    store, inputs, version = done
    manifest = store.path("toy", version, "_manifest.json")
    with open(manifest, "wb") as handle:
        handle.write(b"\x00garbage{")
    with pytest.raises(DamagedOutputError, match=f"{manifest} is damaged"):
        run_stage(store, TOY, ToyConfig(), inputs, RUNNER)
    assert not verify_outputs(store.root).ok
    verify_outputs(store.root, repair=True)
    rerun = run_stage(store, TOY, ToyConfig(), inputs, RUNNER)
    assert rerun.computed_items == 0 and rerun.items == 10  # every shard was still committed
    assert verify_outputs(store.root).ok


def test_stray_and_uncommitted_files_are_found_and_removed(done):
    store, _, version = done
    stray = store.path("toy", version, "part-00099.parquet")
    with open(stray, "wb") as handle:
        handle.write(open(_part(store, version, 0), "rb").read())
    os.makedirs(store.path("toy", version, "_staging", "dead"))
    with open(store.path("toy", version, "_staging", "dead", "part-00001.parquet"), "wb") as handle:
        handle.write(b"half")
    report = verify_outputs(store.root)
    assert {f.path for f in report.findings} == {f"toy/{version}/part-00099.parquet",
                                                 f"toy/{version}/_staging/dead/part-00001.parquet"}
    verify_outputs(store.root, repair=True)
    assert verify_outputs(store.root).ok and not os.path.exists(stray)


def _rewrite_part(store: Store, version: str, shard: int, table: pa.Table) -> None:
    """Replace a committed part and make its commit record agree with it (only the plan can tell)."""
    path = _part(store, version, shard)
    data = parquet_bytes(table.replace_schema_metadata(None))
    open(path, "wb").write(data)
    record_path = store.path("toy", version, "_commits", f"part-{shard:05d}.json")
    record = json.load(open(record_path))
    record["files"][0].update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), rows=table.num_rows)
    record["items"] += table.num_rows - record["rows"]
    record["rows"] = table.num_rows
    json.dump(record, open(record_path, "w"))


@pytest.mark.leaves_damage
def test_a_duplicated_item_is_found(done):
    """A part whose rows repeat an item (and match their own record) breaks exactly-once; only
    the plan shows it."""
    store, _, version = done
    table = pq.read_table(_part(store, version, 0))
    _rewrite_part(store, version, 0, pa.concat_tables([table, table.slice(0, 1)]))
    report = verify_outputs(store.root)
    assert (f"toy/{version}/part-00000.parquet", "items not exactly once: repeated ['v-000']") in [
        (f.path, f.problem) for f in report.findings]


def test_a_lost_item_is_found_and_repair_recomputes_it(done):
    """A part and its record that agree but lack an item of the plan: only the plan shows it."""
    store, inputs, version = done
    table = pq.read_table(_part(store, version, 1))  # v-003, v-004, v-005
    _rewrite_part(store, version, 1, table.slice(1))
    report = verify_outputs(store.root)
    assert (f"toy/{version}/part-00001.parquet", "items not exactly once: lost ['v-003']") in [
        (f.path, f.problem) for f in report.findings]
    assert main(["verify", store.root, "--repair"]) == 0
    rerun = run_stage(store, TOY, ToyConfig(), inputs, RUNNER)
    assert rerun.computed_items == 3 and (rerun.rows, rerun.failures) == (8, 2)


@pytest.mark.leaves_damage
def test_latest_pointing_at_a_partial_version_is_a_finding(done):
    store, _, version = done
    Version(store, "toy", version).write_manifest({**Version(store, "toy", version).manifest(), "complete": False})
    report = verify_outputs(store.root)
    assert any(f.path == "toy/LATEST" for f in report.findings)


# ---- one writer per version ----------------------------------------------------------------------


def test_second_driver_stops_naming_the_holder(done):
    store, inputs, _ = done
    other = stage_version(TOY, ToyConfig(factor=9), inputs)
    with Version(store, "toy", other).lease(ttl_seconds=30):
        with pytest.raises(LeaseHeldError, match=f"toy {other} is being written by {socket.gethostname()}:"):
            run_stage(store, TOY, ToyConfig(factor=9), inputs, RUNNER)
    assert Version(store, "toy", other).manifest() is None  # the second driver wrote nothing


def test_second_driver_waits_for_the_lease(done):
    store, inputs, version = done
    holder = Version(store, "toy", version + "x").lease()  # any version: the lease, not the data, is tested
    holder.acquire()
    waiter = Version(store, "toy", version + "x").lease(wait_seconds=5)
    threading.Timer(0.5, holder.release).start()
    started = time.monotonic()
    waiter.acquire()
    assert 0.4 < time.monotonic() - started < 5
    waiter.release()


def test_a_live_drivers_lease_is_never_taken_over(tmp_path):
    """The heartbeat keeps a lease held past its ttl for as long as its driver lives."""
    store = Store.open(str(tmp_path / "out"))
    live = Version(store, "toy", "v1").lease(ttl_seconds=1)
    live.acquire()
    try:
        time.sleep(2.5)  # longer than the ttl: only the heartbeat (every ttl / 4) keeps it fresh
        with pytest.raises(LeaseHeldError, match="is being written by"):
            Version(store, "toy", "v1").lease(ttl_seconds=1).acquire()
        live.ensure_held()
    finally:
        live.release()


def test_expired_lease_is_taken_over_and_loser_cannot_commit(done):
    store, inputs, _ = done
    stale = Version(store, "toy", "v1").lease(ttl_seconds=1)
    stale.acquire()
    stale._stop.set()  # the heartbeat stops, as when a driver is frozen or its host died
    stale._thread.join()
    time.sleep(1.2)
    fresh = Version(store, "toy", "v1").lease(ttl_seconds=1)
    fresh.acquire()  # takes over the expired lease
    with pytest.raises(LeaseLostError, match="now held by"):
        stale.ensure_held()
    fresh.ensure_held()
    fresh.release()


def test_lease_of_a_dead_local_process_is_taken_over_at_once(done):
    store, inputs, _ = done
    version = stage_version(TOY, ToyConfig(factor=4), inputs)
    dead = {"owner": "dead", "host": socket.gethostname(), "pid": 2**22 + 12345, "heartbeat": time.time(),
            "ttl_seconds": 600}
    store.write_json(dead, "toy", version, "_lease.json")
    result = run_stage(store, TOY, ToyConfig(factor=4), inputs, RUNNER)
    assert result.items == 10 and not store.exists("toy", version, "_lease.json")


# Set when a driver first tries to create a lease file (module-level: the store is pickled to Ray).
LEASE_TRIED = threading.Event()


@dataclass(frozen=True)
class LeaseWatchingStore(Store):
    def create_exclusive(self, data: bytes, *parts: str) -> bool:
        if parts and parts[-1].endswith("_lease.json"):
            LEASE_TRIED.set()
        return super().create_exclusive(data, *parts)


def test_complete_version_is_never_marked_partial_by_a_late_driver(done):
    """A driver that saw the version unfinished, then waited for the lease while another driver
    finished it, re-reads the record under the lease and stops there."""
    store, inputs, version = done
    output = Version(store, "toy", version)
    finished = output.manifest()
    unfinished = {k: v for k, v in finished.items() if k not in ("finished", "rows", "failures")}
    output.write_manifest({**unfinished, "complete": False})
    other = output.lease(ttl_seconds=30)
    other.acquire()  # the driver that is finishing the version
    LEASE_TRIED.clear()
    late: dict = {}
    watching = LeaseWatchingStore(store.fs, store.root)
    runner = RunnerConfig(rows_per_shard=3, progress=False, lease_wait_seconds=30)
    driver = threading.Thread(target=lambda: late.update(result=run_stage(watching, TOY, ToyConfig(), inputs,
                                                                          runner)))
    driver.start()
    assert LEASE_TRIED.wait(30)  # the late driver read the version unfinished and now waits for the lease
    output.write_manifest(finished)
    other.release()
    driver.join(60)
    assert late["result"].up_to_date and late["result"].computed_items == 0
    assert output.manifest() == finished  # not planned again, not marked partial, not re-finished


# ---- write errors ----------------------------------------------------------------------------


def test_full_disk_in_a_worker_stops_the_run_naming_the_path(tmp_path, ray_session):
    good = Store.open(str(tmp_path / "out"))
    inputs = toy_inputs(good, 12)
    full = FailingStore(good.fs, good.root, fail_on="failures-part-00002")
    with pytest.raises(OutputWriteError) as raised:
        run_stage(full, TOY, ToyConfig(), inputs, RunnerConfig(rows_per_shard=3, max_workers=1, progress=False))
    message = str(raised.value)
    assert "cannot write" in message and "failures-part-00002.parquet: No space left on device" in message
    assert "shards committed" in message and "lost its worker" not in message
    resumed = run_stage(good, TOY, ToyConfig(), inputs, RUNNER)  # space freed: the rest is computed
    assert resumed.items == 12 and resumed.computed_items < 12
    assert verify_outputs(good.root).ok


def test_full_disk_at_commit_stops_the_run(tmp_path, ray_session):
    good = Store.open(str(tmp_path / "out"))
    inputs = toy_inputs(good, 6)
    full = FailingStore(good.fs, good.root, fail_on="_commits/part-00001")
    with pytest.raises(OutputWriteError, match="_commits/part-00001.json: No space left on device"):
        run_stage(full, TOY, ToyConfig(), inputs, RUNNER)
    assert verify_outputs(good.root).ok  # what is there is consistent
    assert run_stage(good, TOY, ToyConfig(), inputs, RUNNER).items == 6
    assert Version(good, "toy", latest(good, "toy").version).commits().keys() == {0, 1}


def test_two_drivers_at_once_one_computes_the_other_stops(tmp_path, ray_session):
    store = Store.open(str(tmp_path / "out"))
    inputs = toy_inputs(store, 8, slow=set(range(8)))
    runner = RunnerConfig(rows_per_shard=2, max_workers=1, progress=False)
    first: dict = {}
    driver = threading.Thread(target=lambda: first.update(result=run_stage(store, TOY, ToyConfig(), inputs, runner)))
    driver.start()
    version = stage_version(TOY, ToyConfig(), inputs)
    deadline = time.monotonic() + 60
    while not store.exists("toy", version, "_lease.json"):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with pytest.raises(LeaseHeldError, match="is being written by"):
        run_stage(store, TOY, ToyConfig(), inputs, runner)
    driver.join()
    assert first["result"].items == 8 and not first["result"].up_to_date
    assert verify_outputs(store.root).ok
    assert Version(store, "toy", version).manifest()["complete"]


def test_a_half_written_commit_record_is_not_a_record(done):
    """A driver killed inside the record's write leaves `_commits/.tmp-<hex>-part-N.json`: the
    rerun recomputes that shard, and verify calls the file a stray, not a damaged record."""
    store, inputs, version = done
    Version(store, "toy", version).withdraw(3)
    Version(store, "toy", version).write_manifest({**Version(store, "toy", version).manifest(), "complete": False})
    store.delete("toy", "LATEST")  # the version never completed
    temporary = store.path("toy", version, "_commits", ".tmp-26aa5452-part-00003.json")
    open(temporary, "wb").close()
    report = verify_outputs(store.root)
    assert [(f.path, f.problem) for f in report.findings] == [
        (f"toy/{version}/_commits/.tmp-26aa5452-part-00003.json", "not committed (a stray file)")]
    rerun = run_stage(store, TOY, ToyConfig(), inputs, RUNNER)
    assert rerun.computed_items == 1 and not os.path.exists(temporary)
    assert verify_outputs(store.root).ok

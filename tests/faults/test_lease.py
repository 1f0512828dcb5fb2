"""One writer per version: the lease file, its heartbeat, waiting for it, taking it over (no Ray, small ttls)."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field

import pytest

from pipeline.store import lease as lease_module
from pipeline.store.lease import Lease, LeaseHeldError, LeaseLostError
from pipeline.store.storage import StorageError, Store
from pipeline.store.version import Version

HOST = socket.gethostname()
PATH = "toy/v1/_lease.json"
DEAD_PID = 2**22 + 12345  # above Linux's largest pid_max: no process has it
TTL = 0.4  # seconds: heartbeats every 0.1 s


@pytest.fixture
def store(tmp_path) -> Store:
    return Store.open(str(tmp_path / "out"))


def lease(store: Store, ttl: float = 30.0, wait: float = 0.0) -> Lease:
    return Version(store, "toy", "v1").lease(ttl_seconds=ttl, wait_seconds=wait)


def write_holder(store: Store, **fields) -> dict:
    record = {"owner": "other:42:cafe0000", "host": "elsewhere", "pid": DEAD_PID, "since": "2026-01-01T00:00:00+00:00",
              "heartbeat": time.time(), "ttl_seconds": 30.0, **fields}
    store.write_bytes(json.dumps(record).encode(), PATH)
    return record


def on_disk(store: Store) -> dict:
    return json.loads(store.read_bytes(PATH))


class Clock:
    """Stands in for the `time` module inside pipeline.store.lease: wall and monotonic time stand
    still except while the code sleeps, so ages, deadlines and polls are exact."""

    def __init__(self, now: float = 2.0**20):  # a power of two: sums of halves stay exact
        self.now = now
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(lease_module, "time", clock)
    return clock


@dataclass(frozen=True)
class RecordingStore(Store):
    """A real local store that notes when the lease file is rewritten (the heartbeat) and can be
    told to fail writes or deletes, as a full or read-only disk would."""

    writes: list = field(default_factory=list)
    failing: set = field(default_factory=set)  # of "write", "delete", "delete-stale", "move-once"

    def write_bytes(self, data: bytes, *parts: str) -> None:
        if parts[-1].endswith("_lease.json"):
            if "write" in self.failing:
                raise StorageError(self.path(*parts), OSError(28, "No space left on device"))
            self.writes.append(time.monotonic())
        super().write_bytes(data, *parts)

    def delete(self, *parts: str) -> None:
        name = parts[-1].rpartition("/")[2]
        if "delete" in self.failing and name == "_lease.json":
            raise StorageError(self.path(*parts), OSError(30, "Read-only file system"))
        if "delete-stale" in self.failing and name.startswith(".tmp-expired-"):
            raise StorageError(self.path(*parts), OSError(5, "Input/output error"))
        super().delete(*parts)

    def move(self, source: str, destination: str) -> None:
        if "move-once" in self.failing:
            # Another driver taking over at the same moment moved the expired lease aside first.
            self.failing.discard("move-once")
            super().delete(source)
            raise StorageError(self.path(source), FileNotFoundError(2, "No such file or directory"))
        super().move(source, destination)


@pytest.fixture
def recording(tmp_path) -> RecordingStore:
    return RecordingStore.open(str(tmp_path / "out"))


# ---- taking and giving back ----------------------------------------------------------------------


def test_acquire_writes_who_holds_the_version_and_release_removes_it(store):
    before = time.time()
    with lease(store, ttl=30) as held:
        record = on_disk(store)
        assert held.holder() == record
        assert set(record) == {"owner", "host", "pid", "since", "heartbeat", "ttl_seconds"}
        assert record["owner"] == held.owner
        assert re.fullmatch(rf"{re.escape(HOST)}:{os.getpid()}:[0-9a-f]{{8}}", held.owner)
        assert (record["host"], record["pid"], record["ttl_seconds"]) == (HOST, os.getpid(), 30)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", record["since"])
        assert before <= record["heartbeat"] <= time.time()
        held.ensure_held()
        assert held.lost is False
    assert not store.exists(PATH) and held.holder() is None
    assert store.list_files("toy/v1") == []  # nothing left beside it either


def test_a_lease_defaults_to_a_minute_and_no_wait(store, clock):
    default = Lease(store, PATH, "toy v1")
    default.acquire()
    assert on_disk(store)["ttl_seconds"] == 60.0
    other = Lease(store, PATH, "toy v1")
    with pytest.raises(LeaseHeldError, match="expires 60 s from now"):
        other.acquire()
    assert clock.sleeps == []  # no wait: it stops at once
    default.release()


def test_a_held_lease_beats_in_a_named_daemon_thread_that_release_stops(store):
    # Named for stack dumps; a daemon, so a driver that dies without releasing still exits.
    held = lease(store)
    held.acquire()
    (beating,) = [t for t in threading.enumerate() if t.name == "lease toy v1"]
    assert beating.daemon and beating.is_alive()
    held.release()
    assert not beating.is_alive()


def test_each_lease_has_its_own_owner(store):
    first, second = lease(store), lease(store)
    assert first.owner != second.owner and first.owner.rsplit(":", 1)[0] == second.owner.rsplit(":", 1)[0]


def test_releasing_a_lease_never_taken_does_nothing(store):
    never = lease(store)
    never.release()
    assert not store.exists(PATH)
    record = write_holder(store)
    lease(store).release()  # someone else's lease stays
    assert on_disk(store) == record


def test_second_driver_stops_naming_the_holder(store, clock):
    write_holder(store, heartbeat=clock.now - 10, ttl_seconds=60)
    with pytest.raises(LeaseHeldError) as raised:
        lease(store, ttl=60).acquire()
    assert str(raised.value) == (
        f"toy v1 is being written by other:42:cafe0000 (pid {DEAD_PID} on elsewhere, since 2026-01-01T00:00:00+00:00, "
        "heartbeat 10 s ago); wait for it to finish, or set runner.lease_wait_seconds to wait. If that process is "
        "dead, its lease expires 50 s from now")
    assert clock.sleeps == []


def test_a_holder_without_names_is_shown_with_question_marks(store, clock):
    store.write_bytes(json.dumps({"heartbeat": clock.now - 29.8}).encode(), PATH)
    with pytest.raises(LeaseHeldError) as raised:
        lease(store, ttl=30).acquire()
    assert "being written by ? (pid ? on ?, since ?, heartbeat 30 s ago)" in str(raised.value)
    assert str(raised.value).endswith("its lease expires 0 s from now")


def test_a_lease_is_held_up_to_exactly_its_ttl(store, clock):
    write_holder(store, heartbeat=clock.now - 30)
    with pytest.raises(LeaseHeldError, match="heartbeat 30 s ago.*expires 0 s from now"):
        lease(store, ttl=30).acquire()


def test_a_heartbeat_in_the_future_counts_as_fresh(store, clock):
    # Another machine's clock runs ahead: its lease is held, and expires the ttl after its heartbeat.
    write_holder(store, heartbeat=clock.now + 5)
    with pytest.raises(LeaseHeldError, match="heartbeat -5 s ago.*expires 35 s from now"):
        lease(store, ttl=30).acquire()


def test_a_waiting_driver_polls_at_most_every_second_until_its_deadline(store, clock):
    write_holder(store, heartbeat=clock.now - 0.5)
    with pytest.raises(LeaseHeldError, match="heartbeat 3 s ago"):
        lease(store, ttl=30, wait=2.5).acquire()
    assert clock.sleeps == [1.0, 1.0, 0.5]


def test_a_short_wait_still_polls_after_50_ms(store, clock):
    write_holder(store, heartbeat=clock.now)
    with pytest.raises(LeaseHeldError):
        lease(store, ttl=30, wait=0.01).acquire()
    assert clock.sleeps == [0.05]


def test_second_driver_waits_then_gets_the_lease(store):
    holder = lease(store)
    holder.acquire()
    waiter = lease(store, wait=3)
    threading.Timer(0.3, holder.release).start()
    started = time.monotonic()
    waiter.acquire()
    assert 0.25 < time.monotonic() - started < 2
    assert on_disk(store)["owner"] == waiter.owner
    waiter.release()


def test_a_lease_released_between_two_looks_is_taken(store, monkeypatch):
    # The holder releases after our create failed and before we read it: we try again, not fail.
    taken = lease(store)
    real_create = Store.create_exclusive
    calls = []

    def create_after_a_race(self, data, *parts):
        calls.append(parts)
        return False if len(calls) == 1 else real_create(self, data, *parts)

    monkeypatch.setattr(Store, "create_exclusive", create_after_a_race)
    taken.acquire()
    assert len(calls) == 2 and on_disk(store)["owner"] == taken.owner
    taken.release()


# ---- expiry and take-over ------------------------------------------------------------------------


def test_an_expired_lease_is_taken_over(store, caplog):
    write_holder(store, heartbeat=time.time() - 31)
    fresh = lease(store, ttl=30)
    with caplog.at_level(logging.WARNING, logger="pipeline.store.lease"):
        fresh.acquire()
    assert on_disk(store)["owner"] == fresh.owner
    assert store.list_files("toy/v1") == ["_lease.json"]  # the expired one moved aside, then deleted
    assert caplog.messages == ["toy v1: the lease of other:42:cafe0000 expired (no heartbeat for 31 s, or its "
                               "process is gone); taking it over"]
    fresh.release()


def test_two_drivers_taking_over_at_once_both_go_on(recording):
    # The other driver moved the expired lease aside first: ours finds it gone and creates its own.
    write_holder(recording, heartbeat=time.time() - 100)
    recording.failing.add("move-once")
    fresh = lease(recording)
    fresh.acquire()
    assert "move-once" not in recording.failing and on_disk(recording)["owner"] == fresh.owner
    fresh.release()


def test_a_take_over_cut_short_leaves_only_a_temporary(recording):
    write_holder(recording, heartbeat=time.time() - 100)
    recording.failing.add("delete-stale")
    with pytest.raises(StorageError, match="Input/output error"):
        lease(recording).acquire()
    (stale,) = recording.list_files("toy/v1")
    assert re.fullmatch(r"\.tmp-expired-[0-9a-f]{8}-_lease\.json", stale)
    recording.failing.clear()
    assert recording.remove_temporaries("toy/v1") == 1  # what a rerun clears


def test_the_lease_of_a_dead_local_process_is_taken_over_at_once(store):
    write_holder(store, host=HOST, pid=DEAD_PID, heartbeat=time.time())
    fresh = lease(store, ttl=600)
    fresh.acquire()
    assert on_disk(store)["owner"] == fresh.owner
    fresh.release()


@pytest.mark.parametrize("fields", [
    {"host": "elsewhere", "pid": DEAD_PID},  # a pid on another machine says nothing here
    {"host": HOST, "pid": str(DEAD_PID)},  # not a pid
    {"host": HOST, "pid": None},
], ids=["other-host", "pid-text", "no-pid"])
def test_a_fresh_lease_of_a_process_not_known_dead_is_kept(store, fields):
    write_holder(store, **fields)
    with pytest.raises(LeaseHeldError, match="other:42:cafe0000"):
        lease(store).acquire()


def test_a_live_local_holder_is_kept_and_never_signalled(store):
    alive = subprocess.Popen(["sleep", "30"])
    try:
        write_holder(store, host=HOST, pid=alive.pid)
        with pytest.raises(LeaseHeldError, match="other:42:cafe0000"):
            lease(store).acquire()
        assert alive.poll() is None  # only asked whether it lives (signal 0)
    finally:
        alive.kill()
        alive.wait()


def test_a_process_of_another_user_counts_as_alive(store, monkeypatch):
    write_holder(store, host=HOST, pid=DEAD_PID)

    def not_allowed(pid, signal):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(lease_module.os, "kill", not_allowed)
    with pytest.raises(LeaseHeldError):
        lease(store).acquire()


@pytest.mark.parametrize("content", [
    b"{\"owner\": \"half-writ", b"\xff\xfe garbage", b"[1, 2]", b"null", b"42",
    b'{"owner": "x", "heartbeat": "soon", "ttl_seconds": 30}',
    b'{"owner": "x", "heartbeat": true, "ttl_seconds": 30}',
    b'{"owner": "x", "heartbeat": NaN, "ttl_seconds": 30}',
    b'{"owner": "x", "heartbeat": Infinity, "ttl_seconds": 30}',
    b'{"owner": "x", "heartbeat": null, "ttl_seconds": 30}',
    b'{"owner": "x", "heartbeat": 1e300, "ttl_seconds": "30"}',
    b'{"owner": "x", "heartbeat": 1e300, "ttl_seconds": false}',
    b'{"owner": "x", "heartbeat": 1e300, "ttl_seconds": -Infinity}',
], ids=["half", "bytes", "list", "null", "number", "heartbeat-text", "heartbeat-bool", "heartbeat-nan",
        "heartbeat-inf", "heartbeat-null", "ttl-text", "ttl-bool", "ttl-inf"])
def test_an_unreadable_lease_counts_as_expired(store, content):
    store.write_bytes(content, PATH)
    assert lease(store).holder() == {"owner": "unreadable lease", "heartbeat": 0}
    fresh = lease(store, ttl=600)
    fresh.acquire()
    assert on_disk(store)["owner"] == fresh.owner
    fresh.release()


def test_a_lease_that_cannot_be_read_counts_as_expired(store, monkeypatch):
    write_holder(store)

    def failing_read(self, *parts):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Store, "read_bytes", failing_read)
    assert lease(store).holder() == {"owner": "unreadable lease", "heartbeat": 0}


def test_a_lease_with_whole_numbers_and_without_a_ttl_is_read_as_written(store):
    record = {"owner": "old", "heartbeat": int(time.time()) + 1}
    store.write_bytes(json.dumps(record).encode(), PATH)
    assert lease(store).holder() == record
    with pytest.raises(LeaseHeldError, match="being written by old"):
        lease(store).acquire()


def test_a_lease_without_a_heartbeat_is_expired(store):
    store.write_bytes(b'{"owner": "x", "ttl_seconds": 30}', PATH)
    fresh = lease(store, ttl=600)
    fresh.acquire()
    assert on_disk(store)["owner"] == fresh.owner
    fresh.release()


# ---- the heartbeat and losing the lease ----------------------------------------------------------


def test_the_heartbeat_keeps_a_live_lease_fresh(recording):
    live = lease(recording, ttl=TTL)
    live.acquire()
    first = on_disk(recording)
    try:
        time.sleep(2.5 * TTL)  # past its ttl: only the heartbeat keeps it
        with pytest.raises(LeaseHeldError, match=re.escape(live.owner)):
            lease(recording, ttl=TTL).acquire()
        record = on_disk(recording)
        assert record["heartbeat"] > first["heartbeat"] and record["since"] == first["since"]
        assert {k: v for k, v in record.items() if k != "heartbeat"} == {
            k: v for k, v in first.items() if k != "heartbeat"}
        live.ensure_held()
    finally:
        live.release()
    gaps = [b - a for a, b in zip(recording.writes, recording.writes[1:], strict=False)]
    assert len(gaps) >= 3
    # Every ttl / 4: often enough to survive a late beat or two, not so often that it loads the store.
    assert min(gaps) > 0.95 * TTL / 4 and max(gaps) < 0.75 * TTL
    assert not recording.exists(PATH)


def test_the_heartbeat_of_a_lease_with_a_tiny_ttl_beats_every_50_ms(recording):
    live = lease(recording, ttl=0.02)
    live.acquire()
    time.sleep(0.3)
    live.release()
    gaps = [b - a for a, b in zip(recording.writes, recording.writes[1:], strict=False)]
    assert len(gaps) >= 2 and min(gaps) > 0.045


def test_a_heartbeat_that_cannot_write_warns_and_keeps_beating(recording, caplog):
    live = lease(recording, ttl=TTL)
    live.acquire()
    with caplog.at_level(logging.WARNING, logger="pipeline.store.lease"):
        recording.failing.add("write")
        time.sleep(TTL / 2)
        recording.failing.discard("write")
        stalled = on_disk(recording)["heartbeat"]
        time.sleep(TTL / 2)
    assert on_disk(recording)["heartbeat"] > stalled  # it beats again once the disk recovers
    assert f"could not renew the lease of toy v1: cannot write {recording.path(PATH)}: No space left on device" \
        in caplog.messages
    assert not live.lost
    live.ensure_held()
    live.release()


def test_ensure_held_after_a_take_over_raises_naming_the_new_holder(store):
    stale = lease(store, ttl=30)
    stale.acquire()
    write_holder(store, owner="newcomer")  # as a driver does that took the lease over
    with pytest.raises(LeaseLostError) as raised:
        stale.ensure_held()
    assert str(raised.value) == (
        "toy v1: this driver's lease expired and is now held by newcomer; stopping without committing more "
        "(raise runner.lease_seconds if the driver was paused)")
    assert stale.lost
    stale.release()
    assert on_disk(store)["owner"] == "newcomer"  # the loser never removes the new holder's lease


def test_a_lost_lease_stays_lost(store):
    stale = lease(store)
    stale.acquire()
    record = on_disk(store)
    write_holder(store, owner="newcomer")
    with pytest.raises(LeaseLostError):
        stale.ensure_held()
    store.write_bytes(json.dumps(record).encode(), PATH)  # its old record back (a stale copy restored)
    with pytest.raises(LeaseLostError):
        stale.ensure_held()
    stale.release()


def test_ensure_held_after_the_lease_vanished_raises(store):
    stale = lease(store)
    stale.acquire()
    store.delete(PATH)
    with pytest.raises(LeaseLostError, match="now held by nobody"):
        stale.ensure_held()
    stale.release()


def test_the_heartbeat_stops_when_the_lease_was_taken_over(recording):
    stale = lease(recording, ttl=TTL)
    stale.acquire()
    record = write_holder(recording, owner="newcomer")
    time.sleep(TTL / 2)  # two beats: the first sees the new holder and stops
    assert stale.lost and on_disk(recording) == record
    stale.release()
    assert on_disk(recording) == record


def test_a_release_that_cannot_delete_warns(recording, caplog):
    held = lease(recording)
    held.acquire()
    recording.failing.add("delete")
    with caplog.at_level(logging.WARNING, logger="pipeline.store.lease"):
        held.release()
    assert caplog.messages == [
        f"could not remove the lease of toy v1: cannot write {recording.path(PATH)}: Read-only file system"]


def test_a_live_lease_is_judged_by_its_holders_ttl_not_the_waiters(store, clock):
    # The holder (ttl 600 s) beats every 150 s; a driver with a 60 s ttl seeing a 100 s old
    # heartbeat must wait, not take a live lease over.
    write_holder(store, host=HOST, pid=os.getpid(), heartbeat=clock.now - 100, ttl_seconds=600.0)
    with pytest.raises(LeaseHeldError, match=r"heartbeat 100 s ago\).*expires 500 s from now"):
        lease(store, ttl=60.0).acquire()
    assert on_disk(store)["owner"] == "other:42:cafe0000"
    write_holder(store, heartbeat=clock.now - 100, ttl_seconds=90.0)  # past its own ttl: taken over
    taken = lease(store, ttl=600.0)
    taken.acquire()
    assert on_disk(store)["owner"] == taken.owner
    taken.release()

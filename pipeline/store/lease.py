"""One writer per version: a lease file with an owner and a heartbeat.

The driver that computes a version holds its lease file (`Version.lease()`, which names the file). A second driver
on the same version waits for it (up to `runner.lease_wait_seconds`) or stops with a message
naming the holder. A holder that dies stops renewing its heartbeat; once the lease is older than
`runner.lease_seconds` another driver takes it over (at once, when the holder ran on the same
machine and its process is gone). Before each commit the holder checks that
the lease is still its own, so a driver that lost it (paused past the expiry) never commits.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from typing import Any

from pipeline.store.storage import StorageError, Store

log = logging.getLogger(__name__)


class LeaseHeldError(RuntimeError):
    """Another live driver is writing this version."""


class LeaseLostError(RuntimeError):
    """This driver's lease expired and another driver took the version over."""


class Lease:
    """A lease file at `path` (store-relative) guarding `what` (for messages)."""

    def __init__(self, store: Store, path: str, what: str, ttl_seconds: float = 60.0, wait_seconds: float = 0.0):
        self.store = store
        self.path = path
        self.what = what
        self.ttl = ttl_seconds
        self.wait = wait_seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._since = _now()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    # ---- taking and giving back ----------------------------------------------------------------

    def __enter__(self) -> "Lease":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait
        while True:
            if self.store.create_exclusive(self._record(), self.path):
                break
            holder = self.holder()
            if holder is None:
                continue  # released between our attempt and our look
            age = time.time() - float(holder.get("heartbeat", 0))
            # The holder's own ttl: it beats every ttl/4 of its own, so a driver with a shorter
            # ttl must not judge it by that one. A record without one is judged by ours.
            ttl = float(holder.get("ttl_seconds", self.ttl))
            if age > ttl or _died_here(holder):
                self._take_over(holder, age)
                continue
            if time.monotonic() >= deadline:
                raise LeaseHeldError(
                    f"{self.what} is being written by {holder.get('owner', '?')} (pid {holder.get('pid', '?')} "
                    f"on {holder.get('host', '?')}, since {holder.get('since', '?')}, heartbeat {age:.0f} s ago); "
                    f"wait for it to finish, or set runner.lease_wait_seconds to wait. If that process is dead, "
                    f"its lease expires {max(0.0, ttl - age):.0f} s from now")
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        self._thread = threading.Thread(target=self._beat, name=f"lease {self.what}", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        holder = self.holder()
        if holder is not None and holder.get("owner") == self.owner:
            try:
                self.store.delete(self.path)
            except StorageError as exc:  # an expired lease is harmless; the next driver takes it over
                log.warning("could not remove the lease of %s: %s", self.what, exc)

    def ensure_held(self) -> None:
        """Raise unless the lease on disk is still this driver's (checked before each commit)."""
        holder = self.holder()
        if self.lost or holder is None or holder.get("owner") != self.owner:
            self.lost = True
            taken_by = holder.get("owner") if holder else "nobody"
            raise LeaseLostError(
                f"{self.what}: this driver's lease expired and is now held by {taken_by}; stopping "
                f"without committing more (raise runner.lease_seconds if the driver was paused)")

    def holder(self) -> dict[str, Any] | None:
        """The lease on disk; one that is unreadable or lacks a heartbeat counts as expired."""
        try:
            holder = json.loads(self.store.read_bytes(self.path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            holder = None
        # Half-written by a driver that died mid-write (object stores) or garbage: no live owner
        # can be named, so it counts as expired.
        if not isinstance(holder, dict) or not all(
                isinstance(holder.get(name, 0), (int, float)) and not isinstance(holder.get(name), bool)
                and math.isfinite(holder.get(name, 0)) for name in ("heartbeat", "ttl_seconds")):
            return {"owner": "unreadable lease", "heartbeat": 0}
        return holder

    # ---- internals -----------------------------------------------------------------------------

    def _record(self) -> bytes:
        return json.dumps({
            "owner": self.owner, "host": socket.gethostname(), "pid": os.getpid(),
            "since": self._since, "heartbeat": time.time(),
            "ttl_seconds": self.ttl,
        }).encode()

    def _take_over(self, holder: dict[str, Any], age: float) -> None:
        log.warning("%s: the lease of %s expired (no heartbeat for %.0f s, or its process is gone); "
                    "taking it over", self.what, holder.get("owner"), age)
        # A rename is atomic where it matters (local disks): of two drivers taking over at once,
        # one moves the expired lease aside and the other finds it gone and retries creating.
        folder, _, name = self.path.rpartition("/")
        stale = f"{folder}/.tmp-expired-{uuid.uuid4().hex[:8]}-{name}"
        try:
            self.store.move(self.path, stale)
        except (StorageError, FileNotFoundError, OSError):
            return
        self.store.delete(stale)

    def _beat(self) -> None:
        while not self._stop.wait(max(0.05, self.ttl / 4)):
            holder = self.holder()
            if holder is None or holder.get("owner") != self.owner:
                self.lost = True
                return
            try:
                self.store.write_bytes(self._record(), self.path)
            except StorageError as exc:
                log.warning("could not renew the lease of %s: %s", self.what, exc)


def _died_here(holder: dict[str, Any]) -> bool:
    """True when the holder ran on this machine and its process is gone (a killed driver), so
    its lease need not run out first."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return False
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

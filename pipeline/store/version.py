"""A version folder, `OUT/<stage>/<version>/`, as one object that owns its whole protocol.

    OUT/<stage>/<version>/part-00000.parquet ...   rows, one file per input shard, committed only
    OUT/<stage>/<version>/_manifest.json           identity and shard plan; `complete` when done
    OUT/<stage>/<version>/_plan.parquet            item id -> shard, for `tvr verify`
    OUT/<stage>/<version>/_commits/part-00000.json the commit record of each shard
    OUT/<stage>/<version>/_staging/...             parts being written (readers skip `_` paths)
    OUT/<stage>/<version>/_lease.json              the driver writing this version, if any
    OUT/<stage>/LATEST                             the newest complete version
    OUT/failures/<stage>/<version>/part-00000.parquet ...

A version is a short hash of everything that decides the rows, so nothing is ever overwritten:
a changed config, prompt or upstream version is a new folder beside the old one. `Version` is
the only code that builds these paths or reads these files; the runner, the dataset manifest,
`tvr verify`, `tvr status`, the tag tools and the trainer all go through it (as datatrove's
`DataFolder` and Hadoop's `OutputCommitter` keep a folder's protocol in one place).

The commit protocol, modelled on Spark's output committer and datatrove's completion markers:

1. A worker writes a shard's rows and failures into the staging area (`_staging/<attempt>/`,
   which Parquet readers skip), hashing the bytes as it writes them (`stage_shard`).
2. The driver, holding the version's lease, writes the shard's commit record (`_commits/
   part-NNNNN.json`: items, rows, failures, and the bytes and sha256 of each file). Writing that
   record is the commit (`commit_shard`).
3. The driver then moves the staged files to their final names. A driver killed between 2 and 3
   leaves a record whose files are still staged; the next run finishes the move (`recover`).

So the version folder holds only committed parts at every moment, and a part that is there has
a record saying exactly what its bytes must be. A record whose files are gone is withdrawn and
its shard recomputed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import re
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline import __version__
from pipeline.store.lease import Lease
from pipeline.store.schema import FAILURES, SCHEMA_VERSION
from pipeline.store.storage import Store, parquet_bytes

log = logging.getLogger(__name__)

MANIFEST_FILE = "_manifest.json"
PLAN_FILE = "_plan.parquet"
COMMITS_DIR = "_commits"
STAGING_DIR = "_staging"
LEASE_FILE = "_lease.json"
LATEST_FILE = "LATEST"
FAILURES_DIR = "failures"
RECORD_NAME = re.compile(r"part-(\d{5,})\.json")


class DamagedOutputError(RuntimeError):
    """A file of a committed output is missing, truncated or unreadable; the message names it.

    `problem` says what is wrong without the path (for `tvr verify`, which lists paths itself)."""

    def __init__(self, message: str, problem: str | None = None):
        super().__init__(message)
        self.problem = problem or message


class InputNotReadyError(RuntimeError):
    """A stage's input version, as the config determines it, is not complete in OUT."""


def content_hash(data: Any, length: int = 12) -> str:
    # Hashed as its JSON reads back (non-string keys become strings first, then sort), so an
    # identity recorded in `_manifest.json` hashes to the same version it was computed as.
    canonical = json.loads(json.dumps(data, default=str))
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


# The identity of a table versioned by its rows alone (the manifest's videos and captions).
_ROWS_ONLY = {"stage", "schema_version", "content_sha256"}


def version_of(identity: dict[str, Any]) -> str:
    """The version an identity gives: the short hash of all of it. A table versioned by its rows
    alone keeps its row hash's prefix as version (the versions every stage reading it builds on)."""
    if set(identity) == _ROWS_ONLY and isinstance(identity["content_sha256"], str):
        return identity["content_sha256"][:12]
    return content_hash(identity)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def shard_name(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


def provenance_metadata(identity: dict[str, Any], extra: dict[str, str]) -> dict[str, str]:
    """Key-value metadata written into every Parquet file of a version."""
    meta = {
        "tvr.schema_version": str(SCHEMA_VERSION),
        "tvr.package_version": __version__,
        "tvr.stage": identity["stage"],
        "tvr.identity": json.dumps(identity, sort_keys=True, default=str),
    }
    meta.update({f"tvr.{key}": value for key, value in extra.items()})
    return meta


@dataclass(frozen=True)
class Version:
    """One version of one stage's output: `OUT/<stage>/<version>/` and its failures folder.

    Equal when stage and version are (the store and the video root say where, not what)."""

    store: Store = field(compare=False)
    stage: str
    version: str
    # For the manifest's `videos`: the folder the stored relative paths are relative to. Not part
    # of any version, so a dataset moved elsewhere keeps its versions.
    root: str | None = field(default=None, compare=False)

    # ---- where things lie (store-relative paths) --------------------------------------------------

    @property
    def path(self) -> str:
        """The folder, relative to the output root, holding the version's Parquet files."""
        return f"{self.stage}/{self.version}"

    @property
    def failures_path(self) -> str:
        return f"{FAILURES_DIR}/{self.stage}/{self.version}"

    @property
    def manifest_path(self) -> str:
        return f"{self.path}/{MANIFEST_FILE}"

    @property
    def plan_path(self) -> str:
        return f"{self.path}/{PLAN_FILE}"

    def record_path(self, shard: int) -> str:
        return f"{self.path}/{COMMITS_DIR}/{_record_name(shard)}"

    def with_root(self, root: str | None) -> "Version":
        return replace(self, root=root)

    def repair_hint(self) -> str:
        return (f"`tvr verify {self.store.root} --stage {self.stage} --repair` withdraws it so the next run "
                f"recomputes it")

    # ---- the record (_manifest.json) and LATEST ---------------------------------------------------

    def manifest(self) -> dict[str, Any] | None:
        """The version's record, None when there is none; a damaged one (unreadable, a field
        missing or of the wrong type, an identity that does not hash to this version) is an error
        naming the file."""
        if not self.store.exists(self.manifest_path):
            return None
        try:
            manifest = json.loads(self.store.read_bytes(self.manifest_path).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._damaged_manifest(str(exc)) from exc
        problem = self.manifest_problem(manifest)
        if problem:
            raise self._damaged_manifest(problem)
        return manifest

    def _damaged_manifest(self, problem: str) -> DamagedOutputError:
        problem = _one_line(problem)
        return DamagedOutputError(
            f"{self.store.path(self.manifest_path)} is damaged ({problem}); "
            f"`tvr verify {self.store.root} --stage {self.stage} --repair` rebuilds it", problem)

    def manifest_problem(self, manifest: Any) -> str | None:
        """What makes `manifest` no valid record of this version, or None. Every reader and
        writer of records goes through it, so code past it may index the fields it checks."""
        if not isinstance(manifest, dict):
            return f"a JSON {type(manifest).__name__}, not an object"
        for name, wanted in _RECORD_FIELDS.items():
            problem = _field_problem(manifest, name, *wanted)
            if problem:
                return problem
        if (manifest["stage"], manifest["version"]) != (self.stage, self.version):
            return f"it is the record of {manifest['stage']} {manifest['version']}, not of {self.stage} {self.version}"
        identity = manifest["identity"]
        if identity.get("stage") != self.stage:
            return f"its identity names stage {identity.get('stage')!r}"
        if version_of(identity) != self.version:
            return f"its identity gives version {version_of(identity)}, not {self.version} (edited, or moved)"
        for name in sorted(manifest.keys() & identity.keys()):  # e.g. the manifest's videos and captions
            if manifest[name] != identity[name]:
                return f"{name} is {manifest[name]!r} but its identity says {identity[name]!r}"
        shards = max(1, math.ceil(manifest["num_items"] / manifest["rows_per_shard"]))
        if manifest["num_shards"] != shards:
            return (f"num_shards is {manifest['num_shards']}, but {manifest['num_items']} items in shards of "
                    f"{manifest['rows_per_shard']} make {shards}")
        if manifest["complete"]:
            for name in ("finished", "rows", "failures"):
                if name not in manifest:
                    return f"complete, but {name} is missing"
            if manifest["rows"] + manifest["failures"] != manifest["num_items"]:
                return (f"complete with {manifest['rows']} rows and {manifest['failures']} failures, but "
                        f"{manifest['num_items']} items")
        return None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write the record; one this class would refuse to read (say, links rewritten to point
        elsewhere than its identity) is a bug of the caller and never reaches the disk."""
        problem = self.manifest_problem(manifest)
        if problem:
            raise ValueError(f"refusing to write {self.manifest_path}: {problem}")
        self.store.write_json(manifest, self.manifest_path)

    def is_complete(self) -> bool:
        manifest = self.manifest()
        return bool(manifest and manifest.get("complete"))

    def mark_latest(self) -> None:
        """Point LATEST at this version if it finished later than what LATEST points at now.

        LATEST means the newest complete version: rerunning an old config (up to date, nothing
        computed) leaves it alone.
        """
        pointed = latest_pointer(self.store, self.stage)
        if pointed is not None and pointed != self.version:
            try:
                theirs = Version(self.store, self.stage, pointed).manifest() or {}
            except DamagedOutputError:  # not a complete version, so not a newer one (`tvr verify` names it)
                theirs = {}
            ours = self.manifest() or {}
            if theirs.get("complete") and theirs.get("finished", "") > ours.get("finished", ""):
                return
        point_latest(self.store, self.stage, self.version)

    def lease(self, ttl_seconds: float = 60.0, wait_seconds: float = 0.0) -> Lease:
        """The lock a driver holds while it writes this version (one writer per version)."""
        return Lease(self.store, f"{self.path}/{LEASE_FILE}", f"{self.stage} {self.version}", ttl_seconds,
                     wait_seconds)

    # ---- the item plan (_plan.parquet) ------------------------------------------------------------

    def write_plan(self, ids: pa.Array, rows_per_shard: int, manifest: dict[str, Any]) -> None:
        """Which shard each item belongs to; carries the manifest too, so a damaged one can be rebuilt."""
        shards = pa.array([i // rows_per_shard for i in range(len(ids))], pa.int32())
        table = pa.table({"item_id": ids.cast(pa.string()), "shard": shards})
        self.store.write_bytes(parquet_bytes(table, {"tvr.manifest": json.dumps(manifest, sort_keys=True)}),
                               self.plan_path)

    def has_plan(self) -> bool:
        return self.store.exists(self.plan_path)

    def read_plan(self) -> tuple[pa.Table, dict[str, Any]]:
        """The plan (item_id, shard) and the copy of the record it carries, both checked."""
        try:
            table = self.store.read_parquet(self.plan_path)
            copy = (table.schema.metadata or {}).get(b"tvr.manifest")
            if copy is None:
                raise self._damaged_plan("it carries no copy of the record")
            manifest = json.loads(copy)
        except FileNotFoundError as exc:  # its message would be the bare path
            raise self._damaged_plan("it is missing") from exc
        except (OSError, pa.ArrowException, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._damaged_plan(str(exc)) from exc
        problem = self.manifest_problem(manifest)
        if problem:
            raise self._damaged_plan(f"its copy of the record: {problem}")
        problem = _plan_problem(table, manifest)
        if problem:
            raise self._damaged_plan(problem)
        return table, manifest

    def _damaged_plan(self, problem: str) -> DamagedOutputError:
        problem = f"damaged item plan ({_one_line(problem)})"
        return DamagedOutputError(f"{self.store.path(self.plan_path)}: {problem}; {self.repair_hint()}", problem)

    # ---- committing shards ------------------------------------------------------------------------

    def stage_shard(self, shard: int, rows: pa.Table, failures: pa.Table,
                    metadata: dict[str, str]) -> list[dict[str, Any]]:
        """Write a shard's parts to a fresh staging folder; returns what the commit record lists."""
        staging = f"{self.path}/{STAGING_DIR}/{uuid.uuid4().hex[:12]}"
        name = shard_name(shard)
        return [
            self._stage_file(rows, metadata, f"{staging}/{name}", f"{self.path}/{name}"),
            self._stage_file(failures, metadata, f"{staging}/failures-{name}", f"{self.failures_path}/{name}"),
        ]

    def _stage_file(self, table: pa.Table, metadata: dict[str, str], staged: str, final: str) -> dict:
        data = parquet_bytes(table, metadata)
        self.store.put(data, staged)
        return {"final": final, "staged": staged, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "rows": table.num_rows}

    def commit_shard(self, shard: int, files: list[dict[str, Any]], seconds: float = 0.0) -> dict[str, Any]:
        """Commit staged parts: write the record (the commit point), then publish the files."""
        rows, failures = files[0]["rows"], files[1]["rows"]
        record = {"shard": shard, "items": rows + failures, "rows": rows, "failures": failures, "files": files,
                  "seconds": round(seconds, 3), "committed": now()}
        self.store.write_json(record, self.record_path(shard))
        self._publish(record)
        return record

    def _publish(self, record: dict[str, Any]) -> bool:
        """Move a committed record's staged files into place; False when a file is nowhere to be found."""
        for file in record["files"]:
            if self.store.size(file["final"]) == file["bytes"]:
                continue  # already published
            if self.store.size(file["staged"]) != file["bytes"]:
                return False
            self.store.move(file["staged"], file["final"])
        return True

    def clear_staging(self) -> None:
        """Remove the staging area (parts of shards that were never committed)."""
        self.store.delete(self.path, STAGING_DIR)

    def record_names(self) -> dict[int, str]:
        """The commit record files by shard number; a half-written temporary (a driver killed
        mid-write) is no record."""
        names = {}
        for name in self.store.list_files(self.path, COMMITS_DIR, suffix=".json"):
            found = RECORD_NAME.fullmatch(name)
            if found:
                names[int(found.group(1))] = name
        return names

    def read_record(self, shard: int) -> dict[str, Any]:
        """One commit record, checked field by field; a damaged one is an error naming it."""
        try:
            record = json.loads(self.store.read_bytes(self.record_path(shard)).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            problem = str(exc)
        else:
            problem = self.record_problem(record, shard)
            if problem is None:
                return record
        problem = f"damaged commit record ({_one_line(problem)})"
        raise DamagedOutputError(f"{self.store.path(self.record_path(shard))}: {problem}; {self.repair_hint()}",
                                 problem)

    def record_problem(self, record: Any, shard: int) -> str | None:
        """What makes `record` no valid commit record of `shard`, or None."""
        if not isinstance(record, dict):
            return f"a JSON {type(record).__name__}, not an object"
        for name in ("shard", "items", "rows", "failures"):
            problem = _field_problem(record, name, int, 0)
            if problem:
                return problem
        if record["shard"] != shard:
            return f"it names shard {record['shard']}"
        if record["items"] != record["rows"] + record["failures"]:
            return f"{record['items']} items, but {record['rows']} rows and {record['failures']} failures"
        files = record.get("files")
        if not isinstance(files, list) or len(files) != 2:
            return "files is not a list of the rows' and the failures' part"
        name = shard_name(shard)
        wanted = ((f"{self.path}/{name}", record["rows"]), (f"{self.failures_path}/{name}", record["failures"]))
        for index, (file, (final, rows)) in enumerate(zip(files, wanted)):
            if not isinstance(file, dict):
                return f"files[{index}] is not an object"
            for field_name, kind, minimum in (("final", str, None), ("staged", str, None), ("bytes", int, 0),
                                              ("sha256", str, None), ("rows", int, 0)):
                problem = _field_problem(file, field_name, kind, minimum)
                if problem:
                    return f"files[{index}]: {problem}"
            if file["final"] != final:
                return f"files[{index}] is {file['final']!r}, not {final!r}"
            # A record names where its files are moved from: only this version's staging area.
            if not file["staged"].startswith(f"{self.path}/{STAGING_DIR}/") or ".." in file["staged"].split("/"):
                return f"files[{index}] is staged at {file['staged']!r}, outside {self.path}/{STAGING_DIR}"
            if not re.fullmatch(r"[0-9a-f]{64}", file["sha256"]):
                return f"files[{index}]: sha256 is not a sha256"
            if file["rows"] != rows:
                return f"files[{index}] has {file['rows']} rows, the record {rows}"
        return None

    def commits(self) -> dict[int, dict[str, Any]]:
        """Every commit record, by shard number; a damaged one is an error naming it."""
        return {shard: self.read_record(shard) for shard in self.record_names()}

    def withdraw(self, shard: int) -> None:
        """Un-commit a shard: its files go first, so no reader ever sees a part without a record."""
        name = shard_name(shard)
        self.store.delete(self.path, name)
        self.store.delete(self.failures_path, name)
        self.store.delete(self.record_path(shard))

    def recover(self) -> list[int]:
        """Bring the folder back to its committed state before a run continues it.

        Finishes publishing records whose files are still staged, withdraws records whose files
        are lost, and removes everything uncommitted: the staging area, temporaries and any part
        without a record. Call it only while holding the lease. Returns withdrawn shards.
        """
        withdrawn = []
        self.store.remove_temporaries(self.path, COMMITS_DIR)
        records = self.commits()
        for shard, record in sorted(records.items()):
            if not self._publish(record):
                log.warning("%s %s: shard %d was committed but its files are gone; recomputing it",
                            self.stage, self.version, shard)
                self.withdraw(shard)
                withdrawn.append(shard)
                del records[shard]
        self.clear_staging()
        committed = {shard_name(shard) for shard in records}
        for folder in (self.path, self.failures_path):
            self.store.remove_temporaries(folder)
            for name in self.store.list_files(folder, suffix=".parquet"):
                if name not in committed and name != PLAN_FILE:
                    self.store.delete(folder, name)
        return withdrawn

    # ---- checking ---------------------------------------------------------------------------------

    def check_committed(self, manifest: dict[str, Any] | None = None) -> dict[int, dict]:
        """The cheap check a run makes of a complete version it reads or skips: every planned
        shard has a record, and each part is there with its recorded size and a readable footer
        with its recorded rows. Raises DamagedOutputError naming the first bad file; returns the
        records."""
        records = self.commits()
        if manifest is not None:
            missing = [s for s in range(manifest["num_shards"]) if s not in records]
            if missing:
                raise DamagedOutputError(
                    f"{self.store.path(self.path)} is marked complete but shard(s) {missing[:5]} have no commit "
                    f"record; {self.repair_hint()}")
        for record in records.values():
            for file in record["files"]:
                problem = self.part_problem(file, deep=False)
                if problem:
                    raise DamagedOutputError(f"{self.store.path(file['final'])}: {problem}; {self.repair_hint()}")
        return records

    def part_problem(self, file: dict[str, Any], deep: bool) -> str | None:
        """What is wrong with a committed part compared with its record, or None.

        Cheap: size and footer. Deep (`tvr verify`): the sha256 of every byte too.
        """
        size = self.store.size(file["final"])
        if size is None:
            return "committed part is missing"
        if size != file["bytes"]:
            return f"committed part has {size} bytes, its record says {file['bytes']}"
        try:
            rows = pq.read_metadata(self.store.path(file["final"]), filesystem=self.store.fs).num_rows
        except (OSError, pa.ArrowException) as exc:
            return f"committed part is not readable Parquet ({_one_line(str(exc))})"
        if rows != file["rows"]:
            return f"committed part has {rows} rows, its record says {file['rows']}"
        if deep and self.store.sha256(file["final"]) != file["sha256"]:
            return "committed part's sha256 differs from its record (the bytes changed)"
        return None

    def part_rows(self, path: str) -> int | None:
        """Rows in a part by its footer; None when it is not readable Parquet."""
        try:
            return pq.read_metadata(self.store.path(path), filesystem=self.store.fs).num_rows
        except (OSError, pa.ArrowException):
            return None

    def part_schema(self, path: str) -> pa.Schema:
        return pq.read_schema(self.store.path(path), filesystem=self.store.fs)

    def stray_files(self, records: dict[int, dict[str, Any]]) -> list[str]:
        """Files in the version and failures folders that no record or protocol file accounts for."""
        allowed = {self.manifest_path, self.plan_path, f"{self.path}/{LEASE_FILE}"}
        allowed |= {self.record_path(shard) for shard in self.record_names()}
        allowed |= {file["final"] for record in records.values() for file in record["files"]}
        strays = [path for folder in (self.path, self.failures_path) for path in self.store.walk_files(folder)
                  if path not in allowed]
        staging = f"{self.path}/{STAGING_DIR}"
        if self.store.exists(staging) and not any(path.startswith(staging + "/") for path in strays):
            strays.append(staging)  # empty attempt folders: nothing in them, but not done either
        return strays

    def holds_files(self) -> bool:
        return bool(self.store.walk_files(self.path))

    def delete(self) -> None:
        """Remove the whole version, its failures included (a record that cannot be rebuilt)."""
        self.store.delete(self.path)
        self.store.delete(self.failures_path)

    # ---- reading committed parts ------------------------------------------------------------------

    def committed_paths(self, failures: bool = False) -> list[str]:
        """Store-relative paths of the committed row parts (or failure parts), in shard order."""
        records = self.commits()
        return [records[shard]["files"][1 if failures else 0]["final"] for shard in sorted(records)]

    def table(self, columns: list[str] | None = None) -> pa.Table:
        """The committed rows, and nothing else that may lie beside them."""
        return self._read(failures=False, columns=columns)

    def failures(self, columns: list[str] | None = None) -> pa.Table:
        return self._read(failures=True, columns=columns)

    def read_part(self, path: str, columns: list[str] | None = None) -> pa.Table:
        """One committed part (a path from `committed_paths` or `locations`)."""
        return pq.read_table(self.store.path(path), columns=columns, filesystem=self.store.fs)

    def video_table(self, columns: list[str] | None = None) -> pa.Table:
        """The manifest's videos for workers: `path` made absolute under this run's video root, the
        stored `relative_path` beside it, and `video_root` itself (workers refuse files whose real
        path leaves it)."""
        table = self.table(columns)
        if "path" not in table.column_names:
            return table
        if self.root is None:
            raise ValueError(f"{self.path} is read without a video root")
        root = self.root.rstrip("/")
        relative = table.column("path")
        absolute = pa.array([None if p is None else f"{root}/{p}" for p in relative.to_pylist()], pa.string())
        table = table.set_column(table.column_names.index("path"), "path", absolute)
        return (table.append_column("relative_path", relative)
                .append_column("video_root", pa.array([root] * table.num_rows, pa.string())))

    def key(self) -> str:
        """The column that identifies this version's rows (its stage's key)."""
        manifest = self.manifest()
        if manifest is None or "key" not in manifest:
            raise ValueError(f"{self.path} records no key column")
        return manifest["key"]

    def locations(self, key: str) -> tuple[pa.Table, list[str]]:
        """Where each row lies: a table of `key`, part (an index into the returned list of
        store-relative part paths) and row within the part. Reads only the key column."""
        paths = self.committed_paths()
        tables = []
        for part, path in enumerate(paths):
            keys = self.read_part(path, columns=[key]).column(key)
            n = len(keys)
            tables.append(pa.table({key: keys, "part": pa.array([part] * n, pa.int32()),
                                    "row": pa.array(range(n), pa.int32())}))
        if not tables:
            return pa.table({key: pa.array([], pa.string()), "part": pa.array([], pa.int32()),
                             "row": pa.array([], pa.int32())}), paths
        return pa.concat_tables(tables), paths

    def _read(self, failures: bool, columns: list[str] | None) -> pa.Table:
        paths = [self.store.path(p) for p in self.committed_paths(failures=failures)]
        if not paths:
            if failures:
                return FAILURES.empty_table().select(columns or FAILURES.names)
            raise ValueError(f"{self.path} has no committed parts")
        return ds.dataset(paths, filesystem=self.store.fs, format="parquet").to_table(columns=columns)


# ---- the versions of a stage, and LATEST ----------------------------------------------------------


def latest_path(stage: str) -> str:
    return f"{stage}/{LATEST_FILE}"


def latest_pointer(store: Store, stage: str) -> str | None:
    """The version LATEST names, complete or not; None when there is no LATEST."""
    if not store.exists(latest_path(stage)):
        return None
    return store.read_text(latest_path(stage)).strip()


def latest(store: Store, stage: str) -> Version | None:
    """The newest complete version of `stage`, or None if it never completed."""
    pointed = latest_pointer(store, stage)
    if pointed is None:
        return None
    version = Version(store, stage, pointed)
    return version if version.is_complete() else None


def complete_version(store: Store, stage: str, version: str | None = None) -> Version | None:
    """The named version of `stage` when it is complete (no name: LATEST's), else None."""
    if version is None:
        return latest(store, stage)
    found = Version(store, stage, version)
    return found if found.is_complete() else None


def point_latest(store: Store, stage: str, version: str | None) -> None:
    """Set LATEST to `version` as it is (None removes it); `Version.mark_latest` decides when."""
    if version is None:
        store.delete(latest_path(stage))
    else:
        store.write_text(version + "\n", latest_path(stage))


def versions(store: Store, stage: str) -> list[Version]:
    """Every version folder of a stage (complete or not), by name."""
    return [Version(store, stage, name) for name in store.list_dirs(stage) if not name.startswith(("_", "."))]


def stage_folders(store: Store) -> list[str]:
    """The top-level folders that may hold a stage's versions (not `failures/`, not hidden ones)."""
    return [name for name in store.list_dirs() if name != FAILURES_DIR and not name.startswith(("_", "."))]


def looks_like_stage(store: Store, stage: str) -> bool:
    """A folder with LATEST, or with a version holding a record or commits."""
    if store.exists(latest_path(stage)):
        return True
    return any(store.exists(v.manifest_path) or store.exists(v.path, COMMITS_DIR) for v in versions(store, stage))


def failure_versions(store: Store, stage: str) -> list[Version]:
    """The versions of a stage that have a failures folder (one without its version is a stray)."""
    return [Version(store, stage, name) for name in store.list_dirs(FAILURES_DIR, stage)]


def _record_name(shard: int) -> str:
    return shard_name(shard).replace(".parquet", ".json")


def _one_line(text: str) -> str:
    return " ".join(text.split())


# A record's fields: name -> (type, minimum or None, required). Others may be there (provenance).
_RECORD_FIELDS: dict[str, tuple] = {
    "stage": (str, None, True),
    "version": (str, None, True),
    "identity": (dict, None, True),
    "key": ((str, type(None)), None, True),
    "created": (str, None, True),
    "num_items": (int, 0, True),
    "rows_per_shard": (int, 1, True),
    "num_shards": (int, 1, True),
    "complete": (bool, None, True),
    "finished": (str, None, False),
    "rows": (int, 0, False),
    "failures": (int, 0, False),
    "root": (str, None, False),  # the videos' folder, provenance
    "source": (dict, None, False),  # where the manifest's annotations were read, provenance
}


def _field_problem(data: dict, name: str, kind, minimum: int | None = None, required: bool = True) -> str | None:
    if name not in data:
        return f"{name} is missing" if required else None
    value = data[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # JSON's true and false are Python ints too; a count or a shard number is never one.
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        return f"{name} is {_json_type(value)}, not {' or '.join(_json_type_name(k) for k in kinds)}"
    if minimum is not None and value < minimum:
        return f"{name} is {value}, below {minimum}"
    return None


def _json_type(value: Any) -> str:
    shown = json.dumps(value, default=str)
    if value is None or isinstance(value, bool):
        return shown
    return f"{_json_type_name(type(value))} {shown[:40]}"


def _json_type_name(kind: type) -> str:
    return {str: "a string", int: "a whole number", float: "a number", bool: "true/false", dict: "an object",
            list: "a list", type(None): "null"}.get(kind, kind.__name__)


def _plan_problem(table: pa.Table, manifest: dict[str, Any]) -> str | None:
    """What is wrong with a plan's columns against the record copy it carries, or None."""
    if table.schema.names != ["item_id", "shard"]:
        return f"columns {table.schema.names}, expected ['item_id', 'shard']"
    if not pa.types.is_string(table.schema.field("item_id").type) or \
            not pa.types.is_integer(table.schema.field("shard").type):
        return f"item_id is {table.schema.field('item_id').type} and shard {table.schema.field('shard').type}"
    if table.column("item_id").null_count or table.column("shard").null_count:
        return "it has empty item ids or shards"
    if table.num_rows != manifest["num_items"]:
        return f"it plans {table.num_rows} items, its record {manifest['num_items']}"
    if table.num_rows:
        low, high = pc.min_max(table.column("shard")).values()
        if low.as_py() < 0 or high.as_py() >= manifest["num_shards"]:
            return f"shards {low.as_py()}..{high.as_py()}, outside the {manifest['num_shards']} planned"
    return None

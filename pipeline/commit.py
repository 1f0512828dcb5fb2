"""The commit protocol: how a shard's parts enter a version folder, and how that is checked.

Modelled on Spark's output committer and datatrove's completion markers:

1. A worker writes a shard's rows and failures into the version's staging area
   (`_staging/<attempt>/`, which Parquet readers skip), hashing the bytes as it writes them.
2. The driver, holding the version's lease, writes the shard's commit record
   (`_commits/part-NNNNN.json`: items, rows, failures, and the bytes and sha256 of each file).
   Writing that record is the commit.
3. The driver then moves the staged files to their final names. A driver killed between 2 and 3
   leaves a record whose files are still staged; the next run finishes the move (`recover`).

So the version folder holds only committed parts at every moment, and a part that is there has
a record saying exactly what its bytes must be. A record whose files are gone is withdrawn and
its shard recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.outputs import (
    COMMITS_DIR,
    PLAN_FILE,
    STAGING_DIR,
    DamagedOutputError,
    failures_dir,
    now,
    shard_name,
)
from pipeline.stage import StageOutput
from pipeline.storage import Store, parquet_bytes

log = logging.getLogger(__name__)


def repair_hint(store: Store, stage: str) -> str:
    return f"`tvr verify {store.root} --stage {stage} --repair` withdraws it so the next run recomputes it"


# ---- writing ---------------------------------------------------------------------------------


def stage_shard(store: Store, stage: str, version: str, shard: int, rows: pa.Table, failures: pa.Table,
                metadata: dict[str, str]) -> list[dict[str, Any]]:
    """Write a shard's parts to a fresh staging folder; returns what the commit record lists."""
    attempt = uuid.uuid4().hex[:12]
    name = shard_name(shard)
    staging = f"{stage}/{version}/{STAGING_DIR}/{attempt}"
    return [
        _stage_file(store, rows, metadata, f"{staging}/{name}", f"{stage}/{version}/{name}"),
        _stage_file(store, failures, metadata, f"{staging}/failures-{name}",
                    f"{failures_dir(stage, version)}/{name}"),
    ]


def _stage_file(store: Store, table: pa.Table, metadata: dict[str, str], staged: str, final: str) -> dict:
    data = parquet_bytes(table, metadata)
    store.put(data, staged)
    return {"final": final, "staged": staged, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "rows": table.num_rows}


def commit_shard(store: Store, stage: str, version: str, shard: int, files: list[dict[str, Any]],
                 seconds: float = 0.0) -> dict[str, Any]:
    """Commit staged parts: write the record (the commit point), then publish the files."""
    rows, failures = files[0]["rows"], files[1]["rows"]
    record = {"shard": shard, "items": rows + failures, "rows": rows, "failures": failures, "files": files,
              "seconds": round(seconds, 3), "committed": now()}
    store.write_json(record, stage, version, COMMITS_DIR, _record_name(shard))
    publish(store, record)
    return record


def publish(store: Store, record: dict[str, Any]) -> bool:
    """Move a committed record's staged files into place; False when a file is nowhere to be found."""
    for file in record["files"]:
        if store.size(file["final"]) == file["bytes"]:
            continue  # already published
        if store.size(file["staged"]) != file["bytes"]:
            return False
        store.move(file["staged"], file["final"])
    return True


def record_names(store: Store, stage: str, version: str) -> dict[int, str]:
    """The commit record files of a version by shard number; a half-written temporary (a driver
    killed mid-write) is no record."""
    names = {}
    for name in store.list_files(stage, version, COMMITS_DIR, suffix=".json"):
        found = RECORD_NAME.fullmatch(name)
        if found:
            names[int(found.group(1))] = name
    return names


def read_commits(store: Store, stage: str, version: str) -> dict[int, dict[str, Any]]:
    """Every commit record of a version, by shard number."""
    records = {}
    for shard, name in record_names(store, stage, version).items():
        path = store.path(stage, version, COMMITS_DIR, name)
        try:
            record = json.loads(store.read_bytes(stage, version, COMMITS_DIR, name).decode("utf-8"))
            if int(record["shard"]) != shard:
                raise ValueError(f"it names shard {record['shard']}")
            records[shard] = record
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DamagedOutputError(f"{path}: damaged commit record ({exc}); {repair_hint(store, stage)}") from exc
    return records


def withdraw(store: Store, stage: str, version: str, shard: int) -> None:
    """Un-commit a shard: its files go first, so no reader ever sees a part without a record."""
    name = shard_name(shard)
    store.delete(stage, version, name)
    store.delete(failures_dir(stage, version), name)
    store.delete(stage, version, COMMITS_DIR, _record_name(shard))


def recover(store: Store, stage: str, version: str) -> list[int]:
    """Bring a version folder back to its committed state before a run continues it.

    Finishes publishing records whose files are still staged, withdraws records whose files
    are lost, and removes everything uncommitted: the staging area, temporaries and any part
    without a record. Call it only while holding the version's lease. Returns withdrawn shards.
    """
    withdrawn = []
    store.remove_temporaries(stage, version, COMMITS_DIR)
    records = read_commits(store, stage, version)
    for shard, record in sorted(records.items()):
        if not publish(store, record):
            log.warning("%s %s: shard %d was committed but its files are gone; recomputing it",
                        stage, version, shard)
            withdraw(store, stage, version, shard)
            withdrawn.append(shard)
            del records[shard]
    store.delete(stage, version, STAGING_DIR)
    committed = {shard_name(shard) for shard in records}
    for folder in (f"{stage}/{version}", failures_dir(stage, version)):
        store.remove_temporaries(folder)
        for name in store.list_files(folder, suffix=".parquet"):
            if name not in committed and name != PLAN_FILE:
                store.delete(folder, name)
    return withdrawn


RECORD_NAME = re.compile(r"part-(\d{5,})\.json")


def _record_name(shard: int) -> str:
    return shard_name(shard).replace(".parquet", ".json")


# ---- the item plan ---------------------------------------------------------------------------


def write_plan(store: Store, stage: str, version: str, ids: pa.Array, rows_per_shard: int,
               manifest: dict[str, Any]) -> None:
    """Which shard each item belongs to; carries the manifest too, so a damaged one can be rebuilt."""
    shards = pa.array([i // rows_per_shard for i in range(len(ids))], pa.int32())
    table = pa.table({"item_id": ids.cast(pa.string()), "shard": shards})
    store.write_bytes(parquet_bytes(table, {"tvr.manifest": json.dumps(manifest, sort_keys=True)}),
                      stage, version, PLAN_FILE)


def read_plan(store: Store, stage: str, version: str) -> tuple[pa.Table, dict[str, Any]]:
    path = store.path(stage, version, PLAN_FILE)
    try:
        table = store.read_parquet(stage, version, PLAN_FILE)
        manifest = json.loads(table.schema.metadata[b"tvr.manifest"])
    except (OSError, pa.ArrowException, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise DamagedOutputError(f"{path}: damaged item plan ({exc})") from exc
    return table, manifest


# ---- checking --------------------------------------------------------------------------------


def check_committed(store: Store, output: StageOutput, manifest: dict[str, Any] | None = None) -> dict[int, dict]:
    """The cheap check a run makes of a complete version it reads or skips: every planned shard
    has a record, and each part is there with its recorded size and a readable footer with its
    recorded rows. Raises DamagedOutputError naming the first bad file; returns the records."""
    stage, version = output.stage, output.version
    records = read_commits(store, stage, version)
    if manifest is not None:
        missing = [s for s in range(manifest["num_shards"]) if s not in records]
        if missing:
            raise DamagedOutputError(
                f"{store.path(stage, version)} is marked complete but shard(s) {missing[:5]} have no commit "
                f"record; {repair_hint(store, stage)}")
    for record in records.values():
        for file in record["files"]:
            problem = part_problem(store, file, deep=False)
            if problem:
                raise DamagedOutputError(f"{store.path(file['final'])}: {problem}; {repair_hint(store, stage)}")
    return records


def part_problem(store: Store, file: dict[str, Any], deep: bool) -> str | None:
    """What is wrong with a committed part compared with its record, or None.

    Cheap: size and footer. Deep (`tvr verify`): the sha256 of every byte too.
    """
    size = store.size(file["final"])
    if size is None:
        return "committed part is missing"
    if size != file["bytes"]:
        return f"committed part has {size} bytes, its record says {file['bytes']}"
    try:
        rows = pq.read_metadata(store.path(file["final"]), filesystem=store.fs).num_rows
    except (OSError, pa.ArrowException) as exc:
        return f"committed part is not readable Parquet ({exc})"
    if rows != file["rows"]:
        return f"committed part has {rows} rows, its record says {file['rows']}"
    if deep and store.sha256(file["final"]) != file["sha256"]:
        return "committed part's sha256 differs from its record (the bytes changed)"
    return None


def committed_paths(records: dict[int, dict[str, Any]], failures: bool = False) -> list[str]:
    """Store-relative paths of the committed row parts (or failure parts), in shard order."""
    return [records[shard]["files"][1 if failures else 0]["final"] for shard in sorted(records)]

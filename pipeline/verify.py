"""`tvr verify OUT [--stage S] [--repair]`: prove that the output holds exactly what was committed.

For every version of every stage: each committed part against its commit record (present, size,
sha256 of every byte, rows, schema); every planned item exactly once across rows and failures;
a complete version has every shard; LATEST names a complete version; nothing else lies in the
version folders (uncommitted parts, leftover staging, folders without a record). A version that a
live driver is writing (its lease is fresh) is checked only for what it has committed.

`--repair` withdraws what is bad, so the next run recomputes only that: a bad shard loses its
record and files and its version is marked partial; a damaged `_manifest.json` is rebuilt from
`_plan.parquet`; stray files are removed; LATEST is re-pointed at the newest complete version.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.commit import part_problem, read_plan, record_names, withdraw
from pipeline.lease import Lease
from pipeline.outputs import (
    COMMITS_DIR,
    LATEST_FILE,
    LEASE_FILE,
    MANIFEST_FILE,
    PLAN_FILE,
    DamagedOutputError,
    failures_dir,
    read_manifest,
    write_manifest,
)
from pipeline.schema import FAILURES
from pipeline.storage import Store


@dataclass(frozen=True)
class Finding:
    stage: str
    version: str | None
    path: str  # store-relative file or folder
    problem: str
    shard: int | None = None  # set when withdrawing that shard repairs it


@dataclass
class Report:
    root: str
    findings: list[Finding] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    versions: int = 0
    shards: int = 0
    items: int = 0
    in_progress: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def render(self) -> str:
        lines = [f"{self.root}/{f.path}: {f.problem}" for f in self.findings]
        lines += [f"repaired: {line}" for line in self.repaired]
        lines += [f"in progress (lease held, only committed shards checked): {v}" for v in self.in_progress]
        verdict = "OK" if self.ok else f"{len(self.findings)} problem(s)"
        if self.repaired:
            verdict += f", {len(self.repaired)} repair(s) made"
        lines.append(f"verify {self.root}: {verdict}; checked {self.versions} versions, {self.shards} shards, "
                     f"{self.items} items")
        return "\n".join(lines)


def verify(out: str, stage: str | None = None, repair: bool = False) -> Report:
    store = Store.open(out)
    stages = [s for s in store.list_dirs() if _holds_stage_output(store, s)]
    if stage is not None:
        if stage not in stages:
            raise ValueError(f"{out} has no output of stage {stage!r} (stages there: {', '.join(stages) or 'none'})")
        stages = [stage]
    report = Report(store.root)
    for name in stages:
        _verify_stage(store, name, report, repair)
    return report


def _holds_stage_output(store: Store, folder: str) -> bool:
    """Stage folders: a known stage, or one with LATEST or a versioned record. Other folders (the
    demo's videos, a researcher's notes) are not ours to judge."""
    from pipeline.manifest import TABLES
    from pipeline.stages import STAGES

    if folder == "failures" or folder.startswith(("_", ".")):
        return False
    if folder in STAGES or folder in TABLES or store.exists(folder, LATEST_FILE):
        return True
    return any(store.exists(folder, version, MANIFEST_FILE) or store.exists(folder, version, COMMITS_DIR)
               for version in store.list_dirs(folder))


def _verify_stage(store: Store, stage: str, report: Report, repair: bool) -> None:
    versions = [v for v in store.list_dirs(stage) if not v.startswith(("_", "."))]
    for version in versions:
        _verify_version(store, stage, version, report, repair)
    for version in store.list_dirs("failures", stage):
        if version not in versions:
            _stray(store, report, repair, stage, None, failures_dir(stage, version), "failures of a version that "
                   "does not exist")
    _verify_latest(store, stage, versions, report, repair)


def _verify_version(store: Store, stage: str, version: str, report: Report, repair: bool) -> None:
    folder = f"{stage}/{version}"
    in_progress = _lease_is_live(store, stage, version)
    try:
        manifest = read_manifest(store, stage, version)
    except DamagedOutputError as exc:
        report.findings.append(Finding(stage, version, f"{folder}/{MANIFEST_FILE}", f"damaged ({exc.__cause__})"))
        manifest = _rebuild_manifest(store, stage, version, report) if repair else None
        if manifest is None:
            if repair:  # nothing to rebuild it from (the manifest's problems table): a rerun rewrites it
                store.delete(folder)
                store.delete(failures_dir(stage, version))
                report.repaired.append(f"removed {folder}: its record cannot be rebuilt; rerun to write it again")
            return
    if manifest is None:
        # An empty folder is what a driver leaves that stopped before planning (its items failed
        # to load); only files without a record are strays.
        if not in_progress and store.walk_files(folder):
            _stray(store, report, repair, stage, version, folder, "folder with no _manifest.json (not a version)")
        return
    report.versions += 1
    if in_progress:
        report.in_progress.append(folder)
    plan = _plan_by_shard(store, stage, version, manifest, report)
    records = _read_records(store, stage, version, report, repair)
    expected_schema = _expected_schema(stage, records, store)
    bad_shards = set()
    for shard, record in sorted(records.items()):
        report.shards += 1
        report.items += record.get("items", 0)
        problem = _shard_problem(store, record, manifest.get("key"), plan, expected_schema)
        if problem:
            path, what = problem
            report.findings.append(Finding(stage, version, path, what, shard))
            bad_shards.add(shard)
    missing = [s for s in range(manifest["num_shards"]) if s not in records]
    if manifest.get("complete") and missing:
        report.findings.append(Finding(stage, version, folder, f"marked complete but shard(s) {missing[:10]} have "
                                                               "no commit record"))
    if not in_progress:
        _check_strays(store, stage, version, records, report, repair)
    if repair and (bad_shards or (manifest.get("complete") and missing)):
        for shard in sorted(bad_shards):
            withdraw(store, stage, version, shard)
            report.repaired.append(f"withdrew shard {shard} of {folder}; the next run recomputes it")
        if manifest.get("complete"):
            for key in ("complete", "finished", "rows", "failures"):
                manifest.pop(key, None)
            write_manifest(store, {**manifest, "complete": False})
            report.repaired.append(f"marked {folder} partial")


def _shard_problem(store: Store, record: dict[str, Any], key: str | None, plan: dict[int, list[str]] | None,
                   expected_schema: list | None) -> tuple[str, str] | None:
    for index, file in enumerate(record["files"]):
        problem = part_problem(store, file, deep=True)
        if problem:
            return file["final"], problem
        schema = pq.read_schema(store.path(file["final"]), filesystem=store.fs)
        wanted = FAILURES if index == 1 else expected_schema
        if wanted is not None and not _same_fields(schema, wanted):
            return file["final"], f"schema differs from the stage's: {_difference(schema, wanted)}"
    if key is None or plan is None:
        return None
    rows_file, failures_file = record["files"][0], record["files"][1]
    ids = store.read_parquet(rows_file["final"], columns=[key]).column(key).to_pylist()
    ids += store.read_parquet(failures_file["final"], columns=["item_id"]).column("item_id").to_pylist()
    expected = plan.get(record["shard"], [])
    counts = Counter(ids)
    repeated = sorted(i for i, n in counts.items() if n > 1)
    lost = sorted(set(expected) - set(counts))
    foreign = sorted(set(counts) - set(expected))
    if repeated or lost or foreign:
        parts = [f"{label} {ids_[:5]}" for label, ids_ in
                 (("repeated", repeated), ("lost", lost), ("not planned", foreign)) if ids_]
        return rows_file["final"], "items not exactly once: " + "; ".join(parts)
    return None


def _plan_by_shard(store: Store, stage: str, version: str, manifest: dict, report: Report) -> dict | None:
    if manifest.get("key") is None:
        return None
    if not store.exists(stage, version, PLAN_FILE):
        report.findings.append(Finding(stage, version, f"{stage}/{version}/{PLAN_FILE}", "item plan is missing"))
        return None
    try:
        table, _ = read_plan(store, stage, version)
    except DamagedOutputError as exc:
        report.findings.append(Finding(stage, version, f"{stage}/{version}/{PLAN_FILE}", str(exc)))
        return None
    plan: dict[int, list[str]] = {}
    for item, shard in zip(table.column("item_id").to_pylist(), table.column("shard").to_pylist()):
        plan.setdefault(shard, []).append(item)
    if len(table) != manifest["num_items"]:
        report.findings.append(Finding(stage, version, f"{stage}/{version}/{PLAN_FILE}",
                                       f"plans {len(table)} items, the manifest says {manifest['num_items']}"))
    return plan


def _read_records(store: Store, stage: str, version: str, report: Report, repair: bool) -> dict[int, dict]:
    records = {}
    for shard, name in record_names(store, stage, version).items():
        path = f"{stage}/{version}/{COMMITS_DIR}/{name}"
        try:
            record = json.loads(store.read_bytes(path))
            if int(record["shard"]) != shard:
                raise ValueError(f"it names shard {record['shard']}")
            records[shard] = record
        except (ValueError, KeyError, TypeError) as exc:
            report.findings.append(Finding(stage, version, path, f"damaged commit record ({exc})"))
            if repair:  # unreadable: its files cannot be trusted either
                withdraw(store, stage, version, shard)
                report.repaired.append(f"withdrew shard {shard} of {stage}/{version}; the next run recomputes it")
    return records


def _expected_schema(stage: str, records: dict[int, dict], store: Store) -> pa.Schema | None:
    from pipeline.manifest import TABLES
    from pipeline.stages import STAGES

    if stage in STAGES and not callable(STAGES[stage].schema):
        return STAGES[stage].schema
    if stage in TABLES:
        return TABLES[stage][0]
    # A schema that follows from the config (a model's dimension), or a stage this package does
    # not know: the parts must agree with each other.
    for record in records.values():
        try:
            return pq.read_schema(store.path(record["files"][0]["final"]), filesystem=store.fs)
        except (OSError, pa.ArrowException):
            continue
    return None


def _same_fields(schema: pa.Schema, wanted: pa.Schema) -> bool:
    return schema.names == wanted.names and all(a.type.equals(b.type) for a, b in zip(schema, wanted))


def _difference(schema: pa.Schema, wanted: pa.Schema) -> str:
    if schema.names != wanted.names:
        return f"columns {schema.names}, expected {wanted.names}"
    return "; ".join(f"{a.name} is {a.type}, expected {b.type}" for a, b in zip(schema, wanted)
                     if not a.type.equals(b.type))


def _check_strays(store: Store, stage: str, version: str, records: dict, report: Report, repair: bool) -> None:
    allowed = {f"{stage}/{version}/{name}" for name in (MANIFEST_FILE, PLAN_FILE, LEASE_FILE)}
    allowed |= {f"{stage}/{version}/{COMMITS_DIR}/{name}" for name in record_names(store, stage, version).values()}
    allowed |= {file["final"] for record in records.values() for file in record["files"]}
    for folder in (f"{stage}/{version}", failures_dir(stage, version)):
        for path in store.walk_files(folder):
            if path not in allowed:
                _stray(store, report, repair, stage, version, path, "not committed (a stray file)")


def _stray(store: Store, report: Report, repair: bool, stage: str, version: str | None, path: str,
           problem: str) -> None:
    report.findings.append(Finding(stage, version, path, problem))
    if repair:
        store.delete(path)
        report.repaired.append(f"removed {path}")


def _verify_latest(store: Store, stage: str, versions: list[str], report: Report, repair: bool) -> None:
    if not store.exists(stage, LATEST_FILE):
        return
    pointed = store.read_text(stage, LATEST_FILE).strip()
    complete = {}
    for version in versions:
        try:
            manifest = read_manifest(store, stage, version)
        except DamagedOutputError:
            continue
        if manifest and manifest.get("complete"):
            complete[version] = manifest.get("finished", "")
    if pointed in complete:
        return
    report.findings.append(Finding(stage, None, f"{stage}/{LATEST_FILE}",
                                   f"points at {pointed or 'nothing'}, which is not a complete version"))
    if repair:
        if complete:
            newest = max(complete, key=complete.get)
            store.write_text(newest + "\n", stage, LATEST_FILE)
            report.repaired.append(f"pointed {stage}/{LATEST_FILE} at {newest}, the newest complete version")
        else:
            store.delete(stage, LATEST_FILE)
            report.repaired.append(f"removed {stage}/{LATEST_FILE}: no version of {stage} is complete")


def _rebuild_manifest(store: Store, stage: str, version: str, report: Report) -> dict | None:
    """A damaged `_manifest.json` rebuilt from the copy that `_plan.parquet` carries."""
    try:
        _, manifest = read_plan(store, stage, version)
    except DamagedOutputError:
        return None
    manifest = {**manifest, "complete": False}  # verification below decides; the next run completes it
    write_manifest(store, manifest)
    report.repaired.append(f"rebuilt {stage}/{version}/{MANIFEST_FILE} from {PLAN_FILE} (marked partial: "
                           "the next run re-checks and completes it)")
    return manifest


def _lease_is_live(store: Store, stage: str, version: str) -> bool:
    holder = Lease(store, stage, version).holder()
    if holder is None:
        return False
    return time.time() - float(holder.get("heartbeat", 0)) <= float(holder.get("ttl_seconds", 60))

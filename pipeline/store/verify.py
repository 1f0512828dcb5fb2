"""`tvr verify OUT [--stage S] [--repair]`: prove that the output holds exactly what was committed.

For every version of every stage: each committed part against its commit record (present, size,
sha256 of every byte, rows, schema); every planned item exactly once across rows and failures;
a complete version has every shard; LATEST names a complete version; nothing else lies in the
version folders (uncommitted parts, leftover staging, folders without a record). A version that a
live driver is writing (its lease is fresh) is checked only for what it has committed.

`--repair` withdraws what is bad, so the next run recomputes only that: a bad shard loses its
record and files and its version is marked partial; a damaged `_manifest.json` (unreadable, a
field missing or mistyped, an identity that does not hash to its folder's name, a plan that
differs from `_plan.parquet`'s copy) is rebuilt from that copy, and the version is removed only
when there is no copy to rebuild it from; a damaged or missing `_plan.parquet` is removed and its
version marked partial, so the next run writes the plan again from its inputs and recomputes
nothing committed; stray files (leftover staging folders included) are removed; LATEST is
re-pointed at the newest complete version.

The caller says which stages it knows and the schema each declares (`schemas`; the CLI passes
every stage's and the manifest's); a stage whose schema follows from its config (a model's
dimension), or that this package does not know, is held to its own parts agreeing.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipeline.config import ConfigError
from pipeline.store.schema import FAILURES
from pipeline.store.storage import Store
from pipeline.store.version import (
    STAGING_DIR,
    DamagedOutputError,
    Version,
    failure_versions,
    latest_path,
    latest_pointer,
    looks_like_stage,
    point_latest,
    stage_folders,
    versions,
)

# Stage name -> its declared schema, or None when the schema follows from the stage's config.
Schemas = Mapping[str, "pa.Schema | None"]


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
        # One line per finding, whatever a library's message held (pyarrow's end in a newline).
        lines = [" ".join(f"{self.root}/{f.path}: {f.problem}".split()) for f in self.findings]
        lines += [f"repaired: {line}" for line in self.repaired]
        lines += [f"in progress (lease held, only committed shards checked): {v}" for v in self.in_progress]
        verdict = "OK" if self.ok else f"{len(self.findings)} problem(s)"
        if self.repaired:
            verdict += f", {len(self.repaired)} repair(s) made"
        lines.append(f"verify {self.root}: {verdict}; checked {self.versions} versions, {self.shards} shards, "
                     f"{self.items} items")
        return "\n".join(lines)


def verify(out: str, stage: str | None = None, repair: bool = False, schemas: Schemas | None = None) -> Report:
    store = Store.open(out)
    schemas = schemas or {}
    stages = [s for s in stage_folders(store) if s in schemas or looks_like_stage(store, s)]
    if stage is not None:
        if stage not in stages:
            raise ConfigError(f"{out} has no output of stage {stage!r} (stages there: {', '.join(stages) or 'none'})")
        stages = [stage]
    report = Report(store.root)
    for name in stages:
        _verify_stage(store, name, report, repair, schemas.get(name))
    return report


def _verify_stage(store: Store, stage: str, report: Report, repair: bool, schema: pa.Schema | None) -> None:
    found = versions(store, stage)
    for version in found:
        _verify_version(version, report, repair, schema)
    names = {v.version for v in found}
    for orphan in failure_versions(store, stage):
        if orphan.version not in names:
            _stray(store, report, repair, stage, None, orphan.failures_path,
                   "failures of a version that does not exist")
    _verify_latest(store, stage, found, report, repair)


def _verify_version(version: Version, report: Report, repair: bool, schema: pa.Schema | None) -> None:
    store, stage, folder = version.store, version.stage, version.path
    in_progress = _lease_is_live(version)
    try:
        manifest = version.manifest()
    except DamagedOutputError as exc:
        report.findings.append(Finding(stage, version.version, version.manifest_path, f"damaged ({exc.problem})"))
        manifest = _rebuild_manifest(version, report) if repair else None
        if manifest is None:
            if repair:  # nothing to rebuild it from (the manifest's problems table): a rerun rewrites it
                version.delete()
                report.repaired.append(f"removed {folder}: its record cannot be rebuilt; rerun to write it again")
            return
    if manifest is None:
        # An empty folder is what a driver leaves that stopped before planning (its items failed
        # to load); only files without a record are strays.
        if not in_progress and version.holds_files():
            _stray(store, report, repair, stage, version.version, folder,
                   "folder with no _manifest.json (not a version)")
        return
    report.versions += 1
    if in_progress:
        report.in_progress.append(folder)
    plan, plan_bad, manifest = _check_plan(version, manifest, report, repair)
    records = _read_records(version, report, repair)
    expected_schema = schema if schema is not None else _agreed_schema(version, records)
    bad_shards = set()
    for shard, record in sorted(records.items()):
        report.shards += 1
        report.items += record.get("items", 0)
        problem = _shard_problem(version, record, manifest.get("key"), plan, expected_schema)
        if problem:
            path, what = problem
            report.findings.append(Finding(stage, version.version, path, what, shard))
            bad_shards.add(shard)
    missing = [s for s in range(manifest["num_shards"]) if s not in records]
    wrong_totals = False
    if manifest["complete"] and missing:
        report.findings.append(Finding(stage, version.version, folder,
                                       f"marked complete but shard(s) {missing[:10]} have no commit record"))
    elif manifest["complete"]:
        totals = (sum(r["rows"] for r in records.values()), sum(r["failures"] for r in records.values()))
        if totals != (manifest["rows"], manifest["failures"]):
            wrong_totals = True
            report.findings.append(Finding(
                stage, version.version, version.manifest_path,
                f"says {manifest['rows']} rows and {manifest['failures']} failures, its commit records "
                f"{totals[0]} and {totals[1]}"))
    if not in_progress:
        for path in version.stray_files(records):
            what = "a stray folder" if path.endswith(f"/{STAGING_DIR}") else "a stray file"
            _stray(store, report, repair, stage, version.version, path, f"not committed ({what})")
        if repair:
            version.clear_staging()  # the attempt folders that held the stray parts
    if repair and (bad_shards or plan_bad or wrong_totals or (manifest["complete"] and missing)):
        for shard in sorted(bad_shards):
            version.withdraw(shard)
            report.repaired.append(f"withdrew shard {shard} of {folder}; the next run recomputes it")
        if plan_bad and version.has_plan():
            store.delete(version.plan_path)
            report.repaired.append(f"removed {version.plan_path}; the next run writes it again from its inputs")
        if manifest["complete"]:
            _mark_partial(version, manifest, report)


def _mark_partial(version: Version, manifest: dict, report: Report) -> None:
    """The next run finishes the version again: it recomputes only shards without a record."""
    manifest = {k: v for k, v in manifest.items() if k not in ("finished", "rows", "failures")}
    version.write_manifest({**manifest, "complete": False})
    report.repaired.append(f"marked {version.path} partial")


# What the plan's copy of the record fixed when the version was planned; a record that differs
# from it there was edited (its identity is already checked against the folder's name).
PLANNED = ("key", "num_items", "rows_per_shard", "num_shards")


def _check_plan(version: Version, manifest: dict, report: Report,
                repair: bool) -> tuple[dict | None, bool, dict]:
    """The plan's items by shard (None when there is none to check against); whether the plan is
    missing or damaged (the next run writes it again, repair removes a damaged one); and the
    record, rebuilt from the plan's copy when it disagrees with it on the plan (repairing)."""
    if manifest.get("key") is None:
        return None, False, manifest
    if not version.has_plan():
        if not manifest["complete"]:  # removed by a repair: the next run writes it again before it commits
            return None, False, manifest
        report.findings.append(Finding(version.stage, version.version, version.plan_path, "item plan is missing"))
        return None, True, manifest
    try:
        table, copy = version.read_plan()
    except DamagedOutputError as exc:
        report.findings.append(Finding(version.stage, version.version, version.plan_path, exc.problem))
        return None, True, manifest
    differing = [name for name in PLANNED if manifest.get(name) != copy.get(name)]
    if differing:
        report.findings.append(Finding(
            version.stage, version.version, version.manifest_path,
            f"differs from the copy in {version.plan_path} on {', '.join(differing)} (edited)"))
        # The rest is checked against the plan's copy: an edited key or shard count would
        # otherwise be read as the truth (a key naming no column).
        manifest = _rebuild_manifest(version, report) if repair else {
            **manifest, **{name: copy[name] for name in PLANNED}}
    plan: dict[int, list[str]] = {}
    for item, shard in zip(table.column("item_id").to_pylist(), table.column("shard").to_pylist()):
        plan.setdefault(shard, []).append(item)
    return plan, False, manifest


def _shard_problem(version: Version, record: dict[str, Any], key: str | None, plan: dict[int, list[str]] | None,
                   expected_schema: pa.Schema | None) -> tuple[str, str] | None:
    for index, file in enumerate(record["files"]):
        problem = version.part_problem(file, deep=True)
        if problem:
            return file["final"], problem
        schema = version.part_schema(file["final"])
        wanted = FAILURES if index == 1 else expected_schema
        if wanted is not None and not _same_fields(schema, wanted):
            return file["final"], f"schema differs from the stage's: {_difference(schema, wanted)}"
    if key is None or plan is None:
        return None
    rows_file, failures_file = record["files"][0], record["files"][1]
    ids = version.read_part(rows_file["final"], columns=[key]).column(key).to_pylist()
    ids += version.read_part(failures_file["final"], columns=["item_id"]).column("item_id").to_pylist()
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


def _read_records(version: Version, report: Report, repair: bool) -> dict[int, dict]:
    records = {}
    for shard in version.record_names():
        try:
            records[shard] = version.read_record(shard)
        except DamagedOutputError as exc:
            report.findings.append(Finding(version.stage, version.version, version.record_path(shard), exc.problem))
            if repair:  # unreadable: its files cannot be trusted either
                version.withdraw(shard)
                report.repaired.append(f"withdrew shard {shard} of {version.path}; the next run recomputes it")
    return records


def _agreed_schema(version: Version, records: dict[int, dict]) -> pa.Schema | None:
    """For a schema that follows from the config, or a stage the caller does not know: the parts
    must agree with each other (the first readable one sets the schema)."""
    for record in records.values():
        try:
            return version.part_schema(record["files"][0]["final"])
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


def _stray(store: Store, report: Report, repair: bool, stage: str, version: str | None, path: str,
           problem: str) -> None:
    report.findings.append(Finding(stage, version, path, problem))
    if repair:
        store.delete(path)
        report.repaired.append(f"removed {path}")


def _verify_latest(store: Store, stage: str, found: list[Version], report: Report, repair: bool) -> None:
    pointed = latest_pointer(store, stage)
    if pointed is None:
        return
    complete = {}
    for version in found:
        try:
            manifest = version.manifest()
        except DamagedOutputError:
            continue
        if manifest and manifest.get("complete"):
            complete[version.version] = manifest.get("finished", "")
    if pointed in complete:
        return
    report.findings.append(Finding(stage, None, latest_path(stage),
                                   f"points at {pointed or 'nothing'}, which is not a complete version"))
    if repair:
        if complete:
            newest = max(complete, key=complete.get)
            point_latest(store, stage, newest)
            report.repaired.append(f"pointed {stage}/LATEST at {newest}, the newest complete version")
        else:
            point_latest(store, stage, None)
            report.repaired.append(f"removed {stage}/LATEST: no version of {stage} is complete")


def _rebuild_manifest(version: Version, report: Report) -> dict | None:
    """A damaged `_manifest.json` rebuilt from the copy that `_plan.parquet` carries."""
    try:
        _, manifest = version.read_plan()
    except DamagedOutputError:
        return None
    manifest = {**manifest, "complete": False}  # verification below decides; the next run completes it
    version.write_manifest(manifest)
    report.repaired.append(f"rebuilt {version.manifest_path} from {version.plan_path} (marked partial: "
                           "the next run re-checks and completes it)")
    return manifest


def _lease_is_live(version: Version) -> bool:
    holder = version.lease().holder()
    if holder is None:
        return False
    return time.time() - float(holder.get("heartbeat", 0)) <= float(holder.get("ttl_seconds", 60))

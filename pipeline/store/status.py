"""`tvr status OUT`: each stage's versions, shards, rows and failures, read from the files themselves.

Rows are counted from the Parquet footers of committed parts; a part that is missing or damaged
is counted as such (run `tvr verify`) rather than crashing the listing. Where a stage has several
versions, the config values that tell them apart are shown (strategy, model, prompt, ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from pipeline.store.storage import Store
from pipeline.store.version import DamagedOutputError, Version, latest_pointer, stage_folders, versions


@dataclass
class VersionStatus:
    stage: str
    version: str
    latest: bool
    complete: bool
    shards_committed: int
    shards_planned: int
    items: int
    rows: int  # counted from the Parquet footers of committed shards
    failures: int
    created: str
    damaged: list[str] = field(default_factory=list)  # what is wrong with the record or its parts
    distinct: str = ""  # the config values that set this version apart from its siblings
    identity: dict[str, Any] = field(default_factory=dict, repr=False)


def _version_status(version: Version, latest: str | None) -> VersionStatus | None:
    stage, name, is_latest = version.stage, version.version, version.version == latest
    try:
        manifest = version.manifest()
    except DamagedOutputError:
        return VersionStatus(stage, name, is_latest, False, 0, 0, 0, 0, 0, "?", damaged=["damaged _manifest.json"])
    if manifest is None:
        return None
    status = VersionStatus(stage, name, is_latest, bool(manifest.get("complete")), 0,
                           manifest["num_shards"], manifest["num_items"], 0, 0, manifest.get("created", "?"),
                           identity=manifest.get("identity", {}))
    try:
        records = version.commits()
    except DamagedOutputError:
        status.damaged.append("damaged commit record")
        return status
    status.shards_committed = len(records)
    for record in records.values():
        for index, file in enumerate(record["files"]):
            rows = version.part_rows(file["final"]) if version.store.size(file["final"]) == file["bytes"] else None
            if rows is None:
                status.damaged.append(f"shard {record['shard']}")
                break
            if index == 0:
                status.rows += rows
            else:
                status.failures += rows
    return status


def collect(out: str, order: Sequence[str] = ()) -> list[VersionStatus]:
    """Every version in `out`, stage by stage: those named in `order` first, in that order (the
    caller's stage order), then any other stage folder by name."""
    store = Store.open(out)
    order = list(order)
    found = []
    for stage in sorted(stage_folders(store), key=lambda s: (order.index(s) if s in order else len(order), s)):
        latest = latest_pointer(store, stage)
        statuses = [_version_status(v, latest) for v in versions(store, stage)]
        statuses = [s for s in statuses if s is not None]
        _describe_differences(statuses)
        found.extend(statuses)
    return found


def _describe_differences(versions: list[VersionStatus]) -> None:
    """Each version's config values and inputs that differ from its siblings', as `key=value`."""
    if len(versions) < 2:
        return
    flat = [_flatten({"config": v.identity.get("config", {}), "inputs": v.identity.get("inputs", {}),
                      **{k: val for k, val in v.identity.items()
                         if k not in ("config", "inputs", "stage", "schema_version", "content_sha256")}})
            for v in versions]
    keys = sorted({k for f in flat for k in f})
    differing = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]
    for version, values in zip(versions, flat):
        shown = [f"{k.removeprefix('config.')}={values.get(k)}" for k in differing]
        version.distinct = ", ".join(shown)


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): data}


_ROW = "{:<%d} {:<13} {:<11} {:>9} {:>7} {:>7} {:>8}  {}"


def render(statuses: list[VersionStatus]) -> str:
    if not statuses:
        return "no stage output here"
    row = _ROW % max(len("stage"), *(len(s.stage) for s in statuses))  # the longest stage name sets the column
    lines = [row.format("stage", "version", "state", "shards", "items", "rows", "failures", "created")]
    for s in statuses:
        state = ("complete" if s.complete else "partial") + (" *" if s.latest else "")
        line = row.format(s.stage, s.version, state, f"{s.shards_committed}/{s.shards_planned}", s.items, s.rows,
                           s.failures, s.created)
        if s.distinct:
            line += f"   {s.distinct}"
        if s.damaged:
            line += f"   DAMAGED: {', '.join(s.damaged[:3])} (run `tvr verify`)"
        lines.append(line)
    lines.append("* = LATEST")
    return "\n".join(lines)

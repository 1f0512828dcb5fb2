"""`tvr status OUT`: each stage's versions, shards, rows and failures, read from the files themselves."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.parquet as pq

from pipeline import outputs
from pipeline.storage import Store


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
    uncommitted_files: int  # part files on disk that no manifest records (a killed run)
    created: str


def _count_rows(store: Store, folder: str, names: list[str]) -> int:
    return sum(pq.ParquetFile(store.path(folder, n), filesystem=store.fs).metadata.num_rows
               for n in names if store.exists(folder, n))


def collect(out: str) -> list[VersionStatus]:
    from pipeline.stages import STAGES

    store = Store.open(out)
    order = ["manifest", *STAGES]
    stages = [s for s in store.list_dirs() if s != "failures"]
    found = []
    for stage in sorted(stages, key=lambda s: (order.index(s) if s in order else len(order), s)):
        latest = None
        if store.exists(stage, outputs.LATEST_FILE):
            latest = store.read_text(stage, outputs.LATEST_FILE).strip()
        for version in store.list_dirs(stage):
            manifest = outputs.read_manifest(store, stage, version)
            if manifest is None:
                continue
            folder = f"{stage}/{version}"
            if stage == "manifest":
                rows = manifest["rows"]
                found.append(VersionStatus(stage, version, version == latest, manifest["complete"], 1, 1,
                                           rows["videos"], rows["captions"], rows["problems"], 0,
                                           manifest["created"]))
                continue
            committed = sorted(manifest["shards"])
            on_disk = store.list_files(folder, suffix=".parquet")
            found.append(VersionStatus(
                stage=stage,
                version=version,
                latest=version == latest,
                complete=bool(manifest["complete"]),
                shards_committed=len(committed),
                shards_planned=manifest["num_shards"],
                items=manifest["num_items"],
                rows=_count_rows(store, folder, committed),
                failures=_count_rows(store, outputs.failures_dir(stage, version), committed),
                uncommitted_files=len(set(on_disk) - set(committed)),
                created=manifest["created"],
            ))
    return found


_ROW = "{:<12} {:<13} {:<11} {:>9} {:>7} {:>7} {:>8}  {}"


def render(statuses: list[VersionStatus]) -> str:
    if not statuses:
        return "no stage output here"
    lines = [_ROW.format("stage", "version", "state", "shards", "items", "rows", "failures", "created")]
    for s in statuses:
        state = ("complete" if s.complete else "partial") + (" *" if s.latest else "")
        shards = "" if s.stage == "manifest" else f"{s.shards_committed}/{s.shards_planned}"
        line = _ROW.format(s.stage, s.version, state, shards, s.items, s.rows, s.failures, s.created)
        if s.stage == "manifest":
            line += "   (videos, captions, problems)"
        elif s.uncommitted_files:
            line += f"   ({s.uncommitted_files} uncommitted part files: rerun to finish)"
        lines.append(line)
    lines.append("* = LATEST")
    return "\n".join(lines)

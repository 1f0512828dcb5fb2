"""The output layout and its promises (DESIGN.md, "Output layout").

    OUT/<stage>/<version>/part-00000.parquet ...   rows, one file per input shard
    OUT/<stage>/<version>/_manifest.json           identity, shard plan, committed shards
    OUT/<stage>/LATEST                             the newest complete version
    OUT/failures/<stage>/<version>/part-00000.parquet ...

A version is a short hash of everything that decides the rows, so nothing is ever overwritten:
a changed config, prompt or upstream version is a new folder beside the old one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

import pyarrow as pa

from pipeline import __version__
from pipeline.schema import SCHEMA_VERSION
from pipeline.stage import StageOutput
from pipeline.storage import Store

MANIFEST_FILE = "_manifest.json"
LATEST_FILE = "LATEST"


def content_hash(data: Any, length: int = 12) -> str:
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def shard_name(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


def failures_dir(stage: str, version: str) -> str:
    return f"failures/{stage}/{version}"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def read_manifest(store: Store, stage: str, version: str) -> dict[str, Any] | None:
    if not store.exists(stage, version, MANIFEST_FILE):
        return None
    return store.read_json(stage, version, MANIFEST_FILE)


def write_manifest(store: Store, manifest: dict[str, Any]) -> None:
    store.write_json(manifest, manifest["stage"], manifest["version"], MANIFEST_FILE)


def latest(store: Store, stage: str) -> StageOutput | None:
    """The newest complete version of `stage`, or None if it never completed."""
    if not store.exists(stage, LATEST_FILE):
        return None
    version = store.read_text(stage, LATEST_FILE).strip()
    manifest = read_manifest(store, stage, version)
    if manifest is None or not manifest.get("complete"):
        return None
    return StageOutput(stage, version)


def mark_latest(store: Store, stage: str, version: str) -> None:
    store.write_text(version + "\n", stage, LATEST_FILE)


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


# ---- the dataset manifest: a version whose hash is the content itself ------------------------

MANIFEST_TABLES = ("videos", "captions", "problems")


def write_dataset_manifest(store: Store, tables: dict[str, pa.Table], source: dict[str, Any]) -> StageOutput:
    """Write the videos/captions/problems tables; the version is a hash of their rows."""
    digest = hashlib.sha256()
    for name in MANIFEST_TABLES:
        digest.update(name.encode())
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, tables[name].schema) as writer:
            writer.write_table(tables[name])
        digest.update(sink.getvalue().to_pybytes())
    version = digest.hexdigest()[:12]
    stage = "manifest"
    existing = read_manifest(store, stage, version)
    if existing is None or not existing.get("complete"):
        identity = {"stage": stage, "schema_version": SCHEMA_VERSION, "content_sha256": digest.hexdigest()}
        metadata = provenance_metadata({**identity, "version": version}, {})
        for name in MANIFEST_TABLES:
            store.write_parquet(tables[name], stage, version, f"{name}.parquet", metadata=metadata)
        write_manifest(
            store,
            {
                "stage": stage,
                "version": version,
                "identity": identity,
                "source": source,
                "created": now(),
                "rows": {name: tables[name].num_rows for name in MANIFEST_TABLES},
                "complete": True,
            },
        )
    mark_latest(store, stage, version)
    return StageOutput(stage, version)

"""The output layout and its promises (DESIGN.md, "Output layout").

    OUT/<stage>/<version>/part-00000.parquet ...   rows, one file per input shard, committed only
    OUT/<stage>/<version>/_manifest.json           identity and shard plan; `complete` when done
    OUT/<stage>/<version>/_plan.parquet            item id -> shard, for `tvr verify`
    OUT/<stage>/<version>/_commits/part-00000.json the commit record of each shard
    OUT/<stage>/<version>/_staging/...             parts being written (readers skip `_` paths)
    OUT/<stage>/<version>/_lease.json              the driver writing this version, if any
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

from pipeline import __version__
from pipeline.schema import SCHEMA_VERSION
from pipeline.stage import StageOutput
from pipeline.storage import Store

MANIFEST_FILE = "_manifest.json"
PLAN_FILE = "_plan.parquet"
COMMITS_DIR = "_commits"
STAGING_DIR = "_staging"
LEASE_FILE = "_lease.json"
LATEST_FILE = "LATEST"


class DamagedOutputError(RuntimeError):
    """A file of a committed output is missing, truncated or unreadable; the message names it."""


class InputNotReadyError(RuntimeError):
    """A stage's input version, as the config determines it, is not complete in OUT."""


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
    """The version's record, None when there is none; a damaged one is an error naming the file."""
    if not store.exists(stage, version, MANIFEST_FILE):
        return None
    path = store.path(stage, version, MANIFEST_FILE)
    try:
        manifest = json.loads(store.read_bytes(stage, version, MANIFEST_FILE).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DamagedOutputError(
            f"{path} is damaged ({exc}); `tvr verify {store.root} --stage {stage} --repair` rebuilds it"
        ) from exc
    if not isinstance(manifest, dict) or manifest.get("version") != version:
        raise DamagedOutputError(
            f"{path} is not the record of version {version}; "
            f"`tvr verify {store.root} --stage {stage} --repair` rebuilds it"
        )
    return manifest


def write_manifest(store: Store, manifest: dict[str, Any]) -> None:
    store.write_json(manifest, manifest["stage"], manifest["version"], MANIFEST_FILE)


def is_complete(store: Store, stage: str, version: str) -> bool:
    manifest = read_manifest(store, stage, version)
    return bool(manifest and manifest.get("complete"))


def latest(store: Store, stage: str) -> StageOutput | None:
    """The newest complete version of `stage`, or None if it never completed."""
    if not store.exists(stage, LATEST_FILE):
        return None
    version = store.read_text(stage, LATEST_FILE).strip()
    if not is_complete(store, stage, version):
        return None
    return StageOutput(stage, version)


def mark_latest(store: Store, stage: str, version: str) -> None:
    """Point LATEST at `version` if it finished later than what LATEST points at now.

    LATEST means the newest complete version: rerunning an old config (up to date, nothing
    computed) leaves it alone.
    """
    current = latest(store, stage)
    if current is not None and current.version != version:
        theirs = read_manifest(store, stage, current.version) or {}
        ours = read_manifest(store, stage, version) or {}
        if theirs.get("finished", "") > ours.get("finished", ""):
            return
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

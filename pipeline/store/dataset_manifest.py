"""The dataset manifest as three outputs, each versioned by its own rows.

    OUT/videos/<version>/part-00000.parquet     video_id, path (relative to the video root), split, extra
    OUT/captions/<version>/part-00000.parquet   caption_id, video_id, text, split, extra
    OUT/manifest/<version>/part-00000.parquet   problems (missing files, duplicate ids, ...)
    OUT/manifest/<version>/_manifest.json        names the videos and captions versions, and the source

Videos and captions are versioned apart, and paths are stored relative to the video root (the
root is recorded as provenance, not hashed), so moving a dataset folder changes no version, and a
missing video turning up gives video-side stages a new version but leaves caption-side stages
(hours of LLM work) alone. They go through the same commit protocol as every stage, so
`tvr verify` checks them too.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.store.schema import CAPTIONS, FAILURES, MANIFEST_PROBLEMS, SCHEMA_VERSION, VIDEOS
from pipeline.store.storage import Store
from pipeline.store.version import (
    DamagedOutputError,
    InputNotReadyError,
    Version,
    latest,
    now,
    provenance_metadata,
    version_of,
    versions,
)

# name -> (schema, item key or None when rows are not items)
TABLES = {"videos": (VIDEOS, "video_id"), "captions": (CAPTIONS, "caption_id"), "manifest": (MANIFEST_PROBLEMS, None)}


@dataclass(frozen=True)
class ManifestOutputs:
    manifest: Version  # the problems, and which videos and captions versions belong together
    videos: Version  # with `root`, the video folder of this run
    captions: Version

    def as_inputs(self) -> dict[str, Version]:
        return {"videos": self.videos, "captions": self.captions}


def relative_paths(videos: pa.Table, root: str) -> pa.Table:
    """The videos table with each found file's path relative to `root` (posix separators)."""
    absolute_root = os.path.abspath(root)
    paths = [None if p is None else os.path.relpath(p, absolute_root).replace(os.sep, "/")
             for p in videos.column("path").to_pylist()]
    return videos.set_column(videos.column_names.index("path"), "path", pa.array(paths, pa.string()))


def write_dataset_manifest(store: Store, videos: pa.Table, captions: pa.Table, problems: pa.Table,
                           video_root: str, source: dict[str, Any]) -> ManifestOutputs:
    """Write (or find, when the rows are unchanged) the three versions; `videos` has relative paths."""
    root = os.path.abspath(video_root)
    video_output = _write_table(store, "videos", videos, {"root": root})
    caption_output = _write_table(store, "captions", captions, {})
    links = {"videos": video_output.version, "captions": caption_output.version}
    manifest_output = _write_table(store, "manifest", problems, {**links, "source": source}, identity_extra=links)
    return ManifestOutputs(manifest_output, video_output.with_root(root), caption_output)


def manifest_record(store: Store, version: str) -> tuple[str, dict]:
    """(version, its _manifest.json record) of a complete manifest (a version, or "latest"): its
    videos and captions versions, and `source` (the annotation format and where it was read)."""
    if version == "latest":
        found = latest(store, "manifest")
        if found is None:
            raise InputNotReadyError(f"{store.root} has no complete manifest; run `tvr manifest` first")
        version = found.version
    output = Version(store, "manifest", version)
    record = output.manifest()
    if record is None or not record.get("complete"):
        known = ", ".join(v.version for v in versions(store, "manifest")) or "none"
        raise InputNotReadyError(f"{store.root} has no complete manifest {version} (manifests there: {known})")
    for name in ("videos", "captions"):
        # The record's check hashed its identity to its version and held the links to it; a record
        # without links is not a manifest's.
        linked = record.get(name)
        if not isinstance(linked, str) or not re.fullmatch(r"[0-9a-f]{12}", linked) or \
                record["identity"].get(name) != linked:
            problem = f"it links no {name} version ({linked!r})"
            raise DamagedOutputError(f"{store.path(output.manifest_path)}: {problem}; write the manifest again "
                                     f"with `tvr manifest`", problem)
    return version, record


def read_dataset_manifest(store: Store, version: str, video_root: str | None = None) -> ManifestOutputs:
    """An existing manifest (a version, or "latest"); the video root defaults to the recorded one."""
    version, record = manifest_record(store, version)
    for name in ("videos", "captions"):
        if not Version(store, name, record[name]).is_complete():
            raise InputNotReadyError(f"manifest {version} links {name} {record[name]}, which is not complete in "
                                     f"{store.root}; write the manifest again with `tvr manifest`")
    videos = Version(store, "videos", record["videos"]).manifest()
    root = os.path.abspath(video_root) if video_root else videos.get("root")
    if not root or not os.path.isdir(root):
        raise InputNotReadyError(
            f"manifest {version}: its video folder {root} does not exist; set dataset.videos to where "
            f"the videos are now")
    return ManifestOutputs(Version(store, "manifest", version), Version(store, "videos", record["videos"], root=root),
                           Version(store, "captions", record["captions"]))


def _write_table(store: Store, stage: str, table: pa.Table, record_extra: dict[str, Any],
                 identity_extra: dict[str, Any] | None = None) -> Version:
    """Write one table as a one-shard version, or find it written. The version hashes the rows and
    `identity_extra` (the manifest's links), so two datasets never share one; `record_extra`
    beyond the identity is provenance (where the videos and annotations were), which a later
    write may update."""
    schema, key = TABLES[stage]
    table = table.cast(schema)
    identity = {"stage": stage, "schema_version": SCHEMA_VERSION, "content_sha256": _table_sha256(table),
                **(identity_extra or {})}
    version = version_of(identity)
    output = Version(store, stage, version)
    provenance = {name: value for name, value in record_extra.items() if name not in identity}
    with output.lease(wait_seconds=120):  # a twin driver writes the same bytes: wait
        # A record that is there went through Version's check: its identity (links included)
        # hashes to this folder's name, so it is the one we would write; only provenance moves.
        manifest = output.manifest()
        if manifest is not None and manifest.get("complete"):
            output.check_committed(manifest)
            if any(manifest.get(k) != v for k, v in provenance.items()):
                output.write_manifest({**manifest, **provenance})
            output.mark_latest()
            return output
        for shard in {0, *output.record_names()}:  # one shard, cheap to write again: nothing stale stays
            output.withdraw(shard)
        output.recover()  # and nothing uncommitted (staging, temporaries)
        manifest = {"stage": stage, "version": version, "identity": identity, "key": key, "created": now(),
                    "num_items": table.num_rows, "rows_per_shard": max(1, table.num_rows), "num_shards": 1,
                    "complete": False, **record_extra}
        if key is not None:
            output.write_plan(table.column(key).combine_chunks(), manifest["rows_per_shard"], manifest)
        output.write_manifest(manifest)
        metadata = provenance_metadata({**identity, "version": version}, {})
        files = output.stage_shard(0, table, FAILURES.empty_table(), metadata)
        output.commit_shard(0, files)
        output.clear_staging()  # the emptied attempt folder
        output.write_manifest({**manifest, "complete": True, "finished": now(), "rows": table.num_rows,
                               "failures": 0})
    output.mark_latest()
    return output


def _table_sha256(table: pa.Table) -> str:
    digest = hashlib.sha256()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table.combine_chunks())  # the same rows in other chunks hash the same
    digest.update(sink.getvalue().to_pybytes())
    return digest.hexdigest()

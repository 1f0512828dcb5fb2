"""Tags in the files MAC-VR's released code reads (`tvr export-tags OUT DEST`), so that the reference
implementation can train on tags this pipeline generated (REFERENCE.md, "Tags as MAC-VR's released
code reads them"):

- MSR-VTT: `DEST/anns/training_9k.csv` (the manifest's train split) and `DEST/anns/testing.csv`
  (its test split): a header row, then one row per caption, four columns read by position:
  `video_id, sentence, textual tags, visual tags`, each tag list a Python list literal;
- DiDeMo and ActivityNet: `DEST/all_concepts_llama3.json`, `video_id -> [visual tags, textual tags]`,
  each a Python list literal string (DiDeMo's ids are already file names without the extension).

Tags are `merged_tags`' ranking (most votes over the temperatures first), which is what the
reference code's "first M at test" expects. An item without tags (its requests failed, or the
model gave none) is written with an empty list and counted in the summary, never left out.
DEST is a folder or any `pyarrow.fs` URI (`file:///data/msrvtt`, `s3://bucket/data`), as `--out` is.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipeline.config import ConfigError
from pipeline.store.dataset_manifest import manifest_record
from pipeline.store.storage import StorageError, Store
from pipeline.store.version import InputNotReadyError, Version, complete_version
from pipeline.tags.stats import merged_tags

PARAGRAPH_FORMATS = ("didemo", "activitynet")
MSRVTT_FILES = {"train": "anns/training_9k.csv", "test": "anns/testing.csv"}


@dataclass
class ExportSummary:
    files: list[str]
    rows: int
    without_visual: int  # rows (or videos) written with an empty visual tag list
    without_textual: int


def _tags(store: Store, stage: str, version: str | None) -> dict[str, list[str]]:
    found = complete_version(store, stage, version)
    if found is None:
        named = f"complete {stage} version {version}" if version else stage
        raise InputNotReadyError(f"no {named} in {store.root}: run `tvr run CONFIG --stages {stage}` first")
    table = merged_tags(found).select(["item_id", "tags"]).to_pydict()
    return dict(zip(table["item_id"], table["tags"]))


@dataclass(frozen=True)
class _Destination:
    """Where the files go: a local folder or any pyarrow.fs URI, as `--out` takes them."""

    store: Store
    shown: str  # the destination as the user wrote it, to name the files written

    @classmethod
    def open(cls, dest: str | Path) -> "_Destination":
        dest = str(dest)
        if "://" not in dest and _SCHEME.match(dest):
            # Path("file:/data") is a folder named "file:" in the working directory: never that.
            raise ConfigError(f"export-tags destination {dest}: a URI needs // after its scheme "
                              f"(file:///absolute/path, s3://bucket/path), or give a plain path")
        try:
            store = Store.open(dest)
        except pa.ArrowInvalid as error:  # an unknown scheme, a relative or host-named file URI
            raise ConfigError(f"export-tags destination {dest}: {' '.join(str(error).split())}") from error
        except OSError as error:  # the filesystem's own lookup (a bucket's region, credentials)
            raise StorageError(dest, error) from error
        return cls(store, dest.rstrip("/") if "://" in dest else str(Path(dest)))

    def write(self, name: str, text: str) -> str:
        """Replace `name` atomically (the reference code never reads half a file); its shown path."""
        self.store.write_text(text, name)
        return f"{self.shown}/{name}"


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")  # two letters at least: not a Windows drive


def export_tags(out: str, dest: str | Path, manifest: str = "latest", visual_version: str | None = None,
                textual_version: str | None = None) -> ExportSummary:
    """Write the reference code's tag files for the dataset in `out` under `dest`."""
    store = Store.open(out)
    _, record = manifest_record(store, manifest)
    dataset = (record.get("source") or {}).get("format")
    if dataset != "msrvtt" and dataset not in PARAGRAPH_FORMATS:
        raise ConfigError(f"the manifest in {out} is {dataset!r}: MAC-VR's released code reads tag files for "
                          f"msrvtt, didemo and activitynet only")
    visual = _tags(store, "visual_tags", visual_version)
    textual = _tags(store, "textual_tags", textual_version)
    captions = Version(store, "captions", record["captions"]).table(
        columns=["caption_id", "video_id", "text", "split"]).to_pylist()
    destination = _Destination.open(dest)
    if dataset == "msrvtt":
        return _write_msrvtt(destination, captions, visual, textual)
    return _write_paragraphs(destination, captions, visual, textual)


def _write_msrvtt(dest: _Destination, captions: list[dict], visual: dict, textual: dict) -> ExportSummary:
    files, rows, no_visual, no_textual = [], 0, 0, 0
    for split, name in MSRVTT_FILES.items():
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["video_id", "sentence", "textual_tags", "visual_tags"])
        for caption in (c for c in captions if c["split"] == split):
            v, t = visual.get(caption["video_id"], []), textual.get(caption["caption_id"], [])
            writer.writerow([caption["video_id"], caption["text"], repr(list(t)), repr(list(v))])
            rows, no_visual, no_textual = rows + 1, no_visual + (not v), no_textual + (not t)
        files.append(dest.write(name, buffer.getvalue()))
    return ExportSummary(files, rows, no_visual, no_textual)


def _write_paragraphs(dest: _Destination, captions: list[dict], visual: dict, textual: dict) -> ExportSummary:
    by_video: dict[str, list[str]] = {}
    for caption in captions:  # one paragraph per video; should there be more, their tags in order, once each
        merged = by_video.setdefault(caption["video_id"], [])
        merged += [t for t in textual.get(caption["caption_id"], []) if t not in merged]
    concepts = {v: [repr(list(visual.get(v, []))), repr(t)] for v, t in sorted(by_video.items())}
    path = dest.write("all_concepts_llama3.json", json.dumps(concepts, indent=1, ensure_ascii=False))
    return ExportSummary([path], len(concepts), sum(not visual.get(v) for v in by_video),
                         sum(not t for t in by_video.values()))

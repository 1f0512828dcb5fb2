"""Any dataset as one CSV, JSONL or Parquet file with a row per caption: `video_id, path,
caption` and optionally `split`. Other columns (a native `caption_id`, ...) go to the caption's
extra. `path` is relative to the video root or absolute; an empty path means "find it by id"."""

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.datasets.files import expect_columns, expect_type
from pipeline.datasets.records import AnnotationError, Annotations, CaptionRecord, VideoRecord

FORMAT = "generic"
REQUIRED_COLUMNS = ["video_id", "path", "caption"]
VIDEO_COLUMNS = {"video_id", "path", "split"}


@dataclass(frozen=True)
class GenericOptions:
    default_split: str = "test"  # for rows without a `split` column or value


def read(annotations: Path, options: GenericOptions) -> Annotations:
    if not annotations.is_file():
        raise AnnotationError(f"generic: {annotations} is not a file; expected one .csv, .jsonl or .parquet file")
    # Rows of one video with the same path and split form one video; a row that repeats a
    # video id with another path or split is a separate record, reported as a duplicate id.
    videos: dict[tuple[str, str | None, str], VideoRecord] = {}
    for location, row in read_rows(annotations):
        where = f"{annotations} {location}"
        video_id, path, split = video_fields(row, where, options)
        text = expect_type(row.get("caption"), str, f"{where}, column 'caption'", "the caption text")
        key = (video_id, path, split)
        if key not in videos:
            videos[key] = VideoRecord(video_id, split, [], source=f"{annotations.name} {location}", given_path=path)
        videos[key].captions.append(caption(text, row))
    return Annotations(list(videos.values()))


def video_fields(row: dict[str, Any], where: str, options: GenericOptions) -> tuple[str, str | None, str]:
    video_id = expect_type(row.get("video_id"), (str, int), f"{where}, column 'video_id'", "a video id")
    path = expect_type(row.get("path"), (str, type(None)), f"{where}, column 'path'", "a path or nothing")
    split = expect_type(row.get("split"), (str, type(None)), f"{where}, column 'split'", "a split name or nothing")
    video_id = str(video_id).strip()
    if not video_id:
        raise AnnotationError(f"{where}: empty video_id")
    return video_id, (path or "").strip() or None, (split or "").strip() or options.default_split


def caption(text: str, row: dict[str, Any]) -> CaptionRecord:
    extra = {column: value for column, value in row.items() if column not in VIDEO_COLUMNS | {"caption"}}
    native = row.get("caption_id")
    native_id = ("caption_id", str(native)) if native not in (None, "") else None
    return CaptionRecord(text.strip(), extra, native_id=native_id)


def read_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, row) for each row; the location ("line 3", "row 3") is quoted in messages."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_csv(path)
    if suffix in (".jsonl", ".ndjson"):
        return read_jsonl(path)
    if suffix == ".parquet":
        return read_parquet(path)
    raise AnnotationError(f"generic: {path} has extension {suffix!r}; expected .csv, .jsonl or .parquet")


def read_csv(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        expect_columns(reader.fieldnames, REQUIRED_COLUMNS, path)
        for row in reader:
            if None in row:
                raise AnnotationError(f"{path} line {reader.line_num}: more fields than the header {reader.fieldnames}")
            yield f"line {reader.line_num}", row


def read_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise AnnotationError(f"{where}: not valid JSON: {error}") from error
            expect_type(row, dict, where, "an object with video_id, path, caption")
            missing = [column for column in REQUIRED_COLUMNS if column not in row]
            if missing:
                raise AnnotationError(f"{where}: missing key(s) {missing}; expected {REQUIRED_COLUMNS}")
            yield f"line {number}", row


def read_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    parquet = pq.ParquetFile(path)
    expect_columns(parquet.schema_arrow.names, REQUIRED_COLUMNS, path)
    number = 0
    for batch in parquet.iter_batches():
        for row in batch.to_pylist():
            number += 1
            yield f"row {number}", row

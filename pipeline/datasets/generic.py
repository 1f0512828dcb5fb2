"""Any dataset as one CSV, JSONL or Parquet file with a row per caption: `video_id, path,
caption` and optionally `split`. Other columns (a native `caption_id`, ...) go to the caption's
extra. `path` is relative to the video root or absolute; an empty path means "find it by id"."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.datasets.files import expect_type, parse_json, read_csv_rows, read_parquet_rows, short, text_lines
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
    for line, row in read_csv_rows(path, REQUIRED_COLUMNS):
        if None in row:
            header = [column for column in row if column is not None]
            raise AnnotationError(f"{path} line {line}: more fields than the header {short(header, 200)}")
        yield f"line {line}", row


def read_jsonl(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    rows = 0
    for number, line in text_lines(path):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        row = expect_type(parse_json(line, where), dict, where, "an object with video_id, path, caption")
        missing = [column for column in REQUIRED_COLUMNS if column not in row]
        if missing:
            raise AnnotationError(f"{where}: missing key(s) {missing}; expected {REQUIRED_COLUMNS}")
        rows += 1
        yield f"line {number}", row
    if not rows:
        raise AnnotationError(f"{path}: the file is empty; expected one JSON object per line")


def read_parquet(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for number, row in read_parquet_rows(path, REQUIRED_COLUMNS):
        yield f"row {number}", row

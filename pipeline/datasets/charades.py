"""Charades: each `;`-separated description is one caption; the script and the other columns
are kept in the video's extra."""

from dataclasses import dataclass
from pathlib import Path

from pipeline.datasets.files import ReleasedFile, read_csv_rows, read_released_splits, short
from pipeline.datasets.records import (
    AnnotationError,
    Annotations,
    CaptionRecord,
    VideoRecord,
)

FORMAT = "charades"
RELEASED = [ReleasedFile("Charades_v1_train.csv", "train"), ReleasedFile("Charades_v1_test.csv", "test")]
COLUMNS = ["id", "subject", "scene", "quality", "relevance", "verified", "script", "objects", "descriptions",
           "actions", "length"]  # fmt: skip


@dataclass(frozen=True)
class CharadesOptions:
    pass


def read(annotations: Path, options: CharadesOptions) -> Annotations:
    return read_released_splits(FORMAT, annotations, RELEASED, read_split)


def read_split(path: Path, split: str) -> list[VideoRecord]:
    # A real CSV parser: scripts and descriptions are quoted and contain commas and newlines.
    rows = read_csv_rows(path, ["id", "script", "descriptions"])
    return [charades_video(row, path, line, split) for line, row in rows]


def charades_video(row: dict, path: Path, line: int, split: str) -> VideoRecord:
    where = f"{path} line {line}"
    if None in row or any(value is None for value in row.values()):
        raise AnnotationError(f"{where}: expected {len(COLUMNS)} fields ({COLUMNS}), got {short(row, 200)}")
    video_id = row["id"].strip()
    if not video_id:
        raise AnnotationError(f"{where}: empty id")
    descriptions = [part.strip() for part in row["descriptions"].split(";")]
    return VideoRecord(
        video_id=video_id,
        split=split,
        captions=[CaptionRecord(text) for text in descriptions if text],
        source=f"{path.name} line {line}",
        extra={column: value for column, value in row.items() if column not in ("id", "descriptions")},
    )

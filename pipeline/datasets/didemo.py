"""DiDeMo as paragraph-to-video retrieval: one paragraph per video, its descriptions joined by a
space in file order (CLIP4Clip). The video id is the file name without its extension."""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.datasets.files import (
    ReleasedFile,
    expect_key,
    expect_type,
    load_json,
    read_released_splits,
)
from pipeline.datasets.records import Annotations, CaptionRecord, VideoRecord

FORMAT = "didemo"
RELEASED = [
    ReleasedFile("train_data.json", "train"),
    ReleasedFile("val_data.json", "val"),
    ReleasedFile("test_data.json", "test"),
]


@dataclass(frozen=True)
class DidemoOptions:
    pass


def read(annotations: Path, options: DidemoOptions) -> Annotations:
    return read_released_splits(FORMAT, annotations, RELEASED, read_split)


def read_split(path: Path, split: str) -> list[VideoRecord]:
    rows = expect_type(load_json(path), list, str(path), "a list of annotations")
    by_video: dict[str, dict[str, Any]] = {}  # video id -> the rows' fields, gathered in file order
    for index, row in enumerate(rows):
        where = f"{path}: [{index}]"
        expect_type(row, dict, where, "an object")
        file_name = expect_key(row, "video", str, where, "the video file name")
        description = expect_key(row, "description", str, where, "the description text")
        video_id = os.path.splitext(file_name)[0]
        gathered = by_video.setdefault(
            video_id, {"file": file_name, "first_row": index, "descriptions": [], "times": [], "annotation_ids": []}
        )
        gathered["descriptions"].append(description.strip())
        gathered["times"].append(row.get("times"))
        gathered["annotation_ids"].append(row.get("annotation_id"))
    return [paragraph_video(video_id, gathered, path, split) for video_id, gathered in by_video.items()]


def paragraph_video(video_id: str, gathered: dict[str, Any], path: Path, split: str) -> VideoRecord:
    descriptions = gathered["descriptions"]
    caption = CaptionRecord(
        text=" ".join(description for description in descriptions if description),
        # The paragraph's parts, so a sentence-level evaluation can be rebuilt from the manifest.
        extra={
            "descriptions": descriptions,
            "times": gathered["times"],
            "annotation_ids": gathered["annotation_ids"],
        },
    )
    return VideoRecord(
        video_id=video_id,
        split=split,
        captions=[caption],
        source=f"{path.name} [{gathered['first_row']}]",
        extra={"file": gathered["file"]},
    )

"""ActivityNet Captions as paragraph-to-video retrieval: one paragraph per video, the stripped
sentences joined by a space; `val_1.json` is the test split (CLIP4Clip, X-Pool, T-MASS)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.datasets.files import (
    ReleasedFile,
    expect_key,
    expect_string_list,
    expect_type,
    load_json,
    read_released_splits,
)
from pipeline.datasets.records import (
    AnnotationError,
    Annotations,
    CaptionRecord,
    VideoRecord,
)

FORMAT = "activitynet"


@dataclass(frozen=True)
class ActivitynetOptions:
    # The validation annotation set read as the test split. val_1 and val_2 annotate (nearly)
    # the same videos by different annotators, so only one of them is read.
    test_file: Literal["val_1", "val_2"] = "val_1"


def read(annotations: Path, options: ActivitynetOptions) -> Annotations:
    if options.test_file not in ("val_1", "val_2"):
        raise AnnotationError(f"activitynet: test_file must be 'val_1' or 'val_2', got {options.test_file!r}")
    released = [ReleasedFile("train.json", "train"), ReleasedFile(f"{options.test_file}.json", "test")]
    return read_released_splits(FORMAT, annotations, released, read_split)


def read_split(path: Path, split: str) -> list[VideoRecord]:
    data = expect_type(load_json(path), dict, str(path), 'an object keyed by "v_<YouTube id>"')
    return [paragraph_video(key, entry, path, split) for key, entry in data.items()]


def paragraph_video(key: str, entry: Any, path: Path, split: str) -> VideoRecord:
    where = f"{path}: {key!r}"
    expect_type(entry, dict, where, 'an object with "duration", "timestamps", "sentences"')
    duration = expect_key(entry, "duration", (int, float), where, "the duration in seconds")
    timestamps = expect_key(entry, "timestamps", list, where, "a list of [start, end] pairs")
    expect_key(entry, "sentences", list, where, "a list of sentences")
    sentences = [sentence.strip() for sentence in expect_string_list(entry["sentences"], f"{where}, key 'sentences'")]
    if len(timestamps) != len(sentences):
        raise AnnotationError(
            f"{where}: {len(timestamps)} timestamps but {len(sentences)} sentences; expected one each"
        )
    # A video without sentences stays listed (its file is still probed) but has no caption.
    captions = [CaptionRecord(" ".join(sentences), {"sentences": sentences})] if sentences else []
    youtube_id = key.removeprefix("v_")
    return VideoRecord(
        video_id=key,
        split=split,
        captions=captions,
        source=f"{path.name} {key!r}",
        extra={"duration": duration, "timestamps": timestamps},
        # Released video dumps name files both with and without the prefix.
        file_stems=(key, youtube_id) if youtube_id != key else (key,),
    )

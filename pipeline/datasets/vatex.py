"""VATEX with its English captions (`enCap`); ids are `<YouTube id>_<start:06d>_<end:06d>`."""

from dataclasses import dataclass
from pathlib import Path

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

FORMAT = "vatex"
RELEASED = [
    ReleasedFile("vatex_training_v1.0.json", "train"),
    ReleasedFile("vatex_validation_v1.0.json", "val"),
    # Downloaded separately and without Chinese captions; many setups test on a part of val, so
    # its absence is common (reported as a missing split file, like any other).
    ReleasedFile("vatex_public_test_english_v1.1.json", "test"),
]


@dataclass(frozen=True)
class VatexOptions:
    pass


def read(annotations: Path, options: VatexOptions) -> Annotations:
    return read_released_splits(FORMAT, annotations, RELEASED, read_split)


def read_split(path: Path, split: str) -> list[VideoRecord]:
    entries = expect_type(load_json(path), list, str(path), 'a list of {"videoID", "enCap"} objects')
    return [video(entry, f"{path}: [{index}]", path.name, split) for index, entry in enumerate(entries)]


def video(entry: object, where: str, file_name: str, split: str) -> VideoRecord:
    expect_type(entry, dict, where, 'an object with "videoID" and "enCap"')
    video_id = expect_key(entry, "videoID", str, where, "an id <YouTube id>_<start>_<end>")
    captions = expect_string_list(expect_key(entry, "enCap", list, where, "the English captions"), f"{where}, 'enCap'")
    return VideoRecord(
        video_id=video_id,
        split=split,
        captions=[CaptionRecord(caption.strip()) for caption in captions],
        source=f"{file_name} {where.rsplit(': ', 1)[-1]}",
        extra=clip_range(video_id, where),
    )


def clip_range(video_id: str, where: str) -> dict[str, object]:
    # From the right: YouTube ids themselves contain `_`.
    parts = video_id.rsplit("_", 2)
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or not parts[2].isdigit():
        raise AnnotationError(f"{where}: videoID {video_id!r} is not <YouTube id>_<start>_<end>")
    return {"youtube_id": parts[0], "start": int(parts[1]), "end": int(parts[2])}

"""LSMDC 2016: tab-separated rows `clip_id, start_aligned, end_aligned, start_extracted,
end_extracted, sentence`, no header, no quoting; a clip with several sentences has several rows."""

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.datasets.files import ReleasedFile, read_released_splits, text_lines
from pipeline.datasets.records import (
    AnnotationError,
    Annotations,
    CaptionRecord,
    VideoRecord,
)

FORMAT = "lsmdc"
RELEASED = [
    ReleasedFile("LSMDC16_annos_training.csv", "train"),
    ReleasedFile("LSMDC16_annos_val.csv", "val"),
    ReleasedFile("LSMDC16_annos_test.csv", "test"),
]
TIME_FIELDS = ("start_aligned", "end_aligned", "start_extracted", "end_extracted")
# The clip's time range, appended to the movie name: `_00.00.51.926-00.00.54.129`.
CLIP_RANGE = re.compile(r"_\d{2}\.\d{2}\.\d{2}\.\d{3}-\d{2}\.\d{2}\.\d{2}\.\d{3}$")


@dataclass(frozen=True)
class LsmdcOptions:
    pass


def read(annotations: Path, options: LsmdcOptions) -> Annotations:
    return read_released_splits(FORMAT, annotations, RELEASED, read_split)


def read_split(path: Path, split: str) -> list[VideoRecord]:
    clips: dict[str, VideoRecord] = {}
    for number, line in text_lines(path):
        # Split by hand rather than with csv: sentences hold quotes that must stay as they are.
        fields = line.rstrip("\r\n").split("\t")
        if fields == [""]:
            continue
        if len(fields) != 6:
            raise AnnotationError(
                f"{path} line {number}: expected 6 tab-separated fields (clip_id, {', '.join(TIME_FIELDS)}, "
                f"sentence), got {len(fields)}"
            )
        clip_id, sentence = fields[0], fields[5]
        if clip_id not in clips:
            clips[clip_id] = clip_video(clip_id, split, f"{path.name} line {number}")
        clips[clip_id].captions.append(CaptionRecord(sentence.strip(), dict(zip(TIME_FIELDS, fields[1:5]))))
    return list(clips.values())


def clip_video(clip_id: str, split: str, source: str) -> VideoRecord:
    movie = CLIP_RANGE.sub("", clip_id)
    known_movie = movie != clip_id
    return VideoRecord(
        video_id=clip_id,
        split=split,
        captions=[],
        source=source,
        extra={"movie": movie} if known_movie else {},
        preferred_file=f"{movie}/{clip_id}.avi" if known_movie else None,
    )

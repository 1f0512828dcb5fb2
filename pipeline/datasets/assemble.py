"""From parsed annotations to the canonical manifest tables, with every problem listed by id."""

import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.datasets.records import Annotations, CaptionRecord, Problem, VideoRecord
from pipeline.datasets.video_index import VideoIndex
from pipeline.store.schema import CAPTIONS, MANIFEST_PROBLEMS, VIDEOS


@dataclass
class Manifest:
    videos: pa.Table  # schema pipeline.store.schema.VIDEOS, sorted by video_id
    captions: pa.Table  # schema pipeline.store.schema.CAPTIONS, sorted by video_id, then caption order
    problems: pa.Table  # schema pipeline.store.schema.MANIFEST_PROBLEMS


def assemble(annotations: Annotations, index: VideoIndex) -> Manifest:
    """The manifest tables; problems are the adapter's (missing split files) and those found here."""
    problems: list[Problem] = list(annotations.problems)
    videos = first_of_each_video(annotations.videos, problems)
    captions = first_of_each_native_caption_id(videos, problems)
    video_rows = []
    caption_rows = []
    for video in sorted(videos, key=lambda video: video.video_id):
        resolution = index.resolve(video)
        problems.extend(resolution.problems)
        video_rows.append(
            {
                "video_id": video.video_id,
                "path": resolution.path,
                "split": video.split,
                "extra": extra_json(video.extra),
            }
        )
        for k, caption in enumerate(captions[video.video_id]):
            caption_rows.append(
                {
                    # `#` then an integer: unique even when video ids contain `#`.
                    "caption_id": f"{video.video_id}#{k}",
                    "video_id": video.video_id,
                    "text": caption.text,
                    "split": video.split,
                    "extra": extra_json(caption.extra),
                }
            )
    problems.sort(key=lambda problem: (problem.problem, problem.id, problem.detail))
    return Manifest(
        videos=pa.Table.from_pylist(video_rows, schema=VIDEOS),
        captions=pa.Table.from_pylist(caption_rows, schema=CAPTIONS),
        problems=pa.Table.from_pylist([vars(problem) for problem in problems], schema=MANIFEST_PROBLEMS),
    )


def first_of_each_video(records: list[VideoRecord], problems: list[Problem]) -> list[VideoRecord]:
    """Keeps the first record of each video id and reports the others with their captions.

    Adapters already merge the rows that legitimately repeat an id (DiDeMo, LSMDC, generic
    rows of one video), so a second record means a conflict: another split, another path, or
    the same id listed twice. Its captions are dropped with it, since they may belong to
    another video.
    """
    kept: dict[str, VideoRecord] = {}
    for record in records:
        first = kept.setdefault(record.video_id, record)
        if first is not record:
            problems.append(Problem("duplicate_video_id", record.video_id, _conflict(first, record)))
    return list(kept.values())


def _conflict(first: VideoRecord, repeat: VideoRecord) -> str:
    differences = [
        f"{label} {getattr(first, name)!r} vs {getattr(repeat, name)!r}"
        for name, label in (("split", "split"), ("given_path", "path"), ("extra", "extra"))
        if getattr(first, name) != getattr(repeat, name)
    ]
    how = "; ".join(differences) if differences else "listed again with the same data"
    return (
        f"first in {first.source}, again in {repeat.source} ({how}); kept the first, "
        f"dropped the repeat's {len(repeat.captions)} caption(s)"
    )


def first_of_each_native_caption_id(
    videos: list[VideoRecord], problems: list[Problem]
) -> dict[str, list[CaptionRecord]]:
    """Each video's captions, without those whose native id (e.g. MSR-VTT sen_id) repeats."""
    owner: dict[tuple[str, str], str] = {}
    kept: dict[str, list[CaptionRecord]] = {}
    for video in videos:
        kept[video.video_id] = []
        for caption in video.captions:
            if caption.native_id in owner:
                field_name, value = caption.native_id
                detail = (
                    f"{field_name} {value} of a caption of {video.video_id} ({caption.text!r}) was already "
                    f"used by a caption of {owner[caption.native_id]}; kept the first"
                )
                problems.append(Problem("duplicate_caption_id", value, detail))
                continue
            if caption.native_id is not None:
                owner[caption.native_id] = video.video_id
            kept[video.video_id].append(caption)
    return kept


def extra_json(extra: dict[str, Any]) -> str | None:
    """Dataset-specific fields as sorted-key JSON, or None when a dataset has none."""
    # default=str: generic Parquet columns may hold dates or decimals, which JSON lacks.
    return json.dumps(extra, sort_keys=True, ensure_ascii=False, default=str) if extra else None

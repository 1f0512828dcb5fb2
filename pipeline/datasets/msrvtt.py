"""MSR-VTT with the splits the retrieval papers use: train = the 9k (or 7k) list with all its
JSON captions, test = 1k-A with the single JSFUSION sentence per video (CLIP4Clip, X-Pool).

MSRVTT_data.json holds every caption, so it is required. The train list and the JSFUSION test
file are split files: either may be absent (a `missing_split_file` problem), not both."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.datasets.files import (
    ReleasedFile,
    expect_key,
    expect_type,
    find_split_files_in_folder,
    folder_of,
    load_json,
    read_csv_rows,
    require_folder_file,
    short,
)
from pipeline.datasets.records import AnnotationError, Annotations, CaptionRecord, VideoRecord

FORMAT = "msrvtt"
DATA_FILE = "MSRVTT_data.json"
TEST_FILE = "MSRVTT_JSFUSION_test.csv"


@dataclass(frozen=True)
class MsrvttOptions:
    train_list: Literal["9k", "7k"] = "9k"  # which released training list: MSRVTT_train.<list>.csv


def read(annotations: Path, options: MsrvttOptions) -> Annotations:
    if options.train_list not in ("9k", "7k"):
        raise AnnotationError(f"msrvtt: train_list must be '9k' or '7k', got {options.train_list!r}")
    folder = folder_of(FORMAT, annotations)
    data_path = require_folder_file(FORMAT, folder, DATA_FILE)
    released = [ReleasedFile(f"MSRVTT_train.{options.train_list}.csv", "train"), ReleasedFile(TEST_FILE, "test")]
    split_files = find_split_files_in_folder(FORMAT, folder, released)
    data = expect_type(load_json(data_path), dict, str(data_path), 'an object with "videos" and "sentences"')
    video_extras = read_video_info(data, data_path)
    sentences = read_sentences(data, data_path)
    videos = []
    for spec, path in split_files.found:
        if spec.split == "train":
            videos += read_train(path, video_extras, sentences, data_path)
        else:
            videos += read_test(path, video_extras)
    return Annotations(videos, split_files.missing)


def read_video_info(data: dict, path: Path) -> dict[str, dict[str, Any]]:
    """video_id -> the per-video fields worth keeping (note the released keys with spaces)."""
    extras = {}
    for index, entry in enumerate(expect_key(data, "videos", list, str(path), "a list of videos")):
        where = f"{path}: videos[{index}]"
        expect_type(entry, dict, where, "an object")
        video_id = expect_key(entry, "video_id", str, where, 'a string like "video0"')
        kept = {"category": "category", "url": "url", "start time": "start_time", "end time": "end_time"}
        extras[video_id] = {ours: entry[theirs] for theirs, ours in kept.items() if theirs in entry}
        if "split" in entry:
            extras[video_id]["official_split"] = entry["split"]
    return extras


def read_sentences(data: dict, path: Path) -> dict[str, list[CaptionRecord]]:
    """video_id -> its captions in file order, each with its sen_id."""
    by_video: dict[str, list[CaptionRecord]] = {}
    for index, entry in enumerate(expect_key(data, "sentences", list, str(path), "a list of sentences")):
        where = f"{path}: sentences[{index}]"
        expect_type(entry, dict, where, "an object")
        text = expect_key(entry, "caption", str, where, "the caption text")
        video_id = expect_key(entry, "video_id", str, where, 'a string like "video0"')
        sen_id = expect_key(entry, "sen_id", (int, str), where, "the sentence id")
        caption = CaptionRecord(text.strip(), {"sen_id": sen_id}, native_id=("sen_id", str(sen_id)))
        by_video.setdefault(video_id, []).append(caption)
    return by_video


def read_train(
    path: Path, video_extras: dict[str, dict[str, Any]], sentences: dict[str, list[CaptionRecord]], data_path: Path
) -> list[VideoRecord]:
    """The videos of a train list, each with all its captions from MSRVTT_data.json."""
    return [
        train_video(video_id, line, path, video_extras, sentences, data_path)
        for line, video_id in read_train_list(path)
    ]


def read_train_list(path: Path) -> list[tuple[int, str]]:
    """(line number, video id) for each row of a one-column `video_id` CSV."""
    return [(line, (row["video_id"] or "").strip()) for line, row in read_csv_rows(path, ["video_id"])]


def train_video(
    video_id: str,
    line: int,
    path: Path,
    video_extras: dict[str, dict[str, Any]],
    sentences: dict[str, list[CaptionRecord]],
    data_path: Path,
) -> VideoRecord:
    if video_id not in sentences:
        raise AnnotationError(f"{path} line {line}: {video_id} has no sentences in {data_path}")
    return VideoRecord(
        video_id=video_id,
        split="train",
        captions=sentences[video_id],
        source=f"{path.name} line {line}",
        extra=video_extras.get(video_id, {}),
    )


def read_test(path: Path, video_extras: dict[str, dict[str, Any]]) -> list[VideoRecord]:
    """One video per JSFUSION row, its `sentence` the one test caption (key kept as native id)."""
    videos = []
    for line, row in read_csv_rows(path, ["key", "vid_key", "video_id", "sentence"]):
        if not (row["video_id"] or "").strip() or row["sentence"] is None:  # a blank id is no video
            raise AnnotationError(f"{path} line {line}: expected key,vid_key,video_id,sentence, got {short(row, 200)}")
        caption = CaptionRecord(
            row["sentence"].strip(), {"key": row["key"], "vid_key": row["vid_key"]}, native_id=("key", row["key"])
        )
        video_id = row["video_id"].strip()
        videos.append(
            VideoRecord(
                video_id=video_id,
                split="test",
                captions=[caption],
                source=f"{path.name} line {line}",
                extra=video_extras.get(video_id, {}),
            )
        )
    return videos

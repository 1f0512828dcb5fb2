"""MSR-VTT with the splits the retrieval papers use: train = the 9k (or 7k) list with all its
JSON captions, test = 1k-A with the single JSFUSION sentence per video (CLIP4Clip, X-Pool)."""

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pipeline.datasets.files import expect_columns, expect_key, expect_type, load_json, require_folder_file
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
    data_path = require_folder_file(FORMAT, annotations, DATA_FILE)
    train_path = require_folder_file(FORMAT, annotations, f"MSRVTT_train.{options.train_list}.csv")
    test_path = require_folder_file(FORMAT, annotations, TEST_FILE)
    data = expect_type(load_json(data_path), dict, str(data_path), 'an object with "videos" and "sentences"')
    video_extras = read_video_info(data, data_path)
    sentences = read_sentences(data, data_path)
    train = [
        train_video(video_id, line, train_path, video_extras, sentences, data_path)
        for line, video_id in read_train_list(train_path)
    ]
    return Annotations(videos=train + read_test(test_path, video_extras))


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


def read_train_list(path: Path) -> list[tuple[int, str]]:
    """(line number, video id) for each row of a one-column `video_id` CSV."""
    with open(path, newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file))
    expect_columns(rows[0] if rows else None, ["video_id"], path)
    column = rows[0].index("video_id")
    return [(number, row[column].strip()) for number, row in enumerate(rows[1:], start=2) if row]


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
    with open(path, newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        expect_columns(reader.fieldnames, ["key", "vid_key", "video_id", "sentence"], path)
        for row in reader:
            where = f"{path} line {reader.line_num}"
            if not row["video_id"] or row["sentence"] is None:
                raise AnnotationError(f"{where}: expected key,vid_key,video_id,sentence, got {row}")
            caption = CaptionRecord(
                row["sentence"].strip(), {"key": row["key"], "vid_key": row["vid_key"]}, native_id=("key", row["key"])
            )
            video_id = row["video_id"].strip()
            videos.append(
                VideoRecord(
                    video_id=video_id,
                    split="test",
                    captions=[caption],
                    source=f"{path.name} line {reader.line_num}",
                    extra=video_extras.get(video_id, {}),
                )
            )
    return videos

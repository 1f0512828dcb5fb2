"""MSVD (YouTube2Text) with the train/val/test lists the retrieval papers use (CLIP4Clip)."""

import pickle
from dataclasses import dataclass
from pathlib import Path

from pipeline.datasets.files import (
    expect_string_list,
    expect_type,
    find_in_folder,
    folder_of,
    load_json,
    require_folder_file,
)
from pipeline.datasets.records import AnnotationError, Annotations, CaptionRecord, VideoRecord

FORMAT = "msvd"
JSON_CAPTIONS = "captions_msvd.json"
PICKLED_CAPTIONS = "raw-captions.pkl"
SPLIT_LISTS = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"}


@dataclass(frozen=True)
class MsvdOptions:
    # Unpickling runs whatever code the file names, so raw-captions.pkl is read only on request.
    allow_pickle: bool = False


def read(annotations: Path, options: MsvdOptions) -> Annotations:
    captions = read_captions(folder_of(FORMAT, annotations), options)
    videos = []
    for split, name in SPLIT_LISTS.items():
        list_path = require_folder_file(FORMAT, annotations, name)
        for line, video_id in read_id_list(list_path):
            if video_id not in captions:
                raise AnnotationError(f"{list_path} line {line}: {video_id} has no captions in the captions file")
            records = [CaptionRecord(text) for text in captions[video_id]]
            videos.append(VideoRecord(video_id, split, records, source=f"{name} line {line}"))
    return Annotations(videos)


def read_captions(folder: Path, options: MsvdOptions) -> dict[str, list[str]]:
    """video id -> captions, from the JSON release, else (when allowed) the pickled token lists."""
    json_path = find_in_folder(folder, JSON_CAPTIONS)
    if json_path is not None:
        data = expect_type(load_json(json_path), dict, str(json_path), "an object: video id -> list of captions")
        return {
            video_id: [text.strip() for text in expect_string_list(texts, f"{json_path}: {video_id!r}")]
            for video_id, texts in data.items()
        }
    pickle_path = find_in_folder(folder, PICKLED_CAPTIONS)
    if pickle_path is None:
        raise AnnotationError(f"msvd: neither {JSON_CAPTIONS} nor {PICKLED_CAPTIONS} in {folder}")
    if not options.allow_pickle:
        raise AnnotationError(
            f"msvd: found only {pickle_path}; unpickling can run arbitrary code, so it is read only with "
            f"allow_pickle=True (use it only for a file you trust), or provide {JSON_CAPTIONS}"
        )
    return read_pickled_captions(pickle_path)


def read_pickled_captions(path: Path) -> dict[str, list[str]]:
    """raw-captions.pkl: video id -> list of token lists; a caption is its tokens joined by spaces."""
    with open(path, "rb") as file:
        data = pickle.load(file)  # noqa: S301 - only with the explicit allow_pickle option
    expect_type(data, dict, str(path), "a dict: video id -> list of token lists")
    captions = {}
    for video_id, token_lists in data.items():
        where = f"{path}: {video_id!r}"
        expect_type(video_id, str, f"{path}: a key", "a video id string")
        expect_type(token_lists, list, where, "a list of token lists")
        captions[video_id] = [
            " ".join(expect_string_list(tokens, f"{where}[{index}]")).strip()
            for index, tokens in enumerate(token_lists)
        ]
    return captions


def read_id_list(path: Path) -> list[tuple[int, str]]:
    """(line number, id) for each non-blank line."""
    with open(path, encoding="utf-8") as file:
        return [(number, line.strip()) for number, line in enumerate(file, start=1) if line.strip()]

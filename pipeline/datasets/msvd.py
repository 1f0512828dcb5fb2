"""MSVD (YouTube2Text) with the train/val/test lists the retrieval papers use (CLIP4Clip).

The captions file (captions_msvd.json, or raw-captions.pkl) holds every caption, so it is
required. The id lists are split files: any may be absent (a `missing_split_file` problem),
not all."""

from dataclasses import dataclass
from pathlib import Path

from pipeline.datasets.files import (
    ReleasedFile,
    expect_string_list,
    expect_type,
    find_in_folder,
    find_split_files_in_folder,
    folder_of,
    load_json,
    load_pickle,
    text_lines,
)
from pipeline.datasets.records import AnnotationError, Annotations, CaptionRecord, VideoRecord

FORMAT = "msvd"
JSON_CAPTIONS = "captions_msvd.json"
PICKLED_CAPTIONS = "raw-captions.pkl"
SPLIT_LISTS = [
    ReleasedFile("train_list.txt", "train"),
    ReleasedFile("val_list.txt", "val"),
    ReleasedFile("test_list.txt", "test"),
]


@dataclass(frozen=True)
class MsvdOptions:
    # Unpickling runs whatever code the file names, so raw-captions.pkl is read only on request.
    allow_pickle: bool = False


def read(annotations: Path, options: MsvdOptions) -> Annotations:
    folder = folder_of(FORMAT, annotations)
    split_files = find_split_files_in_folder(FORMAT, folder, SPLIT_LISTS)
    captions = read_captions(folder, options)
    return split_files.read(lambda path, split: read_split(path, split, captions))


def read_split(path: Path, split: str, captions: dict[str, list[str]]) -> list[VideoRecord]:
    videos = []
    for line, video_id in read_id_list(path):
        if video_id not in captions:
            raise AnnotationError(f"{path} line {line}: {video_id} has no captions in the captions file")
        records = [CaptionRecord(text) for text in captions[video_id]]
        videos.append(VideoRecord(video_id, split, records, source=f"{path.name} line {line}"))
    return videos


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
    data = load_pickle(path)  # only reached with the explicit allow_pickle option
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
    return [(number, line.strip()) for number, line in text_lines(path) if line.strip()]

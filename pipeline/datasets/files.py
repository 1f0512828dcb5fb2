"""Finding released annotation files and reading them with messages that point at the fault."""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pipeline.datasets.records import AnnotationError, Annotations


@dataclass(frozen=True)
class ReleasedFile:
    name: str  # the file name as the dataset releases it
    split: str  # the split its videos belong to
    required: bool = True  # when reading a folder


def find_split_files(fmt: str, annotations: Path, released: list[ReleasedFile]) -> list[tuple[ReleasedFile, Path]]:
    """The released files to read, in the order given.

    A folder must hold every required file (directly or in one subfolder); a single file must
    be one of the released names and is read alone, as that one split.
    """
    if annotations.is_file():
        for spec in released:
            if annotations.name == spec.name:
                return [(spec, annotations)]
        names = ", ".join(spec.name for spec in released)
        raise AnnotationError(
            f"{fmt}: {annotations} is not one of the released annotation files ({names}); "
            "pass one of them or the folder that holds them"
        )
    found = []
    for spec in released:
        path = find_in_folder(annotations, spec.name)
        if path is not None:
            found.append((spec, path))
        elif spec.required:
            raise AnnotationError(
                f"{fmt}: no {spec.name} in {annotations} (looked in the folder and its "
                f"subfolders); pass a single released file to read only that split"
            )
    return found


def require_folder_file(fmt: str, annotations: Path, name: str) -> Path:
    """A file a multi-file dataset cannot do without (MSR-VTT, MSVD): always read from a folder."""
    folder = folder_of(fmt, annotations)
    path = find_in_folder(folder, name)
    if path is None:
        raise AnnotationError(f"{fmt}: no {name} in {folder} (looked in the folder and its subfolders)")
    return path


def folder_of(fmt: str, annotations: Path) -> Path:
    if not annotations.is_dir():
        raise AnnotationError(
            f"{fmt}: {annotations} is a file, but this dataset's annotations span several files: "
            "pass the folder that holds them"
        )
    return annotations


def find_in_folder(folder: Path, name: str) -> Path | None:
    """`folder/name`, else the single `name` anywhere below it (archives unpack into subfolders)."""
    direct = folder / name
    if direct.is_file():
        return direct
    matches = sorted(path for path in folder.rglob(name) if path.is_file())
    if len(matches) > 1:
        listed = ", ".join(str(path) for path in matches)
        raise AnnotationError(f"several files named {name} under {folder}: {listed}; pass the one to use")
    return matches[0] if matches else None


def load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    except json.JSONDecodeError as error:
        raise AnnotationError(f"{path}: not valid JSON: {error}") from error
    except UnicodeDecodeError as error:
        raise AnnotationError(f"{path}: not UTF-8 text: {error}") from error


def expect_type(value: Any, expected: type | tuple[type, ...], where: str, what: str) -> Any:
    """`value` if it has the expected type, else an error naming the place and what was wanted."""
    # bool is an int subclass; a boolean where a number belongs is a broken file, not a number.
    if isinstance(value, expected) and not (isinstance(value, bool) and bool not in _as_tuple(expected)):
        return value
    raise AnnotationError(f"{where}: expected {what}, got {type(value).__name__} {_short(value)}")


def expect_key(mapping: dict, key: str, expected: type | tuple[type, ...], where: str, what: str) -> Any:
    if key not in mapping:
        raise AnnotationError(f"{where}: missing key {key!r} ({what}); keys present: {sorted(mapping)}")
    return expect_type(mapping[key], expected, f"{where}, key {key!r}", what)


def expect_string_list(value: Any, where: str) -> list[str]:
    expect_type(value, list, where, "a list of strings")
    for index, item in enumerate(value):
        expect_type(item, str, f"{where}[{index}]", "a string")
    return value


def expect_columns(header: list[str] | None, required: list[str], path: Path) -> None:
    missing = [column for column in required if column not in (header or [])]
    if missing:
        raise AnnotationError(f"{path}: header {header} lacks the column(s) {missing}; expected {required}")


def _as_tuple(expected: type | tuple[type, ...]) -> tuple[type, ...]:
    return expected if isinstance(expected, tuple) else (expected,)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def read_released_splits(
    fmt: str, annotations: Path, released: list[ReleasedFile], read_split: Callable[[Path, str], list]
) -> Annotations:
    """Annotations of every released split file found, each read by `read_split(path, split)`."""
    videos = []
    for spec, path in find_split_files(fmt, annotations, released):
        videos.extend(read_split(path, spec.split))
    return Annotations(videos)

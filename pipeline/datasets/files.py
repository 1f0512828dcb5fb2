"""Finding released annotation files and reading them with messages that point at the fault.

Every adapter opens its files through the readers here (`open_text`, `text_lines`,
`read_csv_rows`, `load_json`, `load_pickle`, `read_parquet_rows`), so that a file that is not
UTF-8, not the format its name says, empty, truncated or pathological fails the same way: one
line naming the file (and the line where it makes sense), never a library's traceback.

A folder may hold only some of a dataset's released split files (a partial download): those
present are read and each absent one becomes a `missing_split_file` problem of the manifest.
"""

import csv
import json
import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.datasets.records import AnnotationError, Annotations, Problem, VideoRecord

MISSING_SPLIT_FILE = "missing_split_file"


@dataclass(frozen=True)
class ReleasedFile:
    name: str  # the file name as the dataset releases it
    split: str  # the split its videos belong to


@dataclass
class SplitFiles:
    found: list[tuple[ReleasedFile, Path]]  # in the order released
    missing: list[Problem]  # one `missing_split_file` per released file not found

    def read(self, read_split: Callable[[Path, str], list[VideoRecord]]) -> Annotations:
        """Annotations of every file found, each read by `read_split(path, split)`."""
        videos = [video for spec, path in self.found for video in read_split(path, spec.split)]
        return Annotations(videos, list(self.missing))


def find_split_files(fmt: str, annotations: Path, released: list[ReleasedFile]) -> SplitFiles:
    """The released split files to read, in the order given.

    A single file must be one of the released names and is read alone, as that one split: the
    user chose it, so the other splits are not reported. A folder is searched as in
    `find_split_files_in_folder`.
    """
    if annotations.is_file():
        for spec in released:
            if annotations.name == spec.name:
                return SplitFiles([(spec, annotations)], [])
        raise AnnotationError(
            f"{fmt}: {annotations} is not one of the released annotation files ({_names(released)}); "
            "pass one of them or the folder that holds them"
        )
    return find_split_files_in_folder(fmt, annotations, released)


def find_split_files_in_folder(fmt: str, folder: Path, released: list[ReleasedFile]) -> SplitFiles:
    """The split files in `folder` (directly or in one subfolder); each absent one is a problem.

    A download often lacks a split (no validation file, a test set fetched separately): the
    splits present are still worth a manifest. A folder with none of them is a wrong path.
    """
    found, missing = [], []
    for spec in released:
        path = find_in_folder(folder, spec.name)
        if path is not None:
            found.append((spec, path))
        else:
            detail = f"no {spec.split} split: {spec.name} is not in the annotations folder or its subfolders"
            missing.append(Problem(MISSING_SPLIT_FILE, spec.name, detail))
    if not found:
        raise AnnotationError(
            f"{fmt}: none of the released split files ({_names(released)}) is in {folder} "
            "(looked in the folder and its subfolders)"
        )
    return SplitFiles(found, missing)


def read_released_splits(
    fmt: str, annotations: Path, released: list[ReleasedFile], read_split: Callable[[Path, str], list[VideoRecord]]
) -> Annotations:
    """Annotations of every released split file found, each read by `read_split(path, split)`."""
    return find_split_files(fmt, annotations, released).read(read_split)


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


def _names(released: list[ReleasedFile]) -> str:
    return ", ".join(spec.name for spec in released)


# ---- reading -----------------------------------------------------------------------------------


@contextmanager
def open_text(path: Path) -> Iterator[TextIO]:
    """`path` as UTF-8 text, lines left as they are (what `csv` needs).

    A decoding error while the caller reads becomes an AnnotationError giving the line of the
    first bad byte. `utf-8-sig`: files saved by spreadsheet programs start with a byte order
    mark that would otherwise stick to the first header name or JSON value.
    """
    try:
        file = open(path, encoding="utf-8-sig", newline="")
    except OSError as error:
        raise AnnotationError(f"{path}: cannot open: {error.strerror or error}") from error
    with file:
        try:
            yield file
        except UnicodeDecodeError as error:
            raise AnnotationError(_not_utf8(path)) from error


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line with its line break) for each line of a UTF-8 text file."""
    with open_text(path) as file:
        yield from enumerate(file, start=1)


def read_csv_rows(path: Path, required: list[str]) -> Iterator[tuple[int, dict[str | None, Any]]]:
    """(line where the row starts, row) for each non-blank row of a CSV file with a header.

    Rows are as `csv.DictReader` gives them: fields past the header are a list under the key
    None, absent fields are None. The header must hold the `required` columns.
    """
    with open_text(path) as file:
        rows = _csv_rows(path, csv.reader(file))
        first = next(rows, None)
        if first is None:
            raise AnnotationError(f"{path}: the file is empty; expected a CSV header with the columns {required}")
        header = first[1]
        expect_columns(header, required, path)
        for line, fields in rows:
            if fields:
                yield line, _row_dict(header, fields)


def _csv_rows(path: Path, reader: Any) -> Iterator[tuple[int, list[str]]]:
    while True:
        start = reader.line_num + 1  # a quoted field may carry the row over several lines
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise AnnotationError(_csv_error(path, start, reader.line_num, error)) from error
        yield start, fields


def _csv_error(path: Path, line: int, reached: int, error: csv.Error) -> str:
    if "field larger than field limit" in str(error):
        # The csv module's limit (131072 characters) stays: it is global to the process, and it
        # bounds what one runaway quote can make the reader hold. No annotation field is near it.
        limit = csv.field_size_limit()
        if reached > line:  # the field ran over line breaks: almost always a quote never closed
            return (
                f"{path} line {line}: a field is larger than the CSV field limit ({limit} characters) and is "
                f"still open on line {reached}; look for a quote opened on line {line} and never closed"
            )
        return (
            f"{path} line {line}: a field is larger than the CSV field limit ({limit} characters) on this "
            "one line; no annotation field is that long: check that this is the right file"
        )
    return f"{path} line {line}: not valid CSV: {_one_line(str(error))}"


def _row_dict(header: list[str], fields: list[str]) -> dict[str | None, Any]:
    row: dict[str | None, Any] = dict(zip(header, fields))
    if len(fields) > len(header):
        row[None] = fields[len(header) :]
    for column in header[len(fields) :]:
        row[column] = None
    return row


def load_json(path: Path) -> Any:
    """The JSON value of a whole file."""
    with open_text(path) as file:
        text = file.read()
    if not text or text.isspace():
        raise AnnotationError(f"{path}: the file is empty; expected JSON")
    return parse_json(text, str(path))


def parse_json(text: str, where: str) -> Any:
    """The JSON value of `text`; errors say `where` it came from and the position in it."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        position = f"column {error.colno}" if "\n" not in text.strip() else f"line {error.lineno}, column {error.colno}"
        raise AnnotationError(f"{where}: not valid JSON: {error.msg} at {position}") from error
    except RecursionError as error:
        # Annotation files nest a few levels; thousands of brackets are garbage, not data.
        raise AnnotationError(f"{where}: JSON nested too deeply to read; not an annotation file") from error
    except ValueError as error:  # e.g. an integer of more than 4300 digits
        raise AnnotationError(f"{where}: JSON value not readable: {_one_line(str(error))}") from error


def load_pickle(path: Path) -> Any:
    """The unpickled object. Only for a file the user vouched for: unpickling runs code."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise AnnotationError(f"{path}: cannot open: {error.strerror or error}") from error
    if not data:
        raise AnnotationError(f"{path}: the file is empty; expected a pickle")
    try:
        return pickle.loads(data)  # noqa: S301 - callers read pickles only on the user's explicit request
    except Exception as error:  # a corrupt pickle raises almost any exception type
        raise AnnotationError(
            f"{path}: not a readable pickle (corrupt or truncated?): {type(error).__name__}: {_one_line(str(error))}"
        ) from error


def read_parquet_rows(path: Path, required: list[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row number from 1, row) for each row of a Parquet file holding the `required` columns."""
    try:
        if path.stat().st_size == 0:
            raise AnnotationError(f"{path}: the file is empty; expected Parquet")
        parquet = pq.ParquetFile(path)
        expect_columns(parquet.schema_arrow.names, required, path)
        number = 0
        # Pages are decoded batch by batch, so a damaged page only shows up while iterating.
        for batch in parquet.iter_batches():
            for row in batch.to_pylist():
                number += 1
                yield number, row
    except (pa.ArrowException, OSError) as error:
        raise AnnotationError(
            f"{path}: not a readable Parquet file (another format, or truncated?): {_one_line(str(error))}"
        ) from error


def _not_utf8(path: Path) -> str:
    """Where the first byte that is not UTF-8 is; decoding reads in chunks, so look again."""
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return f"{path}: not UTF-8 text: it is UTF-16 (its byte order mark says so); save it as UTF-8"
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        column = error.start - data.rfind(b"\n", 0, error.start)
        return (
            f"{path} line {line}, column {column}: not UTF-8 text (byte 0x{data[error.start]:02x}); "
            "save it as UTF-8 or check that it is the right file"
        )
    return f"{path}: not UTF-8 text"


def _one_line(text: str) -> str:
    """A library's message on one line: messages are printed as one line after the command."""
    return " ".join(text.split())


# ---- checking parsed values --------------------------------------------------------------------


def expect_type(value: Any, expected: type | tuple[type, ...], where: str, what: str) -> Any:
    """`value` if it has the expected type, else an error naming the place and what was wanted."""
    # bool is an int subclass; a boolean where a number belongs is a broken file, not a number.
    if isinstance(value, expected) and not (isinstance(value, bool) and bool not in _as_tuple(expected)):
        return value
    raise AnnotationError(f"{where}: expected {what}, got {type(value).__name__} {short(value)}")


def expect_key(mapping: dict, key: str, expected: type | tuple[type, ...], where: str, what: str) -> Any:
    if key not in mapping:
        raise AnnotationError(f"{where}: missing key {key!r} ({what}); keys present: {short(sorted(mapping), 200)}")
    return expect_type(mapping[key], expected, f"{where}, key {key!r}", what)


def expect_string_list(value: Any, where: str) -> list[str]:
    expect_type(value, list, where, "a list of strings")
    for index, item in enumerate(value):
        expect_type(item, str, f"{where}[{index}]", "a string")
    return value


def expect_columns(header: list[str] | None, required: list[str], path: Path) -> None:
    missing = [column for column in required if column not in (header or [])]
    if missing:
        raise AnnotationError(f"{path}: header {short(header, 200)} lacks the column(s) {missing}; expected {required}")


def short(value: Any, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters: a garbage file's 'header' can be its whole text."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_tuple(expected: type | tuple[type, ...]) -> tuple[type, ...]:
    return expected if isinstance(expected, tuple) else (expected,)

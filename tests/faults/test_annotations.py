"""Bad annotation files fail as one-line AnnotationErrors that name the file (and the line where it
makes sense), never a library's exception: text that is not UTF-8, a .parquet that is not Parquet,
a CSV field over the csv module's limit, JSON nested too deeply, binary garbage, empty files and
corrupt pickles. Each case overwrites one file of an otherwise good release."""

import pickle
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_datasets import CHARADES_HEADER, RELEASES, msrvtt_annotations, write_text

from pipeline.datasets import AnnotationError, MsvdOptions, build_manifest

# A PNG header, then noise: 0x89 can start neither UTF-8 text nor a pickle.
GARBAGE = b"\x89PNG\r\n\x1a\n" + random.Random(0).randbytes(4096)
GENERIC_HEADER = b"video_id,path,caption\n"
GENERIC_ROW = b'{"video_id": "a", "path": "", "caption": "x"}\n'


def release_with(tmp_path: Path, fmt: str, name: str, content: bytes) -> tuple[Path, Path]:
    """(what to pass as --annotations, the bad file): a good release with `name` replaced."""
    if fmt == "generic":
        bad = tmp_path / name
        bad.write_bytes(content)
        return bad, bad
    folder = RELEASES[fmt][0](tmp_path / "ann")
    bad = folder / name
    bad.write_bytes(content)
    return folder, bad


def error_of(tmp_path: Path, fmt: str, annotations: Path, options=None) -> str:
    """The message of the AnnotationError that reading `annotations` raises; it must be one line."""
    videos = tmp_path / "videos"
    videos.mkdir(exist_ok=True)
    with pytest.raises(AnnotationError) as caught:
        build_manifest(fmt, annotations, videos, options)
    assert type(caught.value) is AnnotationError
    message = str(caught.value)
    assert "\n" not in message and "\r" not in message, message
    return message


def parquet_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "good.parquet"
    rows = 5000
    table = pa.table({"video_id": [f"v{i}" for i in range(rows)], "path": [""] * rows,
                      "caption": [f"caption {i}" for i in range(rows)]})  # fmt: skip
    pq.write_table(table, path)
    return path.read_bytes()


# ---- not UTF-8 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "name", "content", "where"),
    [
        ("charades", "Charades_v1_train.csv", CHARADES_HEADER.encode() + b"A1,S,Caf\xe9,,,Yes,s,,c,,1\n",
         "line 2, column 9"),
        ("msrvtt", "MSRVTT_JSFUSION_test.csv", b"key,vid_key,video_id,sentence\nret0,msr2,video2,\xe9t\xe9\n",
         "line 2, column 18"),
        # Far past the first block the decoder reads: the line is still the right one.
        ("msrvtt", "MSRVTT_train.9k.csv", b"video_id\n" + b"video0\n" * 5000 + b"\xe9\n", "line 5002, column 1"),
        ("msrvtt", "MSRVTT_data.json", b'{"videos": [],\n "sentences": ["\xe9"]}', "line 2, column 17"),
        ("didemo", "val_data.json", b'[\n"\xff"]', "line 2, column 2"),
        ("activitynet", "train.json", b"\x81", "line 1, column 1"),
        ("vatex", "vatex_training_v1.0.json", b'[{"videoID": "\xc3("}]', "line 1, column 15"),
        ("msvd", "val_list.txt", b"val_id_1_2\n\xff\n", "line 2, column 1"),
        ("msvd", "captions_msvd.json", b'{"a": ["\xe9"]}', "line 1, column 9"),
        ("lsmdc", "LSMDC16_annos_test.csv", b"clip\t1\t2\t3\t4\tok\n\xe9\n", "line 2, column 1"),
        ("generic", "m.jsonl", GENERIC_ROW + b'{"caption": "\xe9"}\n', "line 2, column 14"),
        ("generic", "m.csv", GENERIC_HEADER + b"a,,\xe9\n", "line 2, column 4"),
    ],
)  # fmt: skip
def test_text_that_is_not_utf8(tmp_path, fmt, name, content, where):
    annotations, bad = release_with(tmp_path, fmt, name, content)
    message = error_of(tmp_path, fmt, annotations)
    assert message.startswith(f"{bad} {where}: not UTF-8 text (byte 0x")


def test_utf16_text_is_named_as_such(tmp_path):
    annotations, bad = release_with(tmp_path, "charades", "Charades_v1_test.csv", CHARADES_HEADER.encode("utf-16"))
    assert error_of(tmp_path, "charades", annotations) == (
        f"{bad}: not UTF-8 text: it is UTF-16 (its byte order mark says so); save it as UTF-8"
    )


def test_utf8_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    annotations = tmp_path / "m.csv"
    annotations.write_bytes(b"\xef\xbb\xbf" + GENERIC_HEADER + b"a,,a caption\n")
    (tmp_path / "videos").mkdir()
    manifest = build_manifest("generic", annotations, tmp_path / "videos")
    assert manifest.captions.column("text").to_pylist() == ["a caption"]


# ---- not Parquet ---------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["text renamed", "truncated", "damaged footer", "damaged pages"])
def test_parquet_file_that_is_not_parquet(tmp_path, damage):
    good = parquet_bytes(tmp_path)
    content = {
        "text renamed": GENERIC_HEADER + b"a,,x\n",
        "truncated": good[: len(good) // 2],
        "damaged footer": good[:4] + bytes(len(good) - 8) + good[-4:],
        "damaged pages": good[:4] + bytes(len(good) // 2) + good[4 + len(good) // 2 :],
    }[damage]
    annotations, bad = release_with(tmp_path, "generic", "m.parquet", content)
    message = error_of(tmp_path, "generic", annotations)  # pyarrow's own messages span lines
    assert message.startswith(f"{bad}: not a readable Parquet file (another format, or truncated?): ")


# ---- CSV field over the csv module's limit -------------------------------------------------------


def test_csv_field_over_the_limit(tmp_path):
    huge = "a" * 200_000
    row = f'B2,S,Hall,,,Yes,s,,"{huge}",,1\n'
    content = (CHARADES_HEADER + "A1,S,Hall,,,Yes,s,,c,,1\n" + row).encode()
    annotations, bad = release_with(tmp_path, "charades", "Charades_v1_train.csv", content)
    assert error_of(tmp_path, "charades", annotations) == (  # quoted, but closed on the same line
        f"{bad} line 3: a field is larger than the CSV field limit (131072 characters) on this one line; "
        "no annotation field is that long: check that this is the right file"
    )


def test_quote_never_closed_names_the_line_where_the_row_starts(tmp_path):
    lines = "".join(f"v{i},,caption {i} of a long file\n" for i in range(10_000))
    content = (GENERIC_HEADER.decode() + 'v0,,"opened here\n' + lines).encode()
    annotations, bad = release_with(tmp_path, "generic", "m.csv", content)
    message = error_of(tmp_path, "generic", annotations)
    # 131072 characters of these rows end on line 3811: where the reader gave up, still inside the quote.
    assert message == (
        f"{bad} line 2: a field is larger than the CSV field limit (131072 characters) and is still open on "
        "line 3811; look for a quote opened on line 2 and never closed"
    )


# ---- JSON nested too deeply ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "name", "content", "where"),
    [
        ("didemo", "train_data.json", b"[" * 100_000, ""),
        ("msrvtt", "MSRVTT_data.json", b'{"a": ' * 100_000, ""),
        ("generic", "m.jsonl", GENERIC_ROW + b"[" * 100_000 + b"\n", " line 2"),
    ],
)
def test_json_nested_too_deeply(tmp_path, fmt, name, content, where):
    annotations, bad = release_with(tmp_path, fmt, name, content)
    assert error_of(tmp_path, fmt, annotations) == (
        f"{bad}{where}: JSON nested too deeply to read; not an annotation file"
    )


def test_json_number_too_long_to_read(tmp_path):
    content = b'{"v_a": {"duration": ' + b"9" * 5000 + b"}}"
    annotations, bad = release_with(tmp_path, "activitynet", "train.json", content)
    assert error_of(tmp_path, "activitynet", annotations).startswith(
        f"{bad}: JSON value not readable: Exceeds the limit (4300 digits) for integer string conversion"
    )


# ---- binary garbage ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "name", "expected"),
    [
        ("charades", "Charades_v1_test.csv", " line 1, column 1: not UTF-8 text"),
        ("didemo", "test_data.json", " line 1, column 1: not UTF-8 text"),
        ("lsmdc", "LSMDC16_annos_val.csv", " line 1, column 1: not UTF-8 text"),
        ("msvd", "train_list.txt", " line 1, column 1: not UTF-8 text"),
        ("generic", "m.jsonl", " line 1, column 1: not UTF-8 text"),
        ("generic", "m.parquet", ": not a readable Parquet file"),
    ],
)
def test_binary_garbage(tmp_path, fmt, name, expected):
    annotations, bad = release_with(tmp_path, fmt, name, GARBAGE)
    assert error_of(tmp_path, fmt, annotations).startswith(f"{bad}{expected}")


@pytest.mark.parametrize(
    ("fmt", "name", "expected"),
    [
        ("didemo", "test_data.json", ": not valid JSON: Expecting value at column 1"),
        ("charades", "Charades_v1_test.csv", ": header ['\\x00\\x00"),
    ],
)
def test_garbage_that_happens_to_be_utf8(tmp_path, fmt, name, expected):
    annotations, bad = release_with(tmp_path, fmt, name, bytes(4096))
    message = error_of(tmp_path, fmt, annotations)
    assert message.startswith(f"{bad}{expected}")
    assert len(message) < 600  # the "header" is the whole file: it is cut short, not quoted whole


# ---- empty files ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "name", "content", "expected"),
    [
        ("didemo", "val_data.json", b"", "the file is empty; expected JSON"),
        ("activitynet", "val_1.json", b"  \n", "the file is empty; expected JSON"),
        ("msrvtt", "MSRVTT_data.json", b"", "the file is empty; expected JSON"),
        ("msvd", "captions_msvd.json", b"", "the file is empty; expected JSON"),
        ("charades", "Charades_v1_test.csv", b"",
         "the file is empty; expected a CSV header with the columns ['id', 'script', 'descriptions']"),
        ("msrvtt", "MSRVTT_train.9k.csv", b"",
         "the file is empty; expected a CSV header with the columns ['video_id']"),
        ("generic", "m.csv", b"",
         "the file is empty; expected a CSV header with the columns ['video_id', 'path', 'caption']"),
        ("generic", "m.jsonl", b"\n\n", "the file is empty; expected one JSON object per line"),
        ("generic", "m.parquet", b"", "the file is empty; expected Parquet"),
    ],
)  # fmt: skip
def test_empty_file(tmp_path, fmt, name, content, expected):
    annotations, bad = release_with(tmp_path, fmt, name, content)
    assert error_of(tmp_path, fmt, annotations) == f"{bad}: {expected}"


def test_empty_list_without_a_header_is_an_empty_split(tmp_path):
    # LSMDC files and MSVD lists have no header: an empty one is a split with no videos.
    annotations, _ = release_with(tmp_path, "msvd", "val_list.txt", b"")
    (tmp_path / "videos").mkdir()
    manifest = build_manifest("msvd", annotations, tmp_path / "videos")
    assert sorted(manifest.videos.column("split").to_pylist()) == ["test", "train"]


# ---- corrupt pickle ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (pickle.dumps({"a_1_2": [["a", "cat"]]})[:12], ": not a readable pickle (corrupt or truncated?): "),
        (GARBAGE, ": not a readable pickle (corrupt or truncated?): "),
        (b"not a pickle at all", ": not a readable pickle (corrupt or truncated?): "),
        (b"", ": the file is empty; expected a pickle"),
    ],
)
def test_corrupt_pickle(tmp_path, content, expected):
    annotations = tmp_path / "ann"
    for split in ("train", "val", "test"):
        write_text(annotations / f"{split}_list.txt", "a_1_2\n" if split == "train" else "")
    bad = annotations / "raw-captions.pkl"
    bad.write_bytes(content)
    message = error_of(tmp_path, "msvd", annotations, MsvdOptions(allow_pickle=True))
    assert message.startswith(f"{bad}{expected}")


def test_msrvtt_train_list_with_garbage_after_good_rows(tmp_path):
    annotations = msrvtt_annotations(tmp_path / "ann")
    bad = annotations / "MSRVTT_train.9k.csv"
    bad.write_bytes(b"video_id\nvideo0\n" + GARBAGE)
    assert error_of(tmp_path, "msrvtt", annotations).startswith(f"{bad} line 3, column 1: not UTF-8 text")


# ---- a malformed JSFUSION test row ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("row", "shown"),
    [
        ("ret1,msr3,video3\n", "'sentence': None"),  # a short row: no sentence column at all
        ('ret1,msr3,,"a man talks"\n', "'video_id': ''"),  # a test caption of no video
        ('ret1,msr3,"  ","a man talks"\n', "'video_id': '  '"),
    ],
)
def test_msrvtt_malformed_jsfusion_row_names_its_line(tmp_path, row, shown):
    good = 'ret0,msr2,video2,"a man, in a car, talks"\n'
    annotations = msrvtt_annotations(tmp_path / "ann", jsfusion_rows=good + row)
    message = error_of(tmp_path, "msrvtt", annotations)
    assert message.startswith(
        f"{annotations / 'MSRVTT_JSFUSION_test.csv'} line 3: expected key,vid_key,video_id,sentence, got {{"
    ), message
    assert shown in message

"""Small defects of issue 22, each shown fixed: a huge CSV field is named as such (not taken for an
unclosed quote), a FIFO where a video should be is reported as what it is and never opened,
`tvr --debug` is accepted before the command as well as after it, and `tvr export-tags` writes to
a file:// (or any pyarrow.fs) URI instead of into a folder named `file:`."""

import os
import socket

import pytest
from test_datasets import detail, problems_of, touch, write_text
from test_tag_export import tagged  # noqa: F401 - the fixture: planted tags on an msrvtt manifest

from pipeline.cli import build_parser, main
from pipeline.config import ConfigError
from pipeline.datasets import AnnotationError, build_manifest

# ---- a CSV field over the csv module's limit -----------------------------------------------------


def test_a_one_megabyte_field_on_one_line_is_named_as_such_not_as_an_unclosed_quote(tmp_path):
    annotations = write_text(tmp_path / "m.csv", "video_id,path,caption\nv0,,ok\nv1,," + "x" * 1_000_000 + "\n")
    (tmp_path / "videos").mkdir()
    with pytest.raises(AnnotationError) as caught:
        build_manifest("generic", annotations, tmp_path / "videos")
    assert str(caught.value) == (
        f"{annotations} line 3: a field is larger than the CSV field limit (131072 characters) on this one line; "
        "no annotation field is that long: check that this is the right file"
    )


def test_a_quote_never_closed_is_still_named_with_where_it_opened(tmp_path):
    rows = "".join(f"v{i},,caption {i}\n" for i in range(20_000))
    annotations = write_text(tmp_path / "m.csv", 'video_id,path,caption\nv0,,"opened here\n' + rows)
    (tmp_path / "videos").mkdir()
    with pytest.raises(AnnotationError, match=r"line 2: a field is larger than the CSV field limit \(131072 "
                       r"characters\) and is still open on line \d+; look for a quote opened on line 2 and never"):
        build_manifest("generic", annotations, tmp_path / "videos")


# ---- a FIFO, socket or folder where a video should be ---------------------------------------------


@pytest.mark.timeout(60)  # opening the FIFO would block here for ever: fail instead
def test_a_fifo_where_a_video_should_be_is_not_a_file_and_is_never_opened(tmp_path):
    videos = tmp_path / "videos"
    touch(videos, "found.mp4", "twice/by_stem.mp4")
    os.mkfifo(videos / "given.mp4")
    os.mkfifo(videos / "by_stem.mp4")  # a FIFO beside a real file of the same name: the file is used
    os.mkfifo(videos / "only_fifo.webm")
    (videos / "a_folder.mp4").mkdir()
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(videos / "sock.mkv"))
        annotations = write_text(tmp_path / "m.csv", "video_id,path,caption\n"
                                 "given,given.mp4,c\nby_stem,,c\nonly_fifo,,c\nfolder,a_folder.mp4,c\n"
                                 "sock,,c\nfound,,c\ngone,gone.mp4,c\n")  # fmt: skip
        manifest = build_manifest("generic", annotations, videos)
    assert problems_of(manifest) == [
        ("missing_video", "gone"),
        ("not_a_file", "folder"),
        ("not_a_file", "given"),
        ("not_a_file", "only_fifo"),
        ("not_a_file", "sock"),
    ]
    assert detail(manifest, "not_a_file", "given") == "path given.mp4 is a FIFO, not a regular file; not opened"
    assert detail(manifest, "not_a_file", "only_fifo") == "only_fifo.webm is a FIFO, not a regular file; not opened"
    assert detail(manifest, "not_a_file", "folder") == (
        "path a_folder.mp4 is a directory, not a regular file; not opened"
    )
    assert detail(manifest, "not_a_file", "sock") == "sock.mkv is a socket, not a regular file; not opened"
    assert detail(manifest, "missing_video", "gone") == "path gone.mp4: no such file under the video root"
    paths = dict(zip(manifest.videos["video_id"].to_pylist(), manifest.videos["path"].to_pylist()))
    assert paths["by_stem"] == str(videos / "twice" / "by_stem.mp4") and paths["found"] == str(videos / "found.mp4")
    assert {paths[v] for v in ("given", "only_fifo", "folder", "sock", "gone")} == {None}


# ---- `tvr --debug COMMAND` and `tvr COMMAND --debug` ----------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--debug", "status", "{missing}"],  # the form docs/outputs.md gives
        ["status", "{missing}", "--debug"],
        ["--debug", "prompts", "render", "no_such_prompt"],
        ["prompts", "render", "no_such_prompt", "--debug"],
        ["prompts", "--debug", "render", "no_such_prompt"],
    ],
)
def test_debug_before_or_after_the_command_shows_the_traceback(argv, tmp_path, capsys):
    argv = [arg.format(missing=tmp_path / "missing") for arg in argv]
    assert build_parser().parse_args(argv).debug is True
    with pytest.raises(ConfigError, match="missing does not exist|no_such_prompt"):  # raised: Python prints it
        main(argv)
    without = [arg for arg in argv if arg != "--debug"]
    assert build_parser().parse_args(without).debug is False
    assert main(without) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err


# ---- `tvr export-tags OUT file:///dest` ------------------------------------------------------------


def test_export_tags_writes_to_a_file_uri_and_never_into_a_folder_named_file(tagged, tmp_path, monkeypatch, capsys):  # noqa: F811
    out, *_ = tagged("msrvtt")
    monkeypatch.chdir(tmp_path)  # where Path("file:///dest") would have made its `file:` folder
    dest = tmp_path / "reference code data"
    assert main(["export-tags", str(out), dest.as_uri()]) == 0
    printed = capsys.readouterr().out
    assert (dest / "anns" / "training_9k.csv").is_file() and (dest / "anns" / "testing.csv").is_file()
    assert f"wrote {dest.as_uri()}/anns/training_9k.csv" in printed
    assert not (tmp_path / "file:").exists()


@pytest.mark.parametrize(
    ("dest", "expected"),
    [
        ("file:{absolute}/dest", "a URI needs // after its scheme (file:///absolute/path, s3://bucket/path), or give a "
                            "plain path"),  # fmt: skip
        ("file://{relative}/dest", "Unsupported hostname in non-Windows local URI"),  # file://tmp/...: `tmp` is a host
        ("nosuchfs://bucket/dest", "Unrecognized filesystem type in URI: nosuchfs://bucket/dest"),
    ],
)
def test_export_tags_refuses_a_destination_it_cannot_write_in_one_line(tagged, tmp_path, monkeypatch, capsys,  # noqa: F811
                                                                        dest, expected):
    out, *_ = tagged("msrvtt")
    monkeypatch.chdir(tmp_path)
    dest = dest.format(absolute=tmp_path, relative=str(tmp_path).lstrip("/"))
    assert main(["export-tags", str(out), dest]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tvr export-tags: error: export-tags destination {dest}: ") and expected in err, err
    assert len(err.splitlines()) == 1
    assert sorted(path.name for path in tmp_path.iterdir()) == ["msrvtt"]  # nothing made: no `file:`, no dest

"""Containment: decoders open only self-contained video files under the video root, for a bounded time.

A playlist or concat list inside the root that names a real clip outside it must be refused before
any decoder reads it (with the flags alone, ffmpeg would happily decode the outside clip); so must
a link that leaves the root, and a FIFO must not block. Every allowed container still decodes.
"""

from __future__ import annotations

import csv
import os
import shutil
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

import pipeline.decode.containment as containment
import pipeline.decode.keyframes as keyframes_module
import pipeline.decode.probe as probe_module
from pipeline import config as config_lib
from pipeline.decode import Uniform, VideoError, extract_keyframes, probe_video
from pipeline.decode.containment import check_video_file
from pipeline.decode.probe import input_flags, read_stream_frames
from pipeline.demo import synth
from pipeline.flow import DatasetConfig, RunConfig, build_and_write_manifest, run_pipeline
from pipeline.run.runner import RunnerConfig
from pipeline.store.storage import Store
from pipeline.store.version import latest

# Inside clips are 160x96; the outside clip 96x64, so a frame of it is recognisable by its size.
INSIDE_SIZE, OUTSIDE_SIZE = (160, 96), (96, 64)

# The stages these tests are about; the feature stages would load CLIP from a hub.
DECODING = ["probe", "keyframes"]


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> Path:
    """A folder outside every video root: a clip, and the same clip as an MPEG-TS segment."""
    folder = tmp_path_factory.mktemp("outside")
    width, height = OUTSIDE_SIZE
    synth.make_clip(folder / "secret.mp4", seconds=1, width=width, height=height, fps=10, pattern="smptebars")
    synth.make_clip(folder / "secret.ts", seconds=1, width=width, height=height, fps=10, pattern="smptebars")
    return folder


def _hls(outside: Path) -> str:
    return (f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n"
            f"#EXTINF:1.0,\n{outside / 'secret.ts'}\n#EXT-X-ENDLIST\n")


def _ffconcat(outside: Path) -> str:
    return f"ffconcat version 1.0\nfile '{outside / 'secret.mp4'}'\n"


@pytest.fixture
def root(tmp_path) -> Path:
    folder = tmp_path / "videos"
    folder.mkdir()
    return folder


def _clip(path: Path, fps: float = 10, **kwargs) -> Path:
    width, height = INSIDE_SIZE
    return synth.make_clip(path, seconds=1, width=width, height=height, fps=fps, **kwargs)


def _reason(call) -> str:
    with pytest.raises(VideoError) as caught:
        call()
    assert caught.value.message and "\n" not in caught.value.message  # one line that says why
    return caught.value.reason


@pytest.fixture
def no_decoder(monkeypatch):
    """Fails the test if ffprobe, ffmpeg or a frame source is started."""
    started: list[str] = []

    def refuse(*args, **kwargs):
        started.append(repr(args[:2]))
        raise AssertionError(f"a decoder was started: {args[:2]}")

    monkeypatch.setattr(probe_module.subprocess, "run", refuse)
    monkeypatch.setattr(keyframes_module, "open_source", refuse)
    return started


# ---- playlists and lists ---------------------------------------------------------------------------


def test_the_playlist_fixture_really_escapes_without_containment(tmp_path, outside):
    """Guards the tests below: plain ffprobe follows the playlist (renamed .mp4) to the outside clip."""
    playlist = tmp_path / "renamed.mp4"
    playlist.write_text(_hls(outside))
    shown = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=width,height", "-of", "csv=p=0",
                            str(playlist)], capture_output=True, text=True, check=True).stdout
    assert f"{OUTSIDE_SIZE[0]},{OUTSIDE_SIZE[1]}" in shown


@pytest.mark.parametrize("name", ["list.m3u8", "renamed.mp4", "renamed.mkv"])
@pytest.mark.parametrize("content", [_hls, _ffconcat])
def test_lists_pointing_outside_are_refused_before_any_decoder(root, outside, no_decoder, name, content):
    path = root / name
    path.write_text(content(outside))
    assert _reason(lambda: probe_video(str(path), video_root=str(root))) == "unsupported_container"
    assert _reason(lambda: read_stream_frames(str(path))) == "unsupported_container"
    for backend in ("decord", "ffmpeg"):
        extract = lambda: extract_keyframes(str(path), Uniform(num_frames=4), video_id="v",  # noqa: E731
                                            backend=backend, video_root=str(root))
        assert _reason(extract) == "unsupported_container"
    assert no_decoder == []


def test_playlist_message_names_what_it_is(root, outside):
    path = root / "renamed.mp4"
    path.write_text("\ufeff  " + _hls(outside))  # a byte-order mark and blanks do not hide it
    with pytest.raises(VideoError, match=r"renamed\.mp4 is an HLS playlist \(#EXTM3U\).*only self-contained"):
        probe_video(str(path), video_root=str(root))


def test_ffmpeg_flags_refuse_a_playlist_on_their_own(root, outside):
    """Second line of defence: should a playlist get past the byte check, ffprobe and ffmpeg run with
    flags that refuse its demuxer."""
    playlist = root / "list.m3u8"
    playlist.write_text(_hls(outside))
    done = subprocess.run(["ffprobe", "-v", "error", *input_flags(), "-show_entries", "stream=width", str(playlist)],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "not on whitelist" in done.stderr
    clip = _clip(root / "ok.mp4")
    done = subprocess.run(["ffmpeg", "-v", "error", *input_flags(), "-i", str(clip), "-f", "null", "-"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr  # ffmpeg 5.1 takes them as input options


@pytest.mark.parametrize(
    ("name", "content", "what"),
    [
        ("session.mp4", b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nm=video 5004 RTP/AVP 96\r\n",
         "SDP"),
        ("manifest.mp4", b'<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011"></MPD>\n', "DASH"),
        ("notes.mp4", b"just some text\n", "text"),
        ("image.mp4", b"\x89PNG\r\n\x1a\n" + bytes(64), "PNG"),
        ("sound.avi", b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(64), "RIFF WAVE"),
        # A transport stream's sync bytes in front of SDP text: FFmpeg could still take it for SDP.
        ("sync.ts", b"G\nc=IN IP4 1.2.3.4\n" + b"x" * 169 + b"G" + b"y" * 187 + b"G" + b"z" * 200, "SDP"),
    ],
)
def test_other_formats_are_unsupported_containers(root, no_decoder, name, content, what):
    path = root / name
    path.write_bytes(content)
    with pytest.raises(VideoError, match=what) as caught:
        probe_video(str(path), video_root=str(root))
    assert caught.value.reason == "unsupported_container"


def test_an_image_sequence_name_is_refused_whatever_the_file_holds(root, tmp_path, request):
    # FFmpeg's image2 demuxer would read frame001.png, frame002.png, ... for this name.
    real = _clip(tmp_path / "real.mp4")
    path = root / "frame%03d.png"
    shutil.copy(real, path)
    request.getfixturevalue("no_decoder")
    assert _reason(lambda: probe_video(str(path), video_root=str(root))) == "unsupported_container"


def test_random_bytes_never_reach_ffprobe(root, no_decoder):
    path = synth.make_garbage(root / "garbage.mp4")
    assert check_video_file(str(path), str(root)).container is None
    assert _reason(lambda: probe_video(str(path), video_root=str(root))) == "corrupt"


# ---- the video root ----------------------------------------------------------------------------------


def test_a_link_out_of_the_root_is_outside_root(root, outside, no_decoder):
    link = root / "link.mp4"
    link.symlink_to(outside / "secret.mp4")
    folder_link = root / "more"
    folder_link.symlink_to(outside, target_is_directory=True)
    dangling = root / "gone.mp4"
    dangling.symlink_to(outside / "no_such.mp4")
    for path in (link, folder_link / "secret.mp4", root / ".." / ".." / outside.name / "secret.mp4", dangling):
        assert _reason(lambda: probe_video(str(path), video_root=str(root))) == "outside_root", path
        extract = lambda: extract_keyframes(str(path), Uniform(), video_id="v", video_root=str(root))  # noqa: E731
        assert _reason(extract) == "outside_root", path


def test_a_link_inside_the_root_is_followed(root):
    clip = _clip(root / "real.mp4")
    (root / "sub").mkdir()
    link = root / "sub" / "link.mp4"
    link.symlink_to(clip)
    assert probe_video(str(link), video_root=str(root)).frame_count == 10
    assert len(extract_keyframes(str(link), Uniform(num_frames=2), video_id="v", video_root=str(root)).jpegs) == 2


def test_without_a_root_only_the_file_is_checked(outside):
    assert probe_video(str(outside / "secret.mp4")).frame_count == 10


# ---- files that are not files -------------------------------------------------------------------------


def _within(seconds: float, call, unblock=None):
    """call() in a thread that may hang; fails the test instead of hanging the suite."""
    box: dict = {}

    def target():
        try:
            box["value"] = call()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            box["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        if unblock:
            unblock()
        pytest.fail(f"still running after {seconds} s: it blocks")
    return box, time.monotonic() - started


def _unblock_fifo(path: Path):
    def unblock():
        try:  # a writer lets a blocked reader go on (and see the end of the data)
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass

    return unblock


def test_a_fifo_fails_fast(root):
    fifo = root / "pipe.mp4"
    os.mkfifo(fifo)
    calls = {
        "probe": lambda: probe_video(str(fifo), video_root=str(root)),
        "read_stream_frames": lambda: read_stream_frames(str(fifo)),
        "extract": lambda: extract_keyframes(str(fifo), Uniform(), video_id="v", video_root=str(root)),
    }
    for name, call in calls.items():
        box, seconds = _within(5, call, _unblock_fifo(fifo))
        assert isinstance(box.get("error"), VideoError), (name, box)
        assert box["error"].reason == "not_a_file" and "FIFO" in box["error"].message, name
        assert seconds < 2, name


def test_a_fifo_swapped_in_after_the_stat_does_not_block(root, monkeypatch):
    """The file may change between looking at it and opening it: the open must not wait for a writer."""
    fifo = root / "pipe.mp4"
    os.mkfifo(fifo)
    real_check = containment._require_regular
    checks: list[int] = []

    def stat_says_regular(path, mode):
        checks.append(mode)
        if len(checks) > 1:  # the first look (os.stat) is fooled; the opened file is checked again
            real_check(path, mode)

    monkeypatch.setattr(containment, "_require_regular", stat_says_regular)
    box, seconds = _within(5, lambda: check_video_file(str(fifo), str(root)), _unblock_fifo(fifo))
    assert box["error"].reason == "not_a_file" and seconds < 2
    assert len(checks) == 2


def test_a_directory_and_a_device_are_not_files(root):
    (root / "folder.mp4").mkdir()
    assert _reason(lambda: probe_video(str(root / "folder.mp4"), video_root=str(root))) == "not_a_file"
    assert _reason(lambda: probe_video("/dev/null")) == "not_a_file"
    assert stat.S_ISCHR(os.stat("/dev/zero").st_mode)
    box, _ = _within(5, lambda: extract_keyframes("/dev/zero", Uniform(), video_id="v"))
    assert box["error"].reason == "not_a_file"


def test_missing_and_empty_keep_their_reasons(root):
    assert _reason(lambda: probe_video(str(root / "nope.mp4"), video_root=str(root))) == "missing"
    (root / "empty.mp4").write_bytes(b"")
    assert _reason(lambda: probe_video(str(root / "empty.mp4"), video_root=str(root))) == "empty"


# ---- time limits ---------------------------------------------------------------------------------------


@pytest.fixture
def slow_tool(tmp_path, monkeypatch):
    """Put a hanging stand-in for one FFmpeg tool first on PATH (`-version` still answers)."""

    def install(name: str) -> None:
        real = shutil.which(name)
        folder = tmp_path / "slow_bin"
        folder.mkdir(exist_ok=True)
        script = folder / name
        script.write_text(f'#!/bin/sh\nif [ "$1" = "-version" ]; then exec {real} "$@"; fi\nexec sleep 60\n')
        script.chmod(0o755)
        monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")

    return install


def test_a_probe_past_its_limit_is_a_timeout(root, slow_tool):
    clip = _clip(root / "a.mp4")
    slow_tool("ffprobe")
    box, seconds = _within(10, lambda: probe_video(str(clip), video_root=str(root), timeout_seconds=0.5))
    assert box["error"].reason == "timeout" and "0.5 s" in box["error"].message
    assert 0.5 <= seconds < 5


def test_a_decode_past_its_limit_is_a_timeout_without_fallback(root, slow_tool, monkeypatch):
    clip = _clip(root / "a.mp4")
    slow_tool("ffmpeg")  # ffprobe answers, the decoding ffmpeg hangs
    tried: list[str] = []
    real_open = keyframes_module.open_source

    def recording_open(path, backend, short_side=0):
        tried.append(backend)
        return real_open(path, backend, short_side)

    monkeypatch.setattr(keyframes_module, "open_source", recording_open)
    extract = lambda: extract_keyframes(str(clip), Uniform(num_frames=3), video_id="v", backend="ffmpeg",  # noqa: E731
                                        video_root=str(root), timeout_seconds=1.0)
    box, seconds = _within(15, extract)
    assert box["error"].reason == "timeout", box
    assert "ffmpeg did not finish within the 1 s time limit" in box["error"].message
    assert 1.0 <= seconds < 5
    assert tried == ["ffmpeg"]  # the limit is the video's: no second decoder after it ran out


def test_an_in_process_decode_that_ends_late_is_a_timeout(root, monkeypatch):
    """decord cannot be stopped mid-read; frames it returns after the limit are not stored."""
    clip = _clip(root / "a.mp4")
    real_open = keyframes_module.open_source

    def slow_open(path, backend, short_side=0):
        time.sleep(0.6)
        return real_open(path, backend, short_side)

    monkeypatch.setattr(keyframes_module, "open_source", slow_open)
    with pytest.raises(VideoError) as caught:
        extract_keyframes(str(clip), Uniform(num_frames=2), video_id="v", backend="decord", timeout_seconds=0.3)
    assert caught.value.reason == "timeout"
    assert caught.value.message == "decoding took longer than its 0.3 s time limit"
    # Within the limit the same call stores its frames.
    result = extract_keyframes(str(clip), Uniform(num_frames=2), video_id="v", backend="decord", timeout_seconds=30)
    assert len(result.jpegs) == 2


@pytest.mark.parametrize("key", ["probe.timeout_seconds", "keyframes.timeout_seconds"])
def test_time_limits_are_validated(key):
    data = config_lib.apply_overrides(config_lib.to_dict(RunConfig()), [f"{key}=0"], RunConfig)
    with pytest.raises(config_lib.ConfigError, match=rf"{key}=0(\.0)? is out of range: must be > 0"):
        config_lib.build(RunConfig, data)
    data = config_lib.apply_overrides(config_lib.to_dict(RunConfig()), [f"{key}=2.5"], RunConfig)
    stage, field = key.split(".")
    assert getattr(getattr(config_lib.build(RunConfig, data), stage), field) == 2.5


# ---- every allowed container still opens ---------------------------------------------------------------

ALLOWED = [
    ("mp4", "libx264", "mp4", 10),
    ("mov", "libx264", "mp4", 10),
    ("3gp", "libx264", "mp4", 10),
    ("m4v", "libx264", "mp4", 10),
    ("mkv", "libx264", "matroska", 10),
    ("webm", "libvpx-vp9", "matroska", 10),
    ("avi", "mpeg4", "avi", 10),
    ("ts", "libx264", "mpegts", 10),
    ("mpg", "mpeg2video", "mpeg", 25),  # MPEG-2 has no 10 fps
    ("flv", "flv", "flv", 10),
    ("ogv", "libtheora", "ogg", 10),
    ("wmv", "wmv2", "asf", 10),
]


@pytest.mark.parametrize(("suffix", "codec", "container", "fps"), ALLOWED)
def test_allowed_containers_probe_and_decode(root, suffix, codec, container, fps):
    clip = _clip(root / f"clip.{suffix}", fps=fps, codec=codec)
    assert check_video_file(str(clip), str(root)).container == container
    meta = probe_video(str(clip), video_root=str(root))
    assert meta.frame_count == fps and (meta.width, meta.height) == INSIDE_SIZE
    for backend in ("decord", "ffmpeg"):
        result = extract_keyframes(str(clip), Uniform(num_frames=3), video_id="v", backend=backend,
                                   video_root=str(root), short_side=0)
        assert len(result.jpegs) == 3 and (result.width, result.height) == INSIDE_SIZE, backend


# ---- the stages, end to end ------------------------------------------------------------------------------


def _dataset(data: Path, outside: Path) -> Path:
    videos = data / "videos"
    videos.mkdir(parents=True)
    for name in ("a", "b", "c"):
        _clip(videos / f"{name}.mp4")
    (videos / "hls.m3u8").write_text(_hls(outside))
    (videos / "hls_renamed.mp4").write_text(_hls(outside))
    (videos / "concat.mp4").write_text(_ffconcat(outside))
    with (data / "captions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id", "path", "caption"])
        for name in ("a", "b", "c", "hls", "hls_renamed", "concat"):
            file = "hls.m3u8" if name == "hls" else f"{name}.mp4"
            writer.writerow([name, file, f"clip {name}"])
    return data


def _run_config(out: Path, data: Path, manifest: str = "", **overrides) -> RunConfig:
    cfg = RunConfig(out=str(out), dataset=DatasetConfig(format="generic", annotations=str(data / "captions.csv"),
                                                        videos=str(data / "videos"), manifest=manifest),
                    runner=RunnerConfig(rows_per_shard=2, progress=False))
    if overrides:
        changes = [f"{key}={value}" for key, value in overrides.items()]
        cfg = config_lib.build(RunConfig, config_lib.apply_overrides(config_lib.to_dict(cfg), changes, RunConfig))
    return cfg


def _outcomes(out: Path, stage: str) -> tuple[dict[str, dict], dict[str, tuple[str, str]]]:
    store = Store.open(str(out))
    reader = latest(store, stage)
    rows = {row["video_id"]: row for row in reader.table().to_pylist()}
    failures = {f["item_id"]: (f["reason"], f["message"]) for f in reader.failures().to_pylist()}
    return rows, failures


def _quiet(*_):
    pass


def test_stages_refuse_playlists_and_links_out_of_the_root(tmp_path, outside, ray_session):
    data = _dataset(tmp_path / "data", outside)
    out = tmp_path / "out"
    videos = data / "videos"
    # The manifest sees b as a plain file; b then becomes a link out of the root before probe, and c
    # after probe, before keyframes: the workers, not the manifest, must catch both.
    build_and_write_manifest(Store.open(str(out)), _run_config(out, data).dataset)
    (videos / "b.mp4").unlink()
    (videos / "b.mp4").symlink_to(outside / "secret.mp4")
    run_pipeline(_run_config(out, data, manifest="latest"), stages=["probe"], report=_quiet)
    (videos / "c.mp4").unlink()
    (videos / "c.mp4").symlink_to(outside / "secret.mp4")
    run_pipeline(_run_config(out, data, manifest="latest"), stages=["keyframes"], report=_quiet)

    probed, probe_failures = _outcomes(out, "probe")
    assert set(probed) == {"a", "c"}
    assert {k: reason for k, (reason, _) in probe_failures.items()} == {
        "b": "outside_root", "hls": "unsupported_container", "hls_renamed": "unsupported_container",
        "concat": "unsupported_container"}  # fmt: skip
    assert "HLS playlist" in probe_failures["hls_renamed"][1] and "ffconcat list" in probe_failures["concat"][1]

    frames, keyframe_failures = _outcomes(out, "keyframes")
    assert set(frames) == {"a"}
    assert keyframe_failures["c"][0] == "outside_root" and str(outside) in keyframe_failures["c"][1]
    assert {keyframe_failures[k][0] for k in ("b", "hls", "hls_renamed", "concat")} == {"upstream_failed"}
    # No frame of the outside clip was stored: it is the only clip of its size.
    assert (frames["a"]["width"], frames["a"]["height"]) == (224 * INSIDE_SIZE[0] // INSIDE_SIZE[1], 224)


def test_stage_time_limits_fail_items_as_timeout(tmp_path, outside, ray_session):
    data = _dataset(tmp_path / "data", outside)
    out = tmp_path / "out"
    # 1 ms: no ffprobe process can even start and answer in that time.
    cfg = _run_config(out, data, **{"keyframes.backend": "ffmpeg", "keyframes.timeout_seconds": 0.001})
    run_pipeline(cfg, stages=DECODING, report=_quiet)
    probed, _ = _outcomes(out, "probe")
    assert set(probed) == {"a", "b", "c"}  # probe's own limit (default) was enough
    frames, failures = _outcomes(out, "keyframes")
    assert frames == {}
    assert {failures[k][0] for k in ("a", "b", "c")} == {"timeout"}
    cfg = _run_config(tmp_path / "out2", data, **{"probe.timeout_seconds": 0.001})
    run_pipeline(cfg, stages=["probe"], report=_quiet)
    _, failures = _outcomes(tmp_path / "out2", "probe")
    assert {failures[k][0] for k in ("a", "b", "c")} == {"timeout"}


def test_every_ffprobe_and_ffmpeg_input_is_restricted(h264_long_gop, monkeypatch):
    import pipeline.decode.ffmpeg_source as ffmpeg_source

    commands: list[list[str]] = []

    def recording(module):
        real = module.run_limited

        def run(command, *args, **kwargs):
            commands.append(command)
            return real(command, *args, **kwargs)

        monkeypatch.setattr(module, "run_limited", run)

    recording(probe_module)
    recording(ffmpeg_source)
    probe_video(h264_long_gop)
    # Frame 262 lies far past the others on 5 s GOPs: one ffmpeg process with two seeking inputs.
    extract_keyframes(h264_long_gop, Uniform(num_frames=4), video_id="v", backend="ffmpeg", fallback=False)
    tools = [Path(command[0]).name for command in commands]
    assert tools.count("ffprobe") == 2 and tools.count("ffmpeg") >= 1
    assert max(command.count("-i") for command in commands) >= 2
    wanted = dict(zip(input_flags()[::2], input_flags()[1::2], strict=True))
    for command in commands:
        # The options of each input stand between the previous input and its own `-i` (ffprobe: its path, last).
        inputs = [i for i, arg in enumerate(command) if arg == "-i"] or [len(command) - 1]
        for previous, at in zip([0, *inputs], inputs, strict=False):
            options = command[previous:at]
            given = {flag: options[k + 1] for k, flag in enumerate(options[:-1]) if flag in wanted}
            assert given == wanted, command

"""Synthetic videos and probe_video: exact metadata per codec/container, variable frame rate,
rotation, and one failure reason per kind of broken file."""

import os
import shutil
import subprocess

import numpy as np
import pytest

from pipeline.decode.probe import VideoError, probe_video
from pipeline.demo import synth


@pytest.mark.parametrize(
    ("codec", "suffix", "codec_name", "container", "fps", "size"),
    [
        ("libx264", ".mp4", "h264", "mp4", 25, (160, 90)),
        ("libx264", ".mkv", "h264", "matroska", 30, (160, 90)),
        ("mpeg4", ".avi", "mpeg4", "avi", 25, (176, 144)),
        ("libvpx-vp9", ".webm", "vp9", "webm", 24, (160, 90)),
        ("mjpeg", ".avi", "mjpeg", "avi", 10, (128, 96)),
    ],
)
def test_probe_reads_exact_metadata(tmp_path, codec, suffix, codec_name, container, fps, size):
    seconds = 2
    path = tmp_path / f"clip{suffix}"
    synth.make_clip(path, seconds=seconds, width=size[0], height=size[1], fps=fps, codec=codec)

    meta = probe_video(str(path))

    assert (meta.codec, meta.container) == (codec_name, container)
    assert (meta.width, meta.height) == size
    assert meta.fps == fps
    assert meta.frame_count == seconds * fps
    assert meta.duration == pytest.approx(seconds, abs=0.002)
    assert meta.rotation == 0
    assert meta.variable_frame_rate is False
    assert meta.size_bytes == path.stat().st_size


def test_probe_counts_frames_of_clip_with_audio(tmp_path):
    path = synth.make_clip(tmp_path / "a.mp4", seconds=2, width=160, height=90, fps=25, audio=True)
    meta = probe_video(str(path))
    assert meta.frame_count == 50
    assert meta.codec == "h264"


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_variable_frame_rate_is_detected(tmp_path, suffix):
    seconds, fps = 4, 30
    path = synth.make_clip(
        tmp_path / f"vfr{suffix}", seconds=seconds, width=160, height=90, fps=fps, vfr=True
    )

    meta = probe_video(str(path))

    kept = synth.vfr_kept_frames(seconds * fps)
    assert kept == 84  # 7 of every 10 source frames
    assert meta.variable_frame_rate is True
    assert meta.frame_count == kept
    # The average rate counts frames (Matroska's header would still say 30).
    assert meta.fps == pytest.approx(kept / meta.duration)
    assert meta.fps < 22


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_is_read_clockwise(tmp_path, rotation):
    path = synth.make_clip(
        tmp_path / "r.mp4", seconds=1, width=64, height=32, fps=10, rotation=rotation
    )
    meta = probe_video(str(path))
    assert meta.rotation == rotation
    assert (meta.width, meta.height) == (64, 32)  # as stored


def test_rotation_means_what_ffmpeg_autorotate_does(tmp_path):
    """Clockwise-to-upright 90: ffmpeg's own autorotate must move the top-left corner of the
    stored frame to the top right."""
    path = tmp_path / "corner.mp4"
    source = "color=c=blue:size=64x32:rate=10:duration=1,drawbox=x=0:y=0:w=16:h=16:color=red:t=fill"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", source, "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )
    synth.set_mp4_rotation(path, 90)
    assert probe_video(str(path)).rotation == 90
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-frames:v", "1", "-f", "rawvideo",
         "-pix_fmt", "rgb24", "pipe:"],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    upright = np.frombuffer(raw, np.uint8).reshape(64, 32, 3)  # portrait after autorotate
    assert upright[2, -3, 0] > 200  # red, top right
    assert upright[2, 2, 0] < 50


def test_set_rotation_refuses_non_mp4(tmp_path):
    path = synth.make_clip(tmp_path / "a.mkv", seconds=1, width=64, height=32, fps=10)
    with pytest.raises(ValueError, match="MP4"):
        synth.set_mp4_rotation(path, 90)


def test_scene_clip_has_all_scenes(scene_clip):
    meta = probe_video(scene_clip)
    assert meta.frame_count == 150
    assert meta.duration == pytest.approx(6.0)


# ---- failures ------------------------------------------------------------------------------------


def _reason(path) -> str:
    with pytest.raises(VideoError) as caught:
        probe_video(str(path))
    assert caught.value.message  # always says why
    return caught.value.reason


def test_missing_file(tmp_path):
    assert _reason(tmp_path / "nope.mp4") == "missing"


def test_zero_byte_file(zero_byte_mp4):
    assert _reason(zero_byte_mp4) == "empty"


def test_mp4_cut_in_half_is_truncated(truncated_mp4):
    assert _reason(truncated_mp4) == "truncated"


def test_mkv_cut_in_half_is_truncated(truncated_mkv):
    assert _reason(truncated_mkv) == "truncated"


def test_faststart_mp4_cut_is_truncated(tmp_path):
    """Index first, data cut: the index points past the end of the file."""
    full = tmp_path / "faststart.mp4"
    faststart = ("-movflags", "+faststart")
    synth.make_clip(full, seconds=4, width=160, height=90, fps=25, encoder_args=faststart)
    assert _reason(synth.make_truncated(full, tmp_path / "cut.mp4", 0.6)) == "truncated"


def test_avi_cut_is_truncated(tmp_path, mpeg4_avi):
    assert _reason(synth.make_truncated(mpeg4_avi, tmp_path / "cut.avi", 0.5)) == "truncated"


@pytest.mark.parametrize("suffix", [".mp4", ".mkv", ".avi"])
def test_random_bytes_are_corrupt(tmp_path, suffix):
    assert _reason(synth.make_garbage(tmp_path / f"garbage{suffix}")) == "corrupt"


def test_audio_only_has_no_video_stream(audio_only):
    assert _reason(audio_only) == "no_video_stream"


def test_unknown_codec_is_unsupported(unknown_codec_mkv):
    assert _reason(unknown_codec_mkv) == "unsupported_codec"


# ---- synth itself --------------------------------------------------------------------------------


def test_synth_says_how_to_install_ffmpeg(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="apt-get install ffmpeg"):
        synth.make_clip(tmp_path / "a.mp4", seconds=1, width=64, height=32, fps=10)


def test_synth_rejects_unknown_pattern(tmp_path):
    with pytest.raises(ValueError, match="unknown pattern"):
        synth.make_clip(tmp_path / "a.mp4", seconds=1, width=64, height=32, fps=10, pattern="nope")


def test_truncated_keeps_the_fraction(tmp_path, mpeg4_avi):
    cut = synth.make_truncated(mpeg4_avi, tmp_path / "cut.avi", 0.25)
    assert cut.stat().st_size == int(0.25 * os.path.getsize(mpeg4_avi))
    with pytest.raises(ValueError):
        synth.make_truncated(mpeg4_avi, tmp_path / "bad.avi", 1.5)


def test_clip_frames_change_over_time(tmp_path):
    """Decoders are checked by comparing frames: consecutive frames must differ."""
    for pattern in synth.PATTERNS:
        path = tmp_path / f"{pattern}.mp4"
        synth.make_clip(path, seconds=1, width=64, height=36, fps=10, pattern=pattern)
        command = ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "gray"]
        raw = subprocess.run([*command, "pipe:"], capture_output=True, check=True).stdout
        frames = np.frombuffer(raw, np.uint8).reshape(-1, 36, 64).astype(int)
        assert len(frames) == 10
        steps = np.abs(np.diff(frames, axis=0)).mean(axis=(1, 2))
        assert (steps > 0.5).all(), (pattern, steps)

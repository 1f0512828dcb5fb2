"""Frame sources and extract_keyframes.

The reference for "frame i" is a plain sequential decode of the whole file by the ffmpeg command
line (every frame, in presentation order, no rotation). Both backends must return exactly those
frames for the same indices, on long GOPs with B-frames, variable frame rates, MPEG-4 AVI and
VP9 WebM, and agree on timestamps.
"""

import functools
import io
import os
import subprocess

import av
import numpy as np
import pytest
from PIL import Image

import pipeline.decode.keyframes as keyframes_module
from pipeline.decode import (
    Disparity,
    Fps,
    Uniform,
    VideoError,
    extract_keyframes,
    open_source,
    probe_video,
)
from pipeline.decode.ffmpeg_source import plan_segments
from pipeline.decode.keyframes import to_jpeg
from pipeline.decode.probe import read_stream_frames

BACKENDS = ["decord", "ffmpeg"]


@functools.cache
def all_frames(path: str, *, autorotate: bool = False) -> np.ndarray:
    """Every frame of the file, decoded front to back by the ffmpeg command line. Decoded once
    per session and file (the session's clips are made once and never change); read-only."""
    meta = probe_video(path)
    width, height = meta.width, meta.height
    if autorotate and meta.rotation in (90, 270):
        width, height = height, width
    command = ["ffmpeg", "-nostdin", "-v", "error"]
    command += [] if autorotate else ["-noautorotate"]
    command += ["-i", path, "-map", "0:v:0", "-vsync", "passthrough", "-f", "rawvideo",
                "-pix_fmt", "rgb24", "pipe:"]  # fmt: skip
    raw = subprocess.run(command, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)  # bytes: a read-only array


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per frame."""
    axes = tuple(range(1, a.ndim))
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=axes)


def spread_indices(frame_count: int) -> list[int]:
    """First, last, neighbours, and frames all over the file, out of order, one repeated."""
    some = list(range(3, frame_count, 11))
    middle = frame_count // 2
    return [frame_count - 1, 0, 1, middle, middle + 1, *some, 1, frame_count - 2]


CLIPS = ["h264_long_gop", "vfr_mp4", "vfr_mkv", "mpeg4_avi", "vp9_webm"]


@pytest.mark.parametrize("clip", CLIPS)
def test_both_backends_return_the_reference_frames(clip, request):
    path = request.getfixturevalue(clip)
    reference = all_frames(path)
    meta = probe_video(path)
    assert len(reference) == meta.frame_count
    # The clips change every frame, so a neighbouring frame would not pass for the right one.
    assert mean_abs_diff(reference[1:], reference[:-1]).min() > 2

    indices = spread_indices(meta.frame_count)
    decoded = {}
    for backend in BACKENDS:
        with open_source(path, backend) as source:
            assert source.name == backend
            assert source.frame_count == meta.frame_count
            assert (source.width, source.height) == (meta.width, meta.height)
            frames = source.read(indices)
            decoded[backend] = (frames, source.timestamps)
        assert frames.shape == (len(indices), meta.height, meta.width, 3)
        assert frames.dtype == np.uint8
        assert mean_abs_diff(frames, reference[indices]).max() < 0.5, backend

    (decord_frames, decord_times), (ffmpeg_frames, ffmpeg_times) = decoded.values()
    assert mean_abs_diff(decord_frames, ffmpeg_frames).max() < 2
    np.testing.assert_allclose(decord_times, ffmpeg_times, atol=1e-4)


@pytest.mark.parametrize("clip", ["mpeg4_avi", "vfr_mkv", "h264_long_gop"])
def test_each_frame_read_alone(clip, request):
    """One frame per read, so every frame is once the first and last of a seek: the seek point,
    the selection window and the stop time must all land right, whatever the time base."""
    path = request.getfixturevalue(clip)
    reference = all_frames(path)
    indices = [*range(0, 26), *range(len(reference) - 4, len(reference))]
    with open_source(path, "ffmpeg") as source:
        frames = np.concatenate([source.read([i]) for i in indices])
    assert mean_abs_diff(frames, reference[indices]).max() < 0.5


@pytest.mark.parametrize("clip", ["vfr_mp4", "vfr_mkv"])
def test_timestamps_follow_variable_frame_rate(clip, request):
    path = request.getfixturevalue(clip)
    expected = read_stream_frames(path).timestamps
    steps = np.diff(expected)
    assert steps.max() > 2.5 * steps.min()  # really variable
    for backend in BACKENDS:
        with open_source(path, backend) as source:
            np.testing.assert_allclose(source.timestamps, expected, atol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_keeps_request_order_and_repeats(h264_long_gop, backend):
    reference = all_frames(h264_long_gop)
    with open_source(h264_long_gop, backend) as source:
        frames = source.read([200, 7, 200])
        gray = source.read_gray([200, 7], size=(32, 18))
        with pytest.raises(IndexError):
            source.read([source.frame_count])
    assert mean_abs_diff(frames, reference[[200, 7, 200]]).max() < 0.5
    assert gray.shape == (2, 18, 32) and gray.dtype == np.uint8
    assert abs(gray[0].astype(int) - gray[1].astype(int)).mean() > 2  # different frames


def test_gray_frames_agree_between_backends(scene_clip):
    indices = [0, 30, 60, 120]
    grays = []
    for backend in BACKENDS:
        with open_source(scene_clip, backend) as source:
            grays.append(source.read_gray(indices, size=(32, 18)))
    assert mean_abs_diff(grays[0], grays[1]).max() < 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_sources_return_frames_as_stored(rotated_mp4, backend):
    """No auto-rotation: decord rotates on its own and the source must undo that."""
    reference = all_frames(rotated_mp4)
    with open_source(rotated_mp4, backend) as source:
        frames = source.read([0, 5])
        assert (source.width, source.height) == (160, 90)
    assert frames.shape == (2, 90, 160, 3)
    assert mean_abs_diff(frames, reference[[0, 5]]).max() < 0.5


@pytest.mark.parametrize("clip", ["open_gop_mp4", "bframes_ts", "mpeg4_bframes_avi"])
def test_files_decord_misreads_go_to_the_other_backends(clip, request):
    """decord returns wrong frames after seeking in these files, silently; its source refuses
    them, and extract_keyframes falls back to PyAV (then ffmpeg), which read them right."""
    path = request.getfixturevalue(clip)
    reference = all_frames(path)
    with pytest.raises(VideoError) as caught:
        open_source(path, "decord")
    assert caught.value.reason == "decode_error"
    indices = spread_indices(len(reference))
    with open_source(path, "ffmpeg") as source:
        assert source.frame_count == len(reference)
        assert mean_abs_diff(source.read(indices), reference[indices]).max() < 0.5
    result = extract_keyframes(path, Uniform(num_frames=5), video_id="v", short_side=0, backend="decord")
    assert result.decoder == "pyav"
    assert result.note.startswith("decord failed, used pyav")
    assert mean_abs_diff(decode_jpegs(result.jpegs), as_jpeg(reference[result.indices])).max() < 1


def test_ffmpeg_reads_every_frame_in_bounded_processes(h264_long_gop, monkeypatch):
    """All 300 frames: more than one select expression may hold, split over several processes."""
    import pipeline.decode.ffmpeg_source as ffmpeg_source

    monkeypatch.setattr(ffmpeg_source, "MAX_SEGMENTS_PER_PROCESS", 2)
    reference = all_frames(h264_long_gop)
    with open_source(h264_long_gop, "ffmpeg") as source:
        frames = source.read(list(range(len(reference))))
    assert mean_abs_diff(frames, reference).max() < 0.5


# ---- seeking -------------------------------------------------------------------------------------


def test_plan_seeks_for_sparse_frames_and_streams_dense_ones():
    keyframe = np.zeros(1000, bool)
    keyframe[::50] = True  # 2 s GOPs at 25 fps
    assert plan_segments([10, 260, 510, 990], keyframe) == [[10], [260], [510], [990]]
    # Frames in the same GOP are decoded in one pass.
    assert plan_segments([10, 20, 45, 260], keyframe) == [[10, 20, 45], [260]]
    # Dense frames: consecutive runs, as long as one select expression may be.
    dense = list(range(0, 1000, 12))
    segments = plan_segments(dense, keyframe)
    assert [i for s in segments for i in s] == dense
    assert [len(s) for s in segments] == [50, 34]


def test_plan_caps_frames_per_segment():
    keyframe = np.zeros(300, bool)
    keyframe[0] = True
    segments = plan_segments(list(range(120)), keyframe)
    assert [len(s) for s in segments] == [50, 50, 20]


def test_plan_on_one_long_gop_never_seeks_back():
    keyframe = np.zeros(300, bool)
    keyframe[0] = True
    assert plan_segments([10, 150, 290], keyframe) == [[10, 150, 290]]


# ---- extract_keyframes ---------------------------------------------------------------------------


def decode_jpegs(jpegs: list[bytes]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(io.BytesIO(j)).convert("RGB")) for j in jpegs])


def as_jpeg(frames: np.ndarray, quality: int = 90) -> np.ndarray:
    """The reference frames through the same JPEG round trip: identical frames then compare
    equal, where comparing a JPEG with raw pixels would need a loose tolerance (saturated test
    colours lose ~6 levels to chroma subsampling)."""
    return decode_jpegs([to_jpeg(Image.fromarray(f), quality) for f in frames])


@pytest.mark.parametrize("backend", BACKENDS)
def test_extract_keyframes_output(h264_long_gop, backend):
    result = extract_keyframes(h264_long_gop, Uniform(num_frames=12), video_id="v", backend=backend)
    assert result.indices == [(2 * k + 1) * 300 // 24 for k in range(12)]
    assert result.timestamps == pytest.approx([i / 25 for i in result.indices], abs=1e-4)
    assert (result.width, result.height) == (398, 224)  # 320x180 scaled to a 224 short side
    assert result.decoder == backend and result.note is None and not result.repeated
    images = decode_jpegs(result.jpegs)
    assert images.shape == (12, 224, 398, 3)


def test_extract_keyframes_same_frames_from_both_backends(vfr_mkv):
    sampling = Fps(rate=4.0)
    results = [
        extract_keyframes(vfr_mkv, sampling, video_id="v", backend=b, short_side=0)
        for b in BACKENDS
    ]
    assert results[0].indices == results[1].indices
    assert results[0].timestamps == results[1].timestamps
    first, second = (decode_jpegs(r.jpegs) for r in results)
    assert first.shape == (len(results[0].indices), 180, 320, 3)
    assert mean_abs_diff(first, second).max() < 1  # JPEG of identical frames
    reference = all_frames(vfr_mkv)[results[0].indices]
    assert mean_abs_diff(first, as_jpeg(reference)).max() < 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_extract_keyframes_turns_frames_upright(rotated_mp4, backend):
    upright = all_frames(rotated_mp4, autorotate=True)  # ffmpeg's own autorotate: 90x160
    result = extract_keyframes(
        rotated_mp4, Uniform(num_frames=12), video_id="v", backend=backend, short_side=0,
        rotation=probe_video(rotated_mp4).rotation,
    )  # fmt: skip
    assert (result.width, result.height) == (90, 160)
    assert result.repeated  # 10 frames, 12 asked for
    images = decode_jpegs(result.jpegs)
    expected = as_jpeg(upright[result.indices])
    assert mean_abs_diff(images, expected).max() < 1
    assert mean_abs_diff(images, expected[:, ::-1, ::-1]).min() > 20  # turned the wrong way


def test_extract_keyframes_resizes_upright_frames(rotated_mp4):
    result = extract_keyframes(rotated_mp4, Uniform(num_frames=2), video_id="v", rotation=90)
    assert (result.width, result.height) == (224, 398)


def test_disparity_through_extract_keyframes(scene_clip):
    result = extract_keyframes(scene_clip, Disparity(num_frames=3), video_id="v")
    assert result.indices[0] == 0
    assert 50 <= result.indices[1] < 63 and 100 <= result.indices[2] < 113


# ---- failures and fallback -----------------------------------------------------------------------


def _failing_for(broken: set[str]):
    real_open = keyframes_module.open_source

    def open_source_or_fail(path, backend, short_side=0):
        if backend in broken:
            raise RuntimeError(f"{backend} exploded")
        return real_open(path, backend, short_side)

    return open_source_or_fail


def test_falls_back_from_ffmpeg_in_order(h264_long_gop, monkeypatch):
    monkeypatch.setattr(keyframes_module, "open_source", _failing_for({"ffmpeg", "pyav"}))
    result = extract_keyframes(h264_long_gop, Uniform(num_frames=3), video_id="v", backend="ffmpeg")
    assert result.decoder == "decord"  # ffmpeg, then the fallback order: pyav, decord
    assert "ffmpeg exploded" in result.note


def test_no_fallback_when_turned_off(h264_long_gop, monkeypatch):
    monkeypatch.setattr(keyframes_module, "open_source", _failing_for({"decord"}))
    with pytest.raises(VideoError) as caught:
        extract_keyframes(h264_long_gop, Uniform(), video_id="v", backend="decord", fallback=False)
    assert caught.value.reason == "decode_error"
    assert "decord exploded" in caught.value.message


def test_every_backend_failing_is_a_decode_error(h264_long_gop, monkeypatch):
    monkeypatch.setattr(keyframes_module, "open_source", _failing_for({"decord", "ffmpeg", "pyav"}))
    with pytest.raises(VideoError) as caught:
        extract_keyframes(h264_long_gop, Uniform(), video_id="v")
    assert caught.value.reason == "decode_error"
    for backend in ("pyav", "decord", "ffmpeg"):
        assert f"{backend} exploded" in caught.value.message


@pytest.mark.parametrize(
    ("clip", "reason"),
    [
        ("truncated_mp4", "decode_error"),
        ("garbage_mp4", "decode_error"),
        ("audio_only", "decode_error"),
        ("unknown_codec_mkv", "decode_error"),
        ("zero_byte_mp4", "empty"),
    ],
)
def test_broken_files_raise_video_error(clip, reason, request):
    path = request.getfixturevalue(clip)
    with pytest.raises(VideoError) as caught:
        extract_keyframes(path, Uniform(num_frames=4), video_id="v")
    assert caught.value.reason == reason
    if reason == "decode_error":  # both decoders tried, both named
        assert "decord:" in caught.value.message and "ffmpeg:" in caught.value.message
    for backend in BACKENDS:
        error, message = OPEN_ERRORS[clip, backend]
        with pytest.raises(error, match=message) as caught:
            with open_source(path, backend) as source:
                source.read([0])
        assert type(caught.value) is error


# What each decoder raises on a broken file: the decord source reads the file's layout through
# PyAV before decord opens it, so its errors there are PyAV's; the ffmpeg source checks the file
# first and names the reason.
OPEN_ERRORS = {
    ("truncated_mp4", "decord"): (av.error.InvalidDataError, "Invalid data found when processing input"),
    ("truncated_mp4", "ffmpeg"): (VideoError, "^truncated: .*moov atom not found"),
    ("garbage_mp4", "decord"): (av.error.InvalidDataError, "Invalid data found when processing input"),
    ("garbage_mp4", "ffmpeg"): (VideoError, "^corrupt: .*its first bytes are no known container's"),
    ("audio_only", "decord"): (VideoError, "^no_video_stream: .*audio_only.m4a has no video stream"),
    ("audio_only", "ffmpeg"): (VideoError, "^no_video_stream: none of the file's 1 streams is a video"),
    ("unknown_codec_mkv", "decord"): (av.error.DecoderNotFoundError, "Decoder not found"),
    ("unknown_codec_mkv", "ffmpeg"): (VideoError, "^unsupported_codec: ffmpeg has no decoder for video stream 0"),
    ("zero_byte_mp4", "decord"): (av.error.InvalidDataError, "Invalid data found when processing input"),
    ("zero_byte_mp4", "ffmpeg"): (VideoError, "^empty: file is 0 bytes"),
}


def test_missing_file(tmp_path):
    with pytest.raises(VideoError) as caught:
        extract_keyframes(str(tmp_path / "nope.mp4"), Uniform(), video_id="v")
    assert caught.value.reason == "missing"


def intact_frames_at(truncated: str, timestamps) -> np.ndarray:
    """The intact file's frames (`full.mkv` beside the truncated one) at these times: indices
    differ, since B-frames shown before the cut but stored after it are missing from the cut file."""
    full = os.path.join(os.path.dirname(truncated), "full.mkv")
    with open_source(full, "pyav") as source:
        times = source.timestamps
    at = [int(np.argmin(np.abs(times - t))) for t in timestamps]
    assert np.allclose(times[at], timestamps, atol=1e-3)
    return all_frames(full)[at]


def cut_time(path: str) -> float:
    """Seconds from the first frame to the earliest frame whose packet the cut removed or split:
    the truncated file holds no whole frame at or after it."""
    with av.open(path) as container:
        stream = container.streams.video[0]
        time_base = stream.time_base
        packets = [(p.pts, p.pos + p.size) for p in container.demux(stream) if p.size]
    size = os.path.getsize(path)
    first = min(pts for pts, _ in packets)
    cut = [pts for pts, end in packets if end >= size]
    return float(((min(cut) if cut else max(pts for pts, _ in packets) + 1) - first) * time_base)


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_mkv_gives_frames_before_the_cut_or_an_error(truncated_mkv, backend):
    """probe_video flags the file as truncated; a decoder may still read what is there, and must
    return only frames from before the cut, each the intact file's frame at the index recorded."""
    try:
        result = extract_keyframes(truncated_mkv, Uniform(num_frames=4), video_id="v", backend=backend,
                                   fallback=False, short_side=0)
    except VideoError as error:
        assert error.reason in ("decode_error", "damaged_frames"), error
    else:
        assert len(result.jpegs) == 4 and max(result.timestamps) < cut_time(truncated_mkv) < 4.0
        intact = as_jpeg(intact_frames_at(truncated_mkv, result.timestamps))
        assert (mean_abs_diff(decode_jpegs(result.jpegs), intact) < 1.5).all()

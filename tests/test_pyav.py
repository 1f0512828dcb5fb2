"""The PyAV frame source: the same frames as the decord and ffmpeg sources on the synthetic matrix,
seeking instead of decoding everything, and damaged frames reported instead of returned.

The reference for "frame i" is the ffmpeg command line's sequential decode (`all_frames`), as in
test_decode.py. Damaged clips are real H.264 clips with bytes overwritten inside known GOPs (the
packets' byte ranges come from the demuxer), so which frames may and may not be returned is known.
"""

from __future__ import annotations

import av
import numpy as np
import pytest
from test_decode import all_frames, intact_frames_at, mean_abs_diff, spread_indices

from pipeline.decode import open_source
from pipeline.decode.decoder_log import damage_message, join_whole
from pipeline.decode.keyframes import extract_keyframes
from pipeline.decode.probe import VideoError, read_stream_frames
from pipeline.decode.pyav_source import PyavSource, plan_passes
from pipeline.decode.sampling import Uniform
from pipeline.decode.sources import DamagedFrames, scaled_size, to_gray

MATRIX = [
    "h264_long_gop", "vfr_mp4", "vfr_mkv", "mpeg4_avi", "mpeg4_bframes_avi", "open_gop_mp4",
    "bframes_ts", "vp9_webm", "rotated_mp4", "scene_clip",
]  # fmt: skip

# decord refuses these (it would return wrong frames after seeking); test_decode.py covers why.
DECORD_REFUSES = {"mpeg4_bframes_avi", "open_gop_mp4", "bframes_ts"}


def index_sets(frame_count: int) -> dict[str, list[int]]:
    dense_start = frame_count // 3
    return {
        "sparse": np.linspace(0, frame_count - 1, 8, dtype=int).tolist(),
        "spread": spread_indices(frame_count),  # out of order, repeated, first and last
        "dense": list(range(dense_start, min(frame_count, dense_start + 40))),
        "late": [frame_count - 2, frame_count - 1],
    }


# ---- the same frames as the other backends -------------------------------------------------------


@pytest.mark.parametrize("clip", MATRIX)
def test_pyav_returns_the_reference_frames(clip, request):
    path = request.getfixturevalue(clip)
    reference = all_frames(path)
    shared = read_stream_frames(path)
    with open_source(path, "pyav") as source:
        assert source.name == "pyav" and source.version.startswith("PyAV ")
        assert source.frame_count == len(reference) == len(shared.pts)
        assert (source.width, source.height) == (shared.width, shared.height)
        np.testing.assert_allclose(source.timestamps, shared.timestamps, atol=1e-6)
        for name, indices in index_sets(source.frame_count).items():
            frames = source.read(indices)
            assert frames.shape == (len(indices), shared.height, shared.width, 3), name
            assert frames.dtype == np.uint8
            assert mean_abs_diff(frames, reference[indices]).max() < 0.5, name


# Scaled frames differ more than frames at the stored size: PyAV's FFmpeg (8.x) honours H.264's
# left chroma siting when it scales, the system ffmpeg (5.1) and decord's FFmpeg do not (VP9,
# which states no siting, scales identically), and the test clips are small, so 224 pixels
# magnify it; decord also resizes rotated videos with PIL. Luma, what Disparity compares, agrees.
SCALED_TOLERANCE = {"ffmpeg": 4.5, "decord": 6}


@pytest.mark.parametrize("clip", MATRIX)
def test_pyav_lists_the_frames_ffprobe_lists_in_process(clip, request, monkeypatch):
    path = request.getfixturevalue(clip)
    expected = read_stream_frames(path)
    ffprobe_runs = []

    def counted(path):
        ffprobe_runs.append(path)
        return read_stream_frames(path)

    monkeypatch.setattr("pipeline.decode.pyav_source.read_stream_frames", counted)
    with PyavSource(path) as source:
        listed = source._frames
        first, last = source.read([0, source.frame_count - 1])
    # AVI packets have no stored presentation times, and FFmpeg versions guess them differently.
    assert len(ffprobe_runs) == (1 if clip.endswith("_avi") else 0)
    for field in ("stream_index", "width", "height", "exact_pts", "seekable"):
        assert getattr(listed, field) == getattr(expected, field), field
    assert listed.format_start == pytest.approx(expected.format_start, abs=1e-6)
    np.testing.assert_allclose(listed.pts, expected.pts, atol=1e-6)
    np.testing.assert_array_equal(listed.keyframe, expected.keyframe)
    reference = all_frames(path)
    assert mean_abs_diff(np.stack([first, last]), reference[[0, -1]]).max() < 0.5


@pytest.mark.parametrize("clip", MATRIX)
def test_pyav_agrees_with_decord_and_ffmpeg(clip, request):
    path = request.getfixturevalue(clip)
    with open_source(path, "pyav") as source:
        indices = spread_indices(source.frame_count)
        size = scaled_size(source.width, source.height, 224)
        ours, times = source.read(indices), source.timestamps
        ours_scaled, ours_gray = source.read(indices, size), source.read_gray(indices, (64, 36))
    for backend in ("ffmpeg", "decord"):
        if backend == "decord" and clip in DECORD_REFUSES:
            with pytest.raises(VideoError):
                open_source(path, backend)
            continue
        with open_source(path, backend) as other:
            np.testing.assert_allclose(other.timestamps, times, atol=1e-4)
            assert mean_abs_diff(ours, other.read(indices)).max() < 2, backend
            assert mean_abs_diff(ours_scaled, other.read(indices, size)).max() < SCALED_TOLERANCE[backend], backend
            assert mean_abs_diff(ours_gray, other.read_gray(indices, (64, 36))).max() < 3, backend


@pytest.mark.parametrize("clip", ["mpeg4_avi", "vfr_mkv", "open_gop_mp4", "vp9_webm"])
def test_each_frame_read_alone(clip, request):
    """One frame per read: every frame is once the first and last of a seek, whatever the time
    base, the GOP structure (open GOPs) or hidden frames (VP9)."""
    path = request.getfixturevalue(clip)
    reference = all_frames(path)
    with open_source(path, "pyav") as source:
        frames = np.concatenate([source.read([i]) for i in range(source.frame_count)])
    assert mean_abs_diff(frames, reference).max() < 0.5


def test_read_gray_and_request_order(scene_clip):
    reference = all_frames(scene_clip)
    with open_source(scene_clip, "pyav") as source:
        gray = source.read_gray([120, 0, 60, 0], size=(32, 18))
        frames = source.read([120, 0, 120])
        empty = source.read([])
        with pytest.raises(IndexError):
            source.read([source.frame_count])
    with open_source(scene_clip, "ffmpeg") as other:
        other_gray = other.read_gray([120, 0, 60, 0], size=(32, 18))
    assert gray.shape == (4, 18, 32) and gray.dtype == np.uint8
    assert mean_abs_diff(gray, other_gray).max() < 3
    assert mean_abs_diff(gray[[0]], gray[[1]]).min() > 10  # different scenes, not one frame
    np.testing.assert_array_equal(gray[1], gray[3])
    assert mean_abs_diff(frames, reference[[120, 0, 120]]).max() < 0.5
    assert empty.shape == (0, 90, 160, 3)


def test_sources_return_frames_as_stored(rotated_mp4):
    with open_source(rotated_mp4, "pyav") as source:
        frames = source.read([0, 5])
    assert frames.shape == (2, 90, 160, 3)  # stored landscape; rotation is applied afterwards
    assert mean_abs_diff(frames, all_frames(rotated_mp4)[[0, 5]]).max() < 0.5


def test_extract_keyframes_with_pyav(vfr_mkv):
    result = extract_keyframes(vfr_mkv, Uniform(num_frames=6), video_id="v", backend="pyav", fallback=False)
    assert result.decoder == "pyav" and result.note is None
    assert len(result.jpegs) == 6


@pytest.mark.parametrize("clip", ["truncated_mp4", "garbage_mp4", "audio_only", "unknown_codec_mkv", "zero_byte_mp4"])
def test_broken_files_raise_video_error(clip, request):
    with pytest.raises(VideoError):
        with open_source(request.getfixturevalue(clip), "pyav") as source:
            source.read([0])


def test_truncated_mkv_gives_frames_before_the_cut_or_an_error(truncated_mkv):
    """Frames before the cut are the intact file's; the last frame the cut file holds is damaged,
    or, if it decodes, the intact file's frame at its time too."""
    with open_source(truncated_mkv, "pyav") as source:
        last = source.frame_count - 1
        early = source.read([0, last // 2])
        times = source.timestamps
        try:
            cut = source.read([last])
        except DamagedFrames as error:
            assert error.indices == [last]
        else:
            assert mean_abs_diff(cut, intact_frames_at(truncated_mkv, times[[last]]))[0] < 1.0
    assert (mean_abs_diff(early, intact_frames_at(truncated_mkv, times[[0, last // 2]])) < 1.0).all()


# ---- seeking -------------------------------------------------------------------------------------


def test_sparse_frames_late_in_a_long_gop_decode_little(h264_long_gop):
    """Keyframes at 0, 125 and 250: two frames near the end need one seek and the 50 packets from
    frame 250 on, not the 300 of the file."""
    reference = all_frames(h264_long_gop)
    with open_source(h264_long_gop, "pyav") as sparse:
        frames = sparse.read([280, 290])
        assert sparse.seeks == 1
        assert sparse.packets_decoded <= 45
    with open_source(h264_long_gop, "pyav") as full:
        full.read(list(range(full.frame_count)))
        assert full.packets_decoded >= 300
    assert sparse.packets_decoded < full.packets_decoded / 6
    assert mean_abs_diff(frames, reference[[280, 290]]).max() < 0.5


def test_one_pass_per_gop(h264_long_gop):
    with open_source(h264_long_gop, "pyav") as source:
        source.read([130, 140, 200])  # one GOP: one seek, decoded once
        assert source.seeks == 1
        source.read([10, 260])  # two GOPs apart: two seeks, about 11 + 11 frames
        assert source.seeks == 3
        assert source.packets_decoded <= 76 + 11 + 11 + 12


@pytest.mark.parametrize("clip", ["bframes_ts", "mpeg4_bframes_avi"])
def test_unindexed_or_untimed_files_are_decoded_from_the_start(clip, request):
    """MPEG-TS has no frame index (a seek lands near a keyframe); AVI with B-frames has no
    presentation times (its frames are counted): like the ffmpeg source, decode from the start."""
    path = request.getfixturevalue(clip)
    reference = all_frames(path)
    with open_source(path, "pyav") as source:
        indices = [len(reference) - 1, 40, 3]
        frames = source.read(indices)
        assert source.seeks == 0
        frames_again = source.read(indices)  # a second read starts from the first packet again
    assert mean_abs_diff(frames, reference[indices]).max() < 0.5
    np.testing.assert_array_equal(frames, frames_again)


@pytest.mark.parametrize("landing", ["early", "late"])
def test_frames_are_matched_by_time_wherever_a_seek_lands(h264_long_gop, monkeypatch, landing):
    """A seek that lands on an earlier keyframe costs time; one that lands past the keyframe is
    noticed and retried earlier. Neither shifts frames, as counting after a seek would."""
    real_seek = PyavSource._seek

    def misplaced_seek(self, ticks):
        shift = 6 / self._stream.time_base  # six seconds: more than a GOP of the clip
        real_seek(self, max(0, int(ticks - shift)) if landing == "early" else int(ticks + shift))

    monkeypatch.setattr(PyavSource, "_seek", misplaced_seek)
    reference = all_frames(h264_long_gop)
    indices = [140, 260, 20]
    with open_source(h264_long_gop, "pyav") as source:
        frames = source.read(indices)
    assert mean_abs_diff(frames, reference[indices]).max() < 0.5


def test_plan_passes():
    keyframe = np.zeros(1000, bool)
    keyframe[::50] = True  # 2 s GOPs at 25 fps

    def plan(wanted):
        return [(p.wanted, p.start) for p in plan_passes(wanted, keyframe, seek_overhead=5)]

    assert plan([10, 260, 510, 990]) == [([10], 0), ([260], 250), ([510], 500), ([990], 950)]
    assert plan([10, 20, 45, 260]) == [([10, 20, 45], 0), ([260], 250)]
    assert plan([48, 52]) == [([48, 52], 0)]  # the next keyframe is close: decode on through it
    assert plan(list(range(0, 1000, 3))) == [(list(range(0, 1000, 3)), 0)]  # dense: one pass
    # Every 12th frame: 156 is reached from 144 (12 frames) or by a seek to 150 (5 + 6): seek.
    # 108 from 96 (12) or from 100 (5 + 8): decode on through the keyframe.
    starts = [start for _, start in plan(list(range(0, 1000, 12)))]
    assert starts[:5] == [0, 150, 200, 250, 300] and 100 not in starts and 350 not in starts
    late_start = np.zeros(10, bool)
    late_start[4] = True  # no keyframe before frame 4: those frames are decoded from the start
    assert [(p.wanted, p.start) for p in plan_passes([2, 9], late_start, 0)] == [([2], None), ([9], 4)]


# ---- integrity -----------------------------------------------------------------------------------

GOP = 50  # the damage clip's GOP: 2 s at 25 fps, keyframes at 0, 50, ..., 250


@pytest.fixture(scope="module")
def clean_frames(gop2_clip) -> np.ndarray:
    return all_frames(gop2_clip)


def packet_bytes(path: str) -> list[tuple[int, int]]:
    """(offset, size) in the file of each frame's packet, by frame index."""
    times = read_stream_frames(path).pts
    with av.open(path) as container:
        stream = container.streams.video[0]
        where = {round(float(p.pts * stream.time_base), 6): (p.pos, p.size) for p in container.demux(stream) if p.size}
    return [where[round(float(t), 6)] for t in times]


def damaged_copy(source: str, target, change) -> str:
    data = bytearray(open(source, "rb").read())
    change(data, packet_bytes(source))
    target.write_bytes(bytes(data))
    return str(target)


@pytest.fixture(scope="module")
def damaged_middle(gop2_clip, video_dir) -> str:
    """1500 random bytes over the packets of frames 155 on, in the middle GOP (150-199)."""

    def overwrite(data, packets):
        offset, size = packets[155]
        start = offset + size // 2
        data[start : start + 1500] = np.random.default_rng(0).integers(0, 256, 1500, np.uint8).tobytes()

    return damaged_copy(gop2_clip, video_dir / "pyav_damaged_middle.mp4", overwrite)


@pytest.fixture(scope="module")
def damaged_scattered(gop2_clip, video_dir) -> str:
    """Single bytes inverted at 20 places in each of the GOPs 50-99 and 200-249."""

    def scatter(data, packets):
        rng = np.random.default_rng(1)
        for gop in (50, 200):
            spans = packets[gop : gop + GOP]
            for k in rng.choice(len(spans), 20, replace=False):
                offset, size = spans[k]
                data[offset + int(rng.integers(0, size))] ^= 0xFF

    return damaged_copy(gop2_clip, video_dir / "pyav_damaged_scattered.mp4", scatter)


@pytest.fixture(scope="module")
def broken_packet(gop2_clip, video_dir) -> str:
    """Frame 230's NAL length field says 4 GB: the decoder refuses the packet outright."""

    def break_length(data, packets):
        offset, _ = packets[230]
        data[offset : offset + 4] = b"\xff\xff\xff\xff"

    return damaged_copy(gop2_clip, video_dir / "pyav_broken_packet.mp4", break_length)


DAMAGED_GOPS = {"damaged_middle": {150}, "damaged_scattered": {50, 200}, "broken_packet": {200}}


def concealed_frames(path: str) -> dict[float, np.ndarray]:
    """What a decoder that conceals errors makes of every frame, by presentation time."""
    frames = {}
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
            except av.FFmpegError:
                continue
            for frame in decoded:
                frames[round(float(frame.pts * stream.time_base), 6)] = frame.to_ndarray(format="rgb24")
    return frames


@pytest.mark.parametrize("clip", list(DAMAGED_GOPS))
def test_frames_in_damaged_gops_are_reported_and_clean_gops_read_clean(clip, request, clean_frames):
    path = request.getfixturevalue(clip)
    with open_source(path, "pyav") as source:
        for gop in range(0, source.frame_count, GOP):
            indices = [gop + 3, gop + 24, gop + GOP - 1]  # sparse: each read seeks into the GOP
            if gop in DAMAGED_GOPS[clip]:
                with pytest.raises(DamagedFrames) as caught:
                    source.read(indices)
                assert caught.value.indices == indices
                assert caught.value.reason == "damaged_frames"
            else:
                assert mean_abs_diff(source.read(indices), clean_frames[indices]).max() < 0.5, gop


@pytest.mark.parametrize("clip", list(DAMAGED_GOPS))
def test_no_damaged_pixels_are_returned(clip, request, clean_frames):
    """Every frame read alone, and all frames at once: each frame either comes back as in the
    clean clip or is named as damaged; every frame a concealing decoder gets wrong is named, and
    nothing outside the damaged GOPs is."""
    path = request.getfixturevalue(clip)
    times = read_stream_frames(path).pts
    concealed = concealed_frames(path)
    wrong = {
        i
        for i, t in enumerate(times)
        if round(float(t), 6) not in concealed
        or mean_abs_diff(concealed[round(float(t), 6)][None], clean_frames[[i]])[0] > 0
    }
    in_damaged_gops = {i for g in DAMAGED_GOPS[clip] for i in range(g, g + GOP)}
    assert wrong and wrong <= in_damaged_gops  # the damage is real, and where it was put
    with open_source(path, "pyav") as source:
        for i in range(source.frame_count):
            try:
                frame = source.read([i])
            except DamagedFrames as error:
                assert error.indices == [i]
                assert i in in_damaged_gops
            else:
                assert mean_abs_diff(frame, clean_frames[[i]])[0] < 0.5, i
        with pytest.raises(DamagedFrames) as caught:
            source.read(list(range(source.frame_count)))
    assert wrong <= set(caught.value.indices) <= in_damaged_gops


def test_damage_message_keeps_the_decoders_words(damaged_middle, broken_packet):
    for path, words in ((damaged_middle, "h264: "), (broken_packet, "Invalid data found when processing input")):
        with open_source(path, "pyav") as source, pytest.raises(DamagedFrames) as caught:
            source.read([175, 230])
        message = caught.value.message
        assert words in message
        assert "\n" not in message and len(message) < 400
        assert str(caught.value).startswith("damaged_frames: frame")


def test_decoder_logging_is_left_as_found(damaged_middle, caplog):
    """PyAV's log settings are global: the source switches them for its reads only, and the
    decoder's messages go into the exception, not to Python's logging."""
    before = (av.logging.get_level(), av.logging.get_skip_repeated())
    with open_source(damaged_middle, "pyav") as source, pytest.raises(DamagedFrames):
        source.read([160])
    assert (av.logging.get_level(), av.logging.get_skip_repeated()) == before
    assert not [r for r in caplog.records if r.name.startswith("libav")]


def test_join_whole_never_cuts_a_message():
    lines = [
        "h264: error while decoding MB 16 10, bytestream -18",
        "h264: concealing 300 DC, 300 AC, 300 MV errors",
    ] * 2
    lines += [f"h264: message number {k} with\nsome detail" for k in range(40)]
    text = join_whole("frames 1, 2 decoded with errors", lines, limit=200)
    assert text.startswith("frames 1, 2 decoded with errors: h264: error while decoding MB 16 10, bytestream -18; ")
    assert "\n" not in text and text.count("error while decoding") == 1  # distinct messages only
    shown = text.split(": ", 1)[1].rsplit(" (+", 1)[0].split("; ")
    assert all(line in [" ".join(x.split()) for x in lines] for line in shown)  # each one whole
    assert text.endswith(f" (+{42 - len(shown)} more)") and len(text) < 220
    long = join_whole("frame 3", ["word " * 100], limit=60)
    assert long.endswith("word ...") and len(long) <= 64
    assert join_whole("frame 3", []) == "frame 3"
    assert damage_message(list(range(10)), ["x: y"]).startswith("frames 0, 1, 2, 3, 4, 5, 6, 7 and 2 more decoded")


def test_gray_of_damaged_frames_is_refused_too(damaged_middle, clean_frames):
    with open_source(damaged_middle, "pyav") as source:
        with pytest.raises(DamagedFrames):
            source.read_gray([170], size=(64, 36))
        gray = source.read_gray([20], size=(320, 180))
    assert mean_abs_diff(gray, to_gray(clean_frames[[20]])).max() < 0.5

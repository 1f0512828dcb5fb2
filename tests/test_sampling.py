"""Frame sampling strategies: exact indices, seeding, variable frame rates, and Disparity finding
the cuts of a real video through both decoders."""

import typing

import numpy as np
import pytest

from pipeline.decode.probe import VideoError
from pipeline.decode.sampling import (
    Disparity,
    Fps,
    MiddleSegment,
    Sampling,
    SegmentRandom,
    Uniform,
    Vlm,
    choose_frames,
)
from pipeline.decode.sources import open_source


def cfr(frame_count: int, fps: float = 25.0) -> np.ndarray:
    return np.arange(frame_count) / fps


def pick(sampling, frame_count: int, video_id: str = "video0", **kwargs) -> list[int]:
    return choose_frames(sampling, cfr(frame_count), video_id, **kwargs).indices


# ---- Uniform -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame_count", "expected"),
    [
        # floor((2k+1) * 100 / 24)
        (100, [4, 12, 20, 29, 37, 45, 54, 62, 70, 79, 87, 95]),
        (12, list(range(12))),
        (24, [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23]),
        (5, [0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4]),
        (1, [0] * 12),
    ],
)
def test_uniform_takes_segment_centres(frame_count, expected):
    selection = choose_frames(Uniform(num_frames=12), cfr(frame_count), "v")
    assert selection.indices == expected
    assert selection.repeated == (frame_count < 12)


# ---- SegmentRandom -------------------------------------------------------------------------------


def test_segment_random_takes_one_frame_per_segment():
    indices = pick(SegmentRandom(num_frames=12, seed=3), 100)
    bounds = [(k * 100 // 12, (k + 1) * 100 // 12) for k in range(12)]
    assert len(indices) == 12
    assert all(lo <= i < hi for i, (lo, hi) in zip(indices, bounds, strict=True))


def test_segment_random_is_fixed_by_seed_and_video():
    strategy = SegmentRandom(num_frames=12, seed=7)
    first = pick(strategy, 1000, "video42")
    assert pick(strategy, 1000, "video42") == first
    assert pick(SegmentRandom(num_frames=12, seed=8), 1000, "video42") != first
    assert pick(strategy, 1000, "video43") != first


def test_segment_random_short_video_repeats():
    # Segments shorter than a frame give their first frame: floor(5k / 12).
    selection = choose_frames(SegmentRandom(num_frames=12, seed=0), cfr(5), "v")
    assert selection.indices == [0, 0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4]
    assert selection.repeated


# ---- Fps -----------------------------------------------------------------------------------------


def test_fps_on_constant_rate():
    timestamps = np.arange(180) / 30  # 6 s
    assert choose_frames(Fps(rate=1.0), timestamps, "v").indices == [0, 30, 60, 90, 120, 150]
    assert choose_frames(Fps(rate=0.5), timestamps, "v").indices == [0, 60, 120]


def test_fps_uses_the_timestamps_of_variable_frame_rates():
    timestamps = np.array([0.0, 0.1, 0.5, 0.9, 1.0, 1.7, 2.05, 2.2])
    # t = 0, 1, 2: first frame at or after each.
    assert choose_frames(Fps(rate=1.0), timestamps, "v").indices == [0, 4, 6]
    # t = 0, 0.5, 1, 1.5, 2
    assert choose_frames(Fps(rate=2.0), timestamps, "v").indices == [0, 2, 4, 5, 6]


def test_fps_counts_from_the_first_frame():
    timestamps = 10.0 + np.array([0.0, 0.1, 0.5, 0.9, 1.0, 1.7, 2.05, 2.2])
    assert choose_frames(Fps(rate=1.0), timestamps, "v").indices == [0, 4, 6]


def test_fps_tolerates_millisecond_timestamps():
    timestamps = np.round(np.arange(30) / 30, 3)  # as Matroska stores them: 1/3 s reads 0.333
    assert choose_frames(Fps(rate=3.0), timestamps, "v").indices == [0, 10, 20]


def test_fps_max_frames_subsamples_uniformly():
    timestamps = np.arange(180) / 30  # six frames at 1 fps: 0, 30, ..., 150
    selection = choose_frames(Fps(rate=1.0, max_frames=2), timestamps, "v")
    assert selection.indices == [30, 120]  # centres of 2 segments of the 6


def test_fps_keeps_a_last_frame_that_falls_on_a_sampling_time():
    # 31 frames at 30 fps end exactly at t = 1 s, a sampling time at 1 fps.
    assert choose_frames(Fps(rate=1.0), np.arange(31) / 30, "v").indices == [0, 30]
    # Stored in milliseconds the last frame reads 0.333, a hair before t = 1/3 s: still that frame.
    assert choose_frames(Fps(rate=3.0), np.round(np.arange(11) / 30, 3), "v").indices == [0, 10]


def test_fps_faster_than_the_video_repeats():
    timestamps = np.arange(10) / 5  # 5 fps, 2 s
    selection = choose_frames(Fps(rate=10.0), timestamps, "v")
    assert selection.repeated
    assert selection.indices[:4] == [0, 1, 1, 2]


# ---- Vlm -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame_count", "expected"),
    [
        # np.linspace(0, 99, 8) = 0, 14.1, 28.3, 42.4, 56.6, 70.7, 84.9, 99 -> truncated
        (100, [0, 14, 28, 42, 56, 70, 84, 99]),
        (8, list(range(8))),
        (5, [0, 0, 1, 1, 2, 2, 3, 4]),
    ],
)
def test_vlm_samples_like_llava_next_video(frame_count, expected):
    selection = choose_frames(Vlm(num_frames=8), cfr(frame_count), "v")
    assert selection.indices == expected
    assert selection.repeated == (frame_count < 8)


# ---- MiddleSegment -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("segments", "frame_count", "lo", "hi"),
    # Segment num_segments // 2 - 1 also for odd counts (docs/decoding.md): the 2nd of 5, the 1st of 3.
    [(12, 120, 50, 60), (64, 640, 310, 320), (12, 1000, 416, 500), (5, 1000, 200, 400), (3, 300, 0, 100)],
)
def test_middle_segment_picks_from_the_middle_segment(segments, frame_count, lo, hi):
    for video in ("a", "b", "c", "d", "e", "f", "g", "h"):
        (index,) = pick(MiddleSegment(num_segments=segments, seed=0), frame_count, video)
        assert lo <= index < hi


def test_middle_segment_is_seeded():
    strategy = MiddleSegment(num_segments=12, seed=1)
    assert pick(strategy, 12000, "x") == pick(strategy, 12000, "x")
    picks = {pick(MiddleSegment(num_segments=12, seed=s), 12000, "x")[0] for s in range(5)}
    assert len(picks) > 1


def test_middle_segment_differs_between_videos():
    # Seeded per video, not only per run: otherwise every video of a dataset gives the same frame.
    picks = {pick(MiddleSegment(num_segments=12, seed=0), 12000, video)[0] for video in "abcdef"}
    assert len(picks) > 1


def test_seeded_frames_never_change_between_runs_or_releases():
    # A resumed or repeated run must pick the frames its earlier shards picked: these are the
    # frames sha256(f"{seed}\0{video_id}") gives, read little-endian, and must stay so.
    timestamps = cfr(1000)
    assert choose_frames(SegmentRandom(num_frames=8, seed=0), timestamps, "video0").indices == [
        51, 187, 268, 397, 528, 703, 873, 986]
    assert choose_frames(SegmentRandom(num_frames=8, seed=1), timestamps, "msrvtt/video7010").indices == [
        17, 226, 373, 401, 507, 692, 804, 929]
    assert [choose_frames(MiddleSegment(num_segments=12, seed=0), timestamps, v).indices for v in "abc"] == [
        [418], [484], [441]]


def test_middle_segment_short_video():
    # Segment 5 of 12 over 5 frames starts at floor(25 / 12) = 2 and is shorter than a frame.
    selection = choose_frames(MiddleSegment(num_segments=12), cfr(5), "v")
    assert selection.indices == [2]
    assert not selection.repeated


# ---- Disparity -----------------------------------------------------------------------------------


def scenes_reader(frame_count: int, cuts: list[int]):
    """read_gray over a fake video: flat grey scenes that change at `cuts`."""
    levels = np.searchsorted(cuts, np.arange(frame_count), side="right") * 60

    def read_gray(indices):
        return np.stack([np.full((9, 16), levels[i], np.uint8) for i in indices])

    return read_gray


def test_disparity_keeps_first_frame_and_cuts():
    # 10 fps, 10 s; candidates at 2 fps are frames 0, 5, 10, ...; cuts after 23 and 61.
    read_gray = scenes_reader(100, [23, 61])
    timestamps = np.arange(100) / 10
    strategy = Disparity(num_frames=3, candidate_fps=2.0, min_gap_seconds=0.5)
    assert choose_frames(strategy, timestamps, "v", read_gray).indices == [0, 25, 65]


def test_disparity_fills_with_uniform_frames():
    read_gray = scenes_reader(100, [23, 61])
    timestamps = np.arange(100) / 10
    strategy = Disparity(num_frames=5, candidate_fps=2.0, min_gap_seconds=0.5)
    # Change points 0, 25, 65, then uniform centres 10, 30 (of 10, 30, 50, 70, 90).
    assert choose_frames(strategy, timestamps, "v", read_gray).indices == [0, 10, 25, 30, 65]


def test_disparity_respects_min_gap():
    # Cuts after 23 and 27 make candidates 25 and 30 (0.5 s apart) both change points.
    read_gray = scenes_reader(100, [23, 27, 61])
    timestamps = np.arange(100) / 10
    close = Disparity(num_frames=4, candidate_fps=2.0, min_gap_seconds=0.4)
    assert choose_frames(close, timestamps, "v", read_gray).indices == [0, 25, 30, 65]
    apart = Disparity(num_frames=3, candidate_fps=2.0, min_gap_seconds=1.0)
    picked = choose_frames(apart, timestamps, "v", read_gray).indices
    assert picked[0] == 0 and picked[-1] == 65
    assert picked[1] in (25, 30)


def test_disparity_short_video_repeats():
    no_gap = Disparity(num_frames=8, min_gap_seconds=0)
    selection = choose_frames(no_gap, cfr(3), "v", scenes_reader(3, []))
    assert selection.indices == [0, 0, 0, 1, 1, 2, 2, 2]
    assert selection.repeated
    # Three frames 1/25 s apart hold one frame 0.5 s from every other: it repeats, no gap is broken.
    assert choose_frames(Disparity(num_frames=8), cfr(3), "v", scenes_reader(3, [])).indices == [0] * 8


def test_disparity_reads_no_frames_when_the_video_has_no_more_than_asked():
    # Every frame is kept anyway, so decoding grey candidates would be wasted work.
    def read_gray_must_not_be_called(indices):
        raise AssertionError(f"read_gray called for {indices}")

    no_gap = Disparity(num_frames=8, candidate_fps=25.0, min_gap_seconds=0)
    selection = choose_frames(no_gap, cfr(8), "v", read_gray_must_not_be_called)
    assert selection.indices == list(range(8)) and not selection.repeated


def _gaps(indices: list[int], timestamps: np.ndarray) -> list[float]:
    times = sorted(set(float(timestamps[i]) for i in indices))
    return [b - a for a, b in zip(times, times[1:])]


@pytest.mark.parametrize("cuts", [[], [23, 24, 25, 26], [3, 61, 62, 63, 97]])
def test_disparity_fill_in_frames_honour_the_gap(cuts):
    """Uniform fill-in frames used to land next to change points (0.04 s apart on a real clip)."""
    timestamps = np.arange(100) / 25  # 4 s at 25 fps
    strategy = Disparity(num_frames=6, candidate_fps=5.0, min_gap_seconds=0.5)
    selection = choose_frames(strategy, timestamps, "v", scenes_reader(100, cuts))
    assert len(selection.indices) == 6 and len(set(selection.indices)) == 6  # 4 s holds 6 frames 0.5 s apart
    assert min(_gaps(selection.indices, timestamps)) >= 0.5 - 1e-9


def test_disparity_too_short_for_the_gap_repeats_instead():
    timestamps = np.arange(30) / 25  # 1.2 s: at most 3 frames 0.5 s apart
    selection = choose_frames(Disparity(num_frames=8, min_gap_seconds=0.5), timestamps, "v",
                              scenes_reader(30, [10, 11, 12]))
    assert len(selection.indices) == 8 and selection.repeated
    assert len(set(selection.indices)) == 3 and min(_gaps(selection.indices, timestamps)) >= 0.5 - 1e-9


def test_disparity_keeps_the_earliest_of_equally_strong_cuts():
    # Three cuts of the same strength in 20 s, room for two after the first frame: the earlier
    # two are kept, whatever order NumPy's default (unstable) sort would give the tie.
    strategy = Disparity(num_frames=3, candidate_fps=2.0, min_gap_seconds=0.5)
    read_gray = scenes_reader(200, [52, 102, 152])
    assert choose_frames(strategy, np.arange(200) / 10, "v", read_gray).indices == [0, 55, 105]


def test_disparity_fills_the_rest_with_the_frames_farthest_from_those_kept():
    # 4 s at 25 fps, no cut, room for 5 frames 1 s apart: the first frame; the uniform centres
    # 1.2 s and 2.8 s (the others are too close); then the last frame, 3.96 s, the farthest from
    # those. Nothing else is 1 s from all four, so one of them repeats.
    strategy = Disparity(num_frames=5, candidate_fps=5.0, min_gap_seconds=1.0)
    selection = choose_frames(strategy, cfr(100), "v", scenes_reader(100, []))
    assert selection.indices == [0, 30, 70, 70, 99] and selection.repeated


def test_disparity_gap_allows_timestamps_half_a_millisecond_short():
    # Timestamps stored in milliseconds come up to 0.5 ms early (the same slack as Fps): a cut
    # at 0.4995 s is min_gap_seconds = 0.5 after the first frame, and is kept.
    timestamps = np.array([0.0, 0.4995, 1.0, 1.5])
    strategy = Disparity(num_frames=2, candidate_fps=2.0, min_gap_seconds=0.5)
    assert choose_frames(strategy, timestamps, "v", scenes_reader(4, [1])).indices == [0, 1]
    # A 1 s clip whose last frame reads 0.9995 holds two frames 1 s apart: the first and the last.
    timestamps = np.array([0.0, 0.25, 0.5, 0.75, 0.9995])
    strategy = Disparity(num_frames=2, candidate_fps=4.0, min_gap_seconds=1.0)
    assert choose_frames(strategy, timestamps, "v", scenes_reader(5, [])).indices == [0, 4]


def test_disparity_needs_frames():
    with pytest.raises(ValueError, match="^Disparity sampling needs read_gray"):
        choose_frames(Disparity(), cfr(100), "v")


@pytest.mark.parametrize("backend", ["decord", "ffmpeg"])
def test_disparity_finds_the_cuts_of_a_real_video(scene_clip, backend):
    cuts = [50, 100]  # the fixture's three 2 s scenes at 25 fps
    candidate_spacing = 25 / 2.0  # frames between candidates at 2 fps
    with open_source(scene_clip, backend) as source:

        def read_gray(indices):
            return source.read_gray(indices, size=(32, 18))

        strategy = Disparity(num_frames=3, candidate_fps=2.0)
        picked = choose_frames(strategy, source.timestamps, "v", read_gray).indices
    assert picked[0] == 0
    for found, cut in zip(picked[1:], cuts, strict=True):
        assert cut <= found < cut + candidate_spacing


# ---- common rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "strategy",
    [Uniform(), SegmentRandom(), Fps(), Vlm(), MiddleSegment(), Disparity()],
)
def test_no_frames_is_a_decode_error(strategy):
    with pytest.raises(VideoError, match="^decode_error: the video has no frames to sample$") as caught:
        choose_frames(strategy, np.array([]), "v", read_gray=lambda i: np.zeros((len(i), 2, 2)))
    assert caught.value.reason == "decode_error"


def test_a_config_that_is_not_a_strategy_is_refused_by_name():
    # E.g. the YAML mapping passed on without the config loader: a TypeError naming it, not a crash later.
    with pytest.raises(TypeError, match="^unknown sampling strategy: {'strategy': 'uniform'"):
        choose_frames({"strategy": "uniform", "num_frames": 8}, cfr(10), "v")


def test_strategies_are_named_by_their_first_field():
    members = typing.get_args(Sampling)
    names = [m.__dataclass_fields__["strategy"].default for m in members]
    assert names == ["uniform", "segment_random", "fps", "vlm", "disparity", "middle_segment"]
    for member in members:
        assert next(iter(member.__dataclass_fields__)) == "strategy"


@pytest.mark.parametrize(
    "make",
    [
        lambda: Uniform(num_frames=0),
        lambda: Fps(rate=0),
        lambda: Fps(max_frames=0),
        lambda: MiddleSegment(num_segments=1),
        lambda: Disparity(candidate_fps=-1),
        lambda: Uniform(strategy="fps"),
    ],
)
def test_bad_parameters_are_refused(make):
    with pytest.raises(ValueError):
        make()


def test_a_strategy_named_wrong_says_which_name_it_needs():
    with pytest.raises(ValueError, match="^strategy must be 'uniform', got 'fps'$"):
        Uniform(strategy="fps")


def test_parameters_are_keyword_only():
    with pytest.raises(TypeError):
        Uniform(8)  # would silently set `strategy` if positional


def test_disparity_keeps_a_cut_in_a_video_with_no_more_frames_than_asked():
    # 10 frames at 10 fps, a cut at frame 7, room for frames 0.5 s apart: the cut is a change
    # point and comes before the uniform frames, as in a longer video. 1.0 s (11 frames) holds
    # three frames 0.5 s apart, 0, 5 and 10; keeping the cut at 0.7 s would leave room for two.
    strategy = Disparity(num_frames=10, candidate_fps=10.0, min_gap_seconds=0.5)
    for frames, expected in ((10, [0, 7]), (11, [0, 5, 10])):
        selection = choose_frames(strategy, np.arange(frames) / 10, "v", scenes_reader(frames, [7]))
        assert sorted(set(selection.indices)) == expected and selection.repeated, frames

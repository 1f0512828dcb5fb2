"""MMI key images: Disparity sampling keeps change points, spreads its frames at least
min_gap_seconds apart and repeats frames only when the video is too short to hold N that far
apart; the `key_images` stage samples that way by default."""

import numpy as np
import pytest

from pipeline.decode.keyframes import extract_keyframes
from pipeline.decode.sampling import Disparity, choose_frames
from pipeline.stages import STAGES, keyframes
from pipeline.store.schema import KEYFRAMES

# Timestamps may come half a millisecond short of the gap (Matroska's milliseconds), as in sampling.py.
SLACK = 0.0005


def scenes_reader(frame_count: int, cuts: list[int], steps: list[int] | None = None):
    """read_gray over a fake video: flat grey scenes; frame cuts[k] starts a new scene whose grey
    level is steps[k] (default 60) above the one before."""
    steps = steps or [60] * len(cuts)
    levels = np.concatenate([[0], np.cumsum(steps)])[np.searchsorted(cuts, np.arange(frame_count), side="right")]

    def read_gray(indices):
        return np.stack([np.full((9, 16), levels[i], np.uint8) for i in indices])

    return read_gray


def most_frames_apart(timestamps: np.ndarray, gap: float) -> int:
    """The most frames pairwise at least `gap` apart, by dynamic programming (not the greedy packing
    the code uses): the longest chain ending at each frame."""
    longest = np.ones(len(timestamps), dtype=int)
    for j in range(len(timestamps)):
        earlier = timestamps[:j] <= timestamps[j] - gap
        if earlier.any():
            longest[j] = 1 + longest[:j][earlier].max()
    return int(longest.max())


def cfr(seconds: float, fps: float = 25.0) -> np.ndarray:
    return np.arange(round(seconds * fps)) / fps


def variable_rate(seconds: float) -> np.ndarray:
    """Frame intervals of 1/60 to 1/10 s at random (seeded), like a phone clip or a VFR screen capture."""
    steps = np.random.default_rng(7).uniform(1 / 60, 1 / 10, size=int(seconds * 60))
    times = np.concatenate([[0.0], np.cumsum(steps)])
    return times[times <= seconds]


def assert_spread(indices: list[int], timestamps: np.ndarray, n: int, min_gap: float) -> None:
    """N ascending picks, starting at the first frame, whose distinct frames are min_gap apart."""
    assert len(indices) == n and indices == sorted(indices) and indices[0] == 0
    distinct = sorted(set(indices))
    gaps = np.diff(timestamps[distinct])
    assert (gaps >= min_gap - SLACK).all(), f"frames {distinct} closer than {min_gap} s"


def assert_found(indices: list[int], timestamps: np.ndarray, cuts: list[int], candidate_fps: float) -> None:
    """Each cut is picked as the first candidate at or after it, less than a candidate interval later."""
    for cut in cuts:
        found = [i for i in indices if i >= cut and timestamps[i] - timestamps[cut] < 1 / candidate_fps - SLACK]
        assert found, f"no pick at the cut at frame {cut}: {indices}"


# ---- the reported case ---------------------------------------------------------------------------


def test_a_6s_clip_with_six_change_points_gets_8_distinct_frames():
    # 150 frames at 25 fps. Candidates at 2 fps are frames 0, 13, 25, 38, ...; changes at every
    # other one (13, 38, ..., 138). Keeping all six change points left no room for an eighth frame
    # 0.5 s from the others, and the old code repeated frame 63: [0, 13, 38, 63, 63, 88, 113, 138].
    timestamps = cfr(6)
    cuts = [13, 38, 63, 88, 113, 138]
    selection = choose_frames(Disparity(num_frames=8), timestamps, "v", scenes_reader(150, cuts))
    assert_spread(selection.indices, timestamps, 8, 0.5)
    assert len(set(selection.indices)) == 8 and not selection.repeated
    # Equal changes rank earliest first; the last (5.52 s) would leave no room for the rest.
    assert {0, 13, 38, 63, 88, 113} <= set(selection.indices)


# ---- lengths -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timestamps", "cuts"),
    [
        (cfr(0.3), [4]),  # 8 frames: one frame 0.5 s from every other
        (cfr(2), [25]),  # 1.96 s: four frames 0.5 s apart
        (cfr(6), [50, 100]),  # the scene clip's cuts
        (cfr(6), [10, 30, 50, 70, 90, 110, 130]),  # more cuts than fit with the first frame
        (cfr(60), [250, 700, 701, 1100]),  # two cuts one frame apart: one of them
        (cfr(60, fps=29.97), [3, 400, 1500]),
        (variable_rate(10), [40, 100, 150]),  # 170 frames
        (variable_rate(1.7), [12]),  # 29 frames
    ],
    ids=["0.3s", "2s", "6s", "6s-crowded", "60s", "60s-ntsc", "vfr-10s", "vfr-1.7s"],
)
@pytest.mark.parametrize("num_frames", [8, 3])
def test_distinct_frames_as_many_as_fit(timestamps, cuts, num_frames):
    strategy = Disparity(num_frames=num_frames)
    read_gray = scenes_reader(len(timestamps), cuts)
    selection = choose_frames(strategy, timestamps, "v", read_gray)
    assert_spread(selection.indices, timestamps, num_frames, 0.5)
    fit = min(num_frames, most_frames_apart(timestamps, 0.5 - SLACK))
    assert len(set(selection.indices)) == fit
    assert selection.repeated == (fit < num_frames)
    assert choose_frames(strategy, timestamps, "v", read_gray) == selection  # deterministic


@pytest.mark.parametrize(
    ("timestamps", "cuts"),
    [(cfr(6), [50, 100]), (cfr(60), [250, 700, 1100, 1400]), (variable_rate(10), [40, 100, 150])],
    ids=["6s", "60s", "vfr-10s"],
)
def test_cuts_are_among_the_picks(timestamps, cuts):
    selection = choose_frames(Disparity(num_frames=8), timestamps, "v", scenes_reader(len(timestamps), cuts))
    assert_found(selection.indices, timestamps, cuts, candidate_fps=2.0)


def test_a_clip_with_no_change_gets_the_first_frame_and_uniform_frames():
    # No candidate differs from the one before, so none is a change point: the first frame, then
    # the centres of 8 equal segments (9, 28, ..., 140) but 9, which is 0.36 s from the first.
    selection = choose_frames(Disparity(num_frames=8), cfr(6), "v", scenes_reader(150, []))
    assert selection.indices == [0, 28, 46, 65, 84, 103, 121, 140]


def test_the_stronger_change_is_kept_when_only_one_fits():
    # 10 s at 25 fps, room for the first frame and one more: the larger of two changes.
    timestamps = cfr(10)
    read_gray = scenes_reader(250, [75, 175], steps=[20, 90])
    assert choose_frames(Disparity(num_frames=2), timestamps, "v", read_gray).indices == [0, 175]
    read_gray = scenes_reader(250, [75, 175], steps=[90, 20])
    assert choose_frames(Disparity(num_frames=2), timestamps, "v", read_gray).indices == [0, 75]


@pytest.mark.parametrize(("frame_count", "distinct"), [(91, 7), (92, 8)])
def test_a_clip_just_long_enough_for_n_frames_does_not_repeat(frame_count, distinct):
    # At 25 fps 0.5 s is 12.5 frames, so frames that far apart are 13 apart: 8 of them need frame
    # 91 (3.64 s), the last of 92 frames; 91 frames hold 7.
    timestamps = np.arange(frame_count) / 25
    selection = choose_frames(Disparity(num_frames=8), timestamps, "v", scenes_reader(frame_count, [30, 60]))
    assert_spread(selection.indices, timestamps, 8, 0.5)
    assert len(set(selection.indices)) == distinct and selection.repeated == (distinct < 8)


def test_a_short_clip_uses_every_distinct_frame_it_holds_about_equally():
    # 2 s at 25 fps holds four frames 0.5 s apart (0, 0.5, 1.0, 1.5): each twice, none dropped.
    timestamps = cfr(2)
    selection = choose_frames(Disparity(num_frames=8), timestamps, "v", scenes_reader(50, []))
    assert selection.repeated
    assert sorted(selection.indices.count(i) for i in set(selection.indices)) == [2, 2, 2, 2]


def test_a_cut_that_leaves_no_room_gives_way_to_distinct_frames():
    # 1 s at 10 fps holds three frames 0.5 s apart: only frames 0, 5 and 10. A cut at 0.7 s fits
    # beside the first frame but leaves no room for a third, so it is not kept.
    timestamps = np.arange(11) / 10
    strategy = Disparity(num_frames=10, candidate_fps=10.0, min_gap_seconds=0.5)
    selection = choose_frames(strategy, timestamps, "v", scenes_reader(11, [7]))
    assert sorted(set(selection.indices)) == [0, 5, 10] and selection.repeated


def test_frames_half_a_millisecond_short_of_the_gap_count_as_apart():
    # Millisecond timestamps (Matroska) come up to 0.5 ms early: these four frames are 0.5 s apart.
    timestamps = np.array([0.0, 0.4995, 1.0, 1.4995])
    selection = choose_frames(Disparity(num_frames=4), timestamps, "v", scenes_reader(4, []))
    assert selection.indices == [0, 1, 2, 3] and not selection.repeated


def test_no_gap_takes_distinct_frames_up_to_the_frame_count():
    timestamps = cfr(6)
    selection = choose_frames(Disparity(num_frames=8, min_gap_seconds=0), timestamps, "v", scenes_reader(150, [50]))
    assert len(set(selection.indices)) == 8 and not selection.repeated and 50 in selection.indices
    short = choose_frames(Disparity(num_frames=8, min_gap_seconds=0), cfr(0.2), "v", scenes_reader(5, [2]))
    assert sorted(set(short.indices)) == [0, 1, 2, 3, 4] and short.repeated


# ---- the real decode path ------------------------------------------------------------------------


def test_extract_keyframes_finds_the_scene_cuts_in_8_distinct_frames(scene_clip):
    # Three 2 s scenes at 25 fps with cuts at frames 50 and 100 (tests/conftest.py): 6 s, 150 frames.
    result = extract_keyframes(scene_clip, Disparity(num_frames=8), video_id="v", short_side=64)
    assert len(result.indices) == 8 and len(set(result.indices)) == 8 and not result.repeated
    assert result.indices == sorted(result.indices) and result.indices[0] == 0
    assert np.diff(result.timestamps).min() >= 0.5 - SLACK
    assert_found(result.indices, np.arange(150) / 25, [50, 100], candidate_fps=2.0)


# ---- the stage -----------------------------------------------------------------------------------


def test_key_images_is_a_keyframes_stage_sampling_by_disparity():
    stage = STAGES["key_images"]
    assert stage.config_type().sampling == Disparity(num_frames=8)
    assert stage.schema is KEYFRAMES and stage.inputs == keyframes.STAGE.inputs
    assert stage.steps == keyframes.STAGE.steps
    assert list(STAGES).index("probe") < list(STAGES).index("key_images")


def test_next_apart_settles_on_the_apart_test_where_the_sum_rounds():
    # (a + gap) - a rounds below gap for this a: searchsorted on a + gap lands on a frame that
    # `_apart` does not count as a gap away, and the next frame is the answer.
    from pipeline.decode.sampling import _apart, _next_apart

    a, gap = 2.697867137638703, 0.5 - 0.0005
    timestamps = np.array([0.0, a, a + gap, a + gap + 0.01, a + 1.0])
    assert not _apart(timestamps, 1, 2, gap) and _apart(timestamps, 1, 3, gap)
    assert _next_apart(timestamps, 1, gap) == 3


def test_the_farthest_frame_is_added_and_a_tie_goes_to_the_earlier():
    from pipeline.decode.sampling import _add_farthest

    timestamps = np.arange(101) / 10  # 10 s at 10 fps
    chosen = [50]

    def keep(i: int) -> bool:
        chosen.append(i)
        return True

    _add_farthest(chosen, timestamps, 3, 0.4995, keep)
    assert chosen == [50, 0, 100]  # frames 0 and 100 are both 5 s from 5 s: the earlier first

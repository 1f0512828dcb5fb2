"""A stored frame is a clean frame: damaged copies of a real clip under every strategy and backend.

Two damaged copies of a 12 s H.264 clip (2 s GOPs): 1500 random bytes over the middle GOP, and
single bytes inverted all over two GOPs. Whatever the strategy, the backend and the damage
policy, each video either fails (as `damaged_frames`, or `decode_error` where the decoder gives
up) or every frame it stores is the clean clip's frame at the index it records.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_decode import all_frames, as_jpeg, decode_jpegs, mean_abs_diff
from test_pyav import GOP, damaged_copy

from pipeline.decode.keyframes import extract_keyframes
from pipeline.decode.probe import VideoError
from pipeline.decode.sampling import Disparity, Fps, MiddleSegment, SegmentRandom, Uniform, Vlm

STRATEGIES = [Uniform(num_frames=12), SegmentRandom(num_frames=12), Fps(rate=2.0), Vlm(num_frames=8),
              Disparity(num_frames=6, min_gap_seconds=0.5), MiddleSegment(num_segments=4)]
BACKENDS = ["pyav", "decord", "ffmpeg"]

# A concealed frame differs from the clean one by tens of levels; the same frame through two
# decoders and a JPEG round trip by under one.
GROSS = 4.0


@pytest.fixture(scope="module")
def clean_reference(gop2_clip) -> np.ndarray:
    return as_jpeg(all_frames(gop2_clip))


@pytest.fixture(scope="module")
def damaged(gop2_clip, video_dir) -> dict[str, str]:
    def middle(data, packets):
        offset, size = packets[5 * GOP // 2 + 5]
        data[offset + size // 2 : offset + size // 2 + 1500] = np.random.default_rng(0).integers(
            0, 256, 1500, np.uint8).tobytes()

    def scattered(data, packets):
        rng = np.random.default_rng(1)
        for gop in (GOP, 4 * GOP):
            spans = packets[gop : gop + GOP]
            for k in rng.choice(len(spans), 20, replace=False):
                offset, size = spans[k]
                data[offset + int(rng.integers(0, size))] ^= 0xFF

    return {"middle": damaged_copy(gop2_clip, video_dir / "damaged_middle.mp4", middle),
            "scattered": damaged_copy(gop2_clip, video_dir / "damaged_scattered.mp4", scattered)}


@pytest.mark.parametrize("policy", ["fail", "nearest_clean"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("damage", ["middle", "scattered"])
def test_no_damaged_pixels_are_ever_stored(damaged, clean_reference, damage, backend, policy):
    outcomes = []
    for strategy in STRATEGIES:
        try:
            result = extract_keyframes(damaged[damage], strategy, video_id="v", backend=backend, fallback=False,
                                       short_side=0, damaged=policy)
        except VideoError as error:
            assert error.reason in ("damaged_frames", "decode_error"), error
            assert "\n" not in error.message
            outcomes.append(error.reason)
            continue
        stored = decode_jpegs(result.jpegs)
        differences = mean_abs_diff(stored, clean_reference[result.indices])
        assert differences.max() < GROSS, (strategy.strategy, result.indices, differences.round(1).tolist())
        outcomes.append("replaced" if result.note and "replaced" in result.note else "clean")
    # The damage is found, not dodged: the strategies that take frames from every GOP meet it.
    assert {"damaged_frames", "decode_error", "replaced"} & set(outcomes), outcomes
    if policy == "nearest_clean" and backend == "pyav":
        assert "replaced" in outcomes, outcomes


def test_nearest_clean_records_the_index_it_used(damaged, clean_reference):
    result = extract_keyframes(damaged["middle"], Uniform(num_frames=12), video_id="v", short_side=0,
                               damaged="nearest_clean")
    asked = Uniform(num_frames=12)
    from pipeline.decode.sampling import choose_frames

    planned = choose_frames(asked, np.arange(len(clean_reference)) / 25, "v").indices
    assert result.indices != planned and len(result.indices) == len(planned)
    assert result.note.startswith("damaged frames replaced by the nearest clean ones (")
    assert mean_abs_diff(decode_jpegs(result.jpegs), clean_reference[result.indices]).max() < GROSS


def test_damage_is_not_retried_on_another_backend(damaged):
    with pytest.raises(VideoError) as caught:
        extract_keyframes(damaged["middle"], Uniform(num_frames=12), video_id="v")  # pyav, with fallback
    assert caught.value.reason == "damaged_frames"
    assert "decoded with errors" in caught.value.message

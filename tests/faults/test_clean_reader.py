"""Damaged frames under the damage policies, with a scripted frame source (no decoder, no Ray).

`ScriptedSource` is a test double of the FrameSource protocol: frame i is a known picture, and
reading a damaged index raises DamagedFrames as a real source does, naming the damaged frames
(`per_frame=True`, like PyAV) or condemning the whole read (`per_frame=False`, like decord and
the ffmpeg source, whose decoder log names no frame). `extract_keyframes` gets it in place of
`open_source`, so every index, pixel, note and error below is exact.
"""

from __future__ import annotations

import io
import os
import time

import numpy as np
import pytest
from PIL import Image

from pipeline.decode import keyframes as keyframes_module
from pipeline.decode.decoder_log import damage_message
from pipeline.decode.errors import DamagedFrames, VideoError
from pipeline.decode.frames import to_gray
from pipeline.decode.keyframes import _CleanReader, _gray_size, extract_keyframes
from pipeline.decode.sampling import Disparity, SegmentRandom, Uniform, choose_frames
from pipeline.demo import synth

ERROR = "h264: error while decoding MB 16 10, bytestream -18"


def picture(index: int, width: int, height: int) -> np.ndarray:
    """Frame `index` at a size: a gradient that differs per frame, with a white top-left corner
    (it shows which way a stored frame was turned)."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([(x * 4 + index * 10) % 256, (y * 4 + index * 3) % 256, np.full_like(x, index % 256)], -1)
    pixels[: height // 4, : width // 4] = 255
    return pixels.astype(np.uint8)


class ScriptedSource:
    """A FrameSource test double: known frames, scripted damage, every read noted.

    `damaged` frames decode with errors. With `gop` (frames per GOP) the damage spreads as in a
    real decoder: a frame decoded after a damaged one of its GOP is damaged too, and the source
    says where GOPs start (`gop_start`), as the decord and ffmpeg sources do."""

    def __init__(self, frame_count: int = 40, damaged=(), per_frame: bool = True, name: str = "pyav",
                 width: int = 64, height: int = 48, fps: float = 30.0, fails: Exception | None = None,
                 gop: int | None = None, error: str = ERROR, seconds_per_read: float = 0.0):
        self.name, self.version = name, "scripted-1"
        self.frame_count = frame_count
        self.timestamps = np.arange(frame_count) / fps
        self.width, self.height = width, height
        self.damaged, self.per_frame, self.fails = set(damaged), per_frame, fails
        self.gop, self.error, self.seconds_per_read = gop, error, seconds_per_read
        if gop is not None:
            self.gop_start = np.arange(frame_count) // gop * gop
        self.reads: list[tuple[list[int], tuple | None, bool]] = []  # (indices, size, grey)
        self.closed = False

    def affected(self, indices) -> list[int]:
        if self.gop is None:
            return sorted(self.damaged.intersection(indices))
        return sorted(i for i in set(indices) if self.damaged.intersection(range(i // self.gop * self.gop, i + 1)))

    def read(self, indices: list[int], size=None) -> np.ndarray:
        return self._read(indices, size, gray=False)

    def read_gray(self, indices: list[int], size) -> np.ndarray:
        return self._read(indices, size, gray=True)

    def _read(self, indices, size, gray):
        self.reads.append((list(indices), size, gray))
        time.sleep(self.seconds_per_read)
        if self.fails is not None:
            raise self.fails
        hit = self.affected(indices)
        if hit:
            named = hit if self.per_frame else list(indices)
            raise DamagedFrames(named, damage_message(hit, [self.error]), per_frame=self.per_frame)
        width, height = size or (self.width, self.height)
        frames = np.stack([picture(i, width, height) for i in indices])
        return to_gray(frames) if gray else frames

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> ScriptedSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def frames_of(indices, width=64, height=48) -> list[np.ndarray]:
    return [picture(i, width, height) for i in indices]


def jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# ---- _CleanReader --------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["fail", "nearest_clean"])
def test_clean_frames_are_read_once_each_as_they_are(policy):
    source = ScriptedSource()
    frames = _CleanReader(source, policy).read([9, 2, 9], size=(32, 24))
    assert source.reads == [([2, 9], (32, 24), False)]
    assert frames.used == {2: 2, 9: 9} and frames.note() is None
    for index in (2, 9):
        np.testing.assert_array_equal(frames.pixels[index], picture(index, 32, 24))


def test_fail_policy_raises_the_sources_damage_without_retrying():
    source = ScriptedSource(damaged={5})
    with pytest.raises(DamagedFrames) as raised:
        _CleanReader(source, "fail").read([2, 5, 9], size=None)
    assert raised.value.reason == "damaged_frames" and raised.value.indices == [5]
    assert raised.value.message == f"frame 5 decoded with errors: {ERROR}"
    assert len(source.reads) == 1


@pytest.mark.parametrize("damaged, used", [
    ({5}, 4),  # 4 and 6 are as near: the earlier
    ({4, 5}, 6),
    ({5, 6}, 4),
    ({3, 4, 5, 6, 7}, 2),  # 2 and 8: the earlier
    ({3, 4, 5, 6}, 7),
    ({1, 2, 3, 4, 5, 6, 7, 8}, 9),  # the only clean frame of the first look
], ids=str)
@pytest.mark.parametrize("per_frame", [True, False], ids=["per-frame", "whole-read"])
def test_a_damaged_frame_is_replaced_by_the_nearest_clean_one(damaged, used, per_frame):
    source = ScriptedSource(damaged=damaged, per_frame=per_frame)
    frames = _CleanReader(source, "nearest_clean").read([5, 20], size=None)
    assert frames.used == {5: used, 20: 20}
    np.testing.assert_array_equal(frames.pixels[5], picture(used, 64, 48))
    np.testing.assert_array_equal(frames.pixels[20], picture(20, 64, 48))
    assert frames.note() == (f"damaged frames replaced by the nearest clean ones (5->{used}): "
                             f"frame 5 decoded with errors: {ERROR}")


def test_the_nearest_clean_frame_is_looked_for_past_a_damaged_gop():
    source = ScriptedSource(frame_count=100, damaged=range(60))
    frames = _CleanReader(source, "nearest_clean").read([20], size=None)
    # Near frames first, then in growing steps (24, 32, 48 frames away): 68 is the first clean one seen.
    assert frames.used == {20: 68}
    np.testing.assert_array_equal(frames.pixels[20], picture(68, 64, 48))


def test_the_first_frame_can_replace_a_damaged_one():
    frames = _CleanReader(ScriptedSource(damaged={1}), "nearest_clean").read([1], size=None)
    assert frames.used == {1: 0}  # 0 and 2 are as near: the earlier


def test_the_nearest_clean_frame_stays_inside_the_video():
    source = ScriptedSource(frame_count=10, damaged={8, 9})
    frames = _CleanReader(source, "nearest_clean").read([9], size=None)
    assert frames.used == {9: 7}
    assert all(0 <= i < 10 for indices, _, _ in source.reads for i in indices)


@pytest.mark.parametrize("per_frame", [True, False], ids=["per-frame", "whole-read"])
def test_no_clean_frame_near_a_damaged_one_fails_as_damage(per_frame):
    words = "hevc: Could not find ref with POC X"  # quoted whole, whatever it ends with
    source = ScriptedSource(frame_count=12, damaged=range(12), per_frame=per_frame, error=words)
    with pytest.raises(DamagedFrames) as raised:
        _CleanReader(source, "nearest_clean").read([3], size=None)
    assert raised.value.indices == [3] and raised.value.reason == "damaged_frames"
    assert raised.value.message == f"frame 3 and every frame tried near it decoded with errors: frame 3 decoded " \
                                   f"with errors: {words}"


def test_a_frame_known_damaged_with_every_neighbour_known_damaged_fails_as_damage():
    reader = _CleanReader(ScriptedSource(frame_count=2, damaged={0, 1}), "nearest_clean")
    with pytest.raises(DamagedFrames, match="every candidate frame decoded with errors"):
        reader.read_gray([0, 1], size=(16, 12))
    with pytest.raises(DamagedFrames) as raised:
        reader.read([1], size=None)  # nothing is read again: the words of the read that found them
    assert raised.value.message == ("frame 1 and every frame tried near it decoded with errors: frames 0, 1 "
                                    "decoded with errors: h264: error while decoding MB 16 10, bytestream -18")


def test_a_read_condemned_whole_is_split_in_halves_to_find_the_damaged_frames():
    source = ScriptedSource(damaged={5}, per_frame=False)
    frames = _CleanReader(source, "nearest_clean").read([2, 5, 9, 11], size=(32, 24))
    assert [indices for indices, _, _ in source.reads[:5]] == [[2, 5, 9, 11], [2, 5], [2], [5], [9, 11]]
    assert all(size == (32, 24) and not grey for _, size, grey in source.reads)
    assert frames.used == {2: 2, 5: 4, 9: 9, 11: 11}
    for asked, used in frames.used.items():
        np.testing.assert_array_equal(frames.pixels[asked], picture(used, 32, 24))
    # The note names the first damage seen: the whole read's.
    assert frames.note() == f"damaged frames replaced by the nearest clean ones (5->4): frame 5 decoded with " \
                            f"errors: {ERROR}"


def test_damage_in_both_halves_of_a_whole_read_is_found():
    source = ScriptedSource(damaged={2, 9}, per_frame=False)
    frames = _CleanReader(source, "nearest_clean").read([2, 5, 9, 11], size=None)
    assert frames.used == {2: 1, 5: 5, 9: 8, 11: 11}


def test_a_clean_gop_of_a_condemned_read_is_read_once_whole():
    source = ScriptedSource(damaged={14}, per_frame=False, gop=10)
    frames = _CleanReader(source, "nearest_clean").read(list(range(10, 30)), size=None)
    assert all(frames.used[i] == i for i in range(20, 30))
    assert [indices for indices, _, _ in source.reads if 25 in indices] == [list(range(10, 30)), list(range(20, 30))]


def test_a_whole_read_is_told_apart_gop_by_gop_from_the_first_damaged_frame_on():
    # Frame 14 is damaged, so 15-19 (decoded from it) are too; 10-13 are clean. A bisection finds that.
    source = ScriptedSource(damaged={14}, per_frame=False, gop=10)
    frames = _CleanReader(source, "nearest_clean").read(list(range(10, 20)), size=None)
    assert frames.used == {10: 10, 11: 11, 12: 12, 13: 13, 14: 13, 15: 13, 16: 13, 17: 20, 18: 20, 19: 20}
    for asked, used in frames.used.items():
        np.testing.assert_array_equal(frames.pixels[asked], picture(used, 64, 48))
    # Each read of the bisection holds the GOP's first frames, about log2(10) of them.
    bisection = [indices for indices, _, _ in source.reads if 20 not in indices]
    assert all(indices == list(range(10, 10 + len(indices))) for indices in bisection)
    assert len(bisection) <= 6


def test_the_bisection_reads_exactly_these_prefixes():
    # One GOP of 10 read whole and condemned: that read is not made again; the bisection then
    # tries 5 frames (damaged), 2, 3 and 4 (clean): 14 is the first damaged frame.
    source = ScriptedSource(damaged={14}, per_frame=False, gop=10)
    reader = _CleanReader(source, "nearest_clean")
    clean, bad = reader._read_clean(list(range(10, 20)), None, [])
    assert sorted(clean) == [10, 11, 12, 13] and bad == list(range(14, 20))
    assert [indices for indices, _, _ in source.reads] == [
        list(range(10, 20)), list(range(10, 15)), [10, 11], [10, 11, 12], [10, 11, 12, 13]]
    # Asked apart (the read held frames of two GOPs), each GOP is first tried whole.
    source = ScriptedSource(damaged={14}, per_frame=False, gop=10)
    clean, bad = _CleanReader(source, "nearest_clean")._read_clean([12, 14, 16, 21], None, [])
    assert sorted(clean) == [12, 21] and bad == [14, 16]
    assert [indices for indices, _, _ in source.reads] == [[12, 14, 16, 21], [12, 14, 16], [12], [12, 14], [21]]


def test_gops_of_one_whole_read_are_told_apart_each():
    source = ScriptedSource(frame_count=60, damaged={14, 27, 33}, per_frame=False, gop=10)
    asked = list(range(10, 40, 2))
    frames = _CleanReader(source, "nearest_clean").read(asked, size=None)
    assert {a: u for a, u in frames.used.items() if a != u} == {14: 13, 16: 13, 18: 20, 28: 26, 34: 32, 36: 32,
                                                                38: 40}
    np.testing.assert_array_equal(frames.pixels[38], picture(40, 64, 48))


def test_a_spreading_damage_named_per_frame_is_replaced_like_any():
    source = ScriptedSource(damaged={14}, gop=10)
    frames = _CleanReader(source, "nearest_clean").read([12, 16], size=None)
    assert frames.used == {12: 12, 16: 13}  # 13 comes before the damaged 14 of its GOP
    assert frames.note() == f"damaged frames replaced by the nearest clean ones (16->13): frame 16 decoded with " \
                            f"errors: {ERROR}"


@pytest.mark.parametrize("per_frame", [True, False], ids=["per-frame", "whole-read"])
def test_frames_found_damaged_among_grey_candidates_are_replaced_when_stored(per_frame):
    reader = _CleanReader(ScriptedSource(damaged={5, 9}, per_frame=per_frame), "nearest_clean")
    reader.read_gray([0, 5, 20], size=(16, 12))
    frames = reader.read([5, 8, 9], size=None)
    assert frames.used == {5: 4, 8: 8, 9: 8}
    np.testing.assert_array_equal(frames.pixels[5], picture(4, 64, 48))


@pytest.mark.parametrize("per_frame, gop", [(True, None), (False, None), (False, 10)], ids=["per-frame", "halves",
                                                                                           "gops"])
def test_a_source_returning_fewer_frames_than_asked_is_an_error(per_frame, gop):
    class Short(ScriptedSource):
        """Drops the first frame of its first clean read of several (then reads right): no frame may
        be stored under another's index."""

        dropped = False

        def _read(self, indices, size, gray):
            frames = super()._read(indices, size, gray)
            if self.dropped or len(indices) < 2:
                return frames
            self.dropped = True
            return frames[1:]

    damaged = {} if per_frame else {15}
    with pytest.raises(ValueError, match="zip"):
        _CleanReader(Short(damaged=damaged, per_frame=per_frame, gop=gop), "nearest_clean").read(
            list(range(10, 20)), size=None)


def test_frames_found_damaged_are_not_read_again():
    source = ScriptedSource(damaged={5, 6, 7})
    frames = _CleanReader(source, "nearest_clean").read([5, 6], size=None)
    assert frames.used == {5: 4, 6: 4}
    assert all(5 not in indices and 6 not in indices for indices, _, _ in source.reads[1:])


def test_a_clean_frame_already_read_is_reused_not_read_again():
    source = ScriptedSource(damaged={4, 5, 6})
    frames = _CleanReader(source, "nearest_clean").read([3, 5], size=None)
    assert frames.used == {3: 3, 5: 3}  # 3 and 7 are as near: the earlier, already read
    np.testing.assert_array_equal(frames.pixels[5], picture(3, 64, 48))
    assert [indices for indices, _, _ in source.reads[:2]] == [[3, 5], [3]]
    assert all(3 not in indices for indices, _, _ in source.reads[2:])
    source = ScriptedSource(damaged={5})
    frames = _CleanReader(source, "nearest_clean").read([4, 5], size=None)
    assert frames.used == {4: 4, 5: 4} and [indices for indices, _, _ in source.reads] == [[4, 5], [4]]


def test_a_source_that_names_no_damaged_frame_condemns_the_whole_read():
    class Unnamed(ScriptedSource):
        """Its first read fails naming a frame not asked for (a log line tied to no frame)."""

        def _read(self, indices, size, gray):
            if not self.reads:
                self.reads.append((list(indices), size, gray))
                raise DamagedFrames([999], "concealing 12 DC, 12 AC, 12 MV errors")
            return super()._read(indices, size, gray)

    source = Unnamed(damaged={5})
    frames = _CleanReader(source, "nearest_clean").read([2, 5], size=None)
    assert frames.used == {2: 1, 5: 4}  # neither can be trusted: both replaced
    assert frames.note() == "damaged frames replaced by the nearest clean ones (2->1, 5->4): concealing 12 DC, " \
                            "12 AC, 12 MV errors"


def test_frames_are_read_32_at_a_time():
    source = ScriptedSource(frame_count=100)
    frames = _CleanReader(source, "fail").read(list(range(0, 70)), size=(16, 12))
    assert [len(indices) for indices, _, _ in source.reads] == [32, 32, 6]
    assert sorted(frames.used) == list(range(70))
    np.testing.assert_array_equal(frames.pixels[69], picture(69, 16, 12))


def test_damage_in_a_later_chunk_is_replaced_too():
    source = ScriptedSource(frame_count=100, damaged={66})
    frames = _CleanReader(source, "nearest_clean").read(list(range(0, 70, 2)), size=None)
    assert frames.used == {i: 65 if i == 66 else i for i in range(0, 70, 2)}
    np.testing.assert_array_equal(frames.pixels[66], picture(65, 64, 48))


def test_the_note_lists_the_first_eight_replacements():
    damaged = list(range(5, 100, 10))
    source = ScriptedSource(frame_count=100, damaged=damaged)
    frames = _CleanReader(source, "nearest_clean").read(damaged, size=None)
    assert frames.used == {i: i - 1 for i in damaged}
    assert frames.note() == ("damaged frames replaced by the nearest clean ones (5->4, 15->14, 25->24, 35->34, "
                             f"45->44, 55->54, 65->64, 75->74): {damage_message(damaged, [ERROR])}")


@pytest.mark.parametrize("per_frame", [True, False], ids=["per-frame", "whole-read"])
def test_a_damaged_grey_candidate_repeats_the_clean_one_before_it(per_frame):
    source = ScriptedSource(damaged={4}, per_frame=per_frame)
    grey = _CleanReader(source, "nearest_clean").read_gray([0, 2, 4, 6], size=(16, 12))
    expected = to_gray(np.stack(frames_of([0, 2, 2, 6], 16, 12)))
    np.testing.assert_array_equal(grey, expected)
    assert all(size == (16, 12) and is_grey for _, size, is_grey in source.reads)


def test_a_damaged_first_grey_candidate_repeats_the_first_clean_one():
    source = ScriptedSource(damaged={0, 2})
    grey = _CleanReader(source, "nearest_clean").read_gray([0, 2, 4, 6, 4], size=(16, 12))
    np.testing.assert_array_equal(grey, to_gray(np.stack(frames_of([4, 4, 4, 6, 4], 16, 12))))


def test_grey_candidates_all_damaged_fail_as_damage():
    source = ScriptedSource(damaged={0, 2, 4})
    with pytest.raises(DamagedFrames) as raised:
        _CleanReader(source, "nearest_clean").read_gray([0, 2, 4], size=(16, 12))
    assert raised.value.indices == [0, 2, 4]
    assert raised.value.message == "every candidate frame decoded with errors"


def test_grey_candidates_under_the_fail_policy_fail_at_the_first_damage():
    source = ScriptedSource(damaged={2})
    with pytest.raises(DamagedFrames, match="frame 2 decoded with errors"):
        _CleanReader(source, "fail").read_gray([0, 2, 4], size=(16, 12))


# ---- extract_keyframes with the scripted source --------------------------------------------------


@pytest.fixture
def clip(tmp_path) -> str:
    """A file the containment check passes as MP4 (the scripted source never reads it)."""
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypisom" + bytes(100))
    return str(path)


@pytest.fixture
def serve(monkeypatch):
    """Makes extract_keyframes open the given scripted sources (or raise the given errors) by backend."""
    opened: list[tuple[str, str, int]] = []

    def install(**sources):
        def open_scripted(path, backend, short_side=0):
            opened.append((path, backend, short_side))
            source = sources.get(backend, RuntimeError(f"{backend} is not installed"))
            if isinstance(source, Exception):
                raise source
            return source

        monkeypatch.setattr(keyframes_module, "open_source", open_scripted)
        return opened

    return install


def test_keyframes_are_the_chosen_frames_resized_as_jpegs(clip, serve):
    source = ScriptedSource()
    opened = serve(pyav=source)
    result = extract_keyframes(clip, Uniform(num_frames=4), video_id="v", short_side=24)
    assert opened == [(os.path.realpath(clip), "pyav", 24)]
    assert result.indices == [5, 15, 25, 35]
    assert result.timestamps == [0.166667, 0.5, 0.833333, 1.166667]
    assert result.jpegs == [jpeg(p) for p in frames_of([5, 15, 25, 35], 32, 24)]
    assert (result.width, result.height, result.repeated, result.decoder, result.note) == (32, 24, False, "pyav",
                                                                                          None)
    assert source.closed


def test_frames_are_stored_224_pixels_on_their_short_side_by_default(clip, serve):
    serve(pyav=ScriptedSource())
    result = extract_keyframes(clip, Uniform(num_frames=1), video_id="v")
    assert (result.width, result.height) == (299, 224)
    assert result.jpegs == [jpeg(picture(20, 299, 224))]


def test_seeded_sampling_draws_the_frames_of_this_video(clip, serve):
    serve(pyav=ScriptedSource())
    result = extract_keyframes(clip, SegmentRandom(num_frames=4), video_id="clip-7", short_side=0)
    assert result.indices == choose_frames(SegmentRandom(num_frames=4), np.arange(40) / 30, "clip-7").indices
    assert result.indices == [0, 16, 26, 31]


def test_decoding_past_the_time_limit_fails_as_timeout(clip, serve):
    opened = serve(pyav=ScriptedSource(seconds_per_read=0.06), decord=ScriptedSource(name="decord"))
    with pytest.raises(VideoError) as raised:
        extract_keyframes(clip, Uniform(num_frames=2), video_id="v", timeout_seconds=0.05)
    assert raised.value.reason == "timeout"
    assert raised.value.message == "decoding took longer than its 0.05 s time limit"
    assert len(opened) == 1


def test_short_side_zero_keeps_the_stored_size_and_quality_is_the_asked_one(clip, serve):
    serve(pyav=ScriptedSource())
    result = extract_keyframes(clip, Uniform(num_frames=2), video_id="v", short_side=0, jpeg_quality=40)
    assert result.jpegs == [jpeg(p, 40) for p in frames_of([10, 30])]
    assert (result.width, result.height) == (64, 48)


@pytest.mark.parametrize("rotation, corner", [(0, (0, 0)), (90, (0, -1)), (180, (-1, -1)), (270, (-1, 0))])
def test_frames_are_turned_upright(clip, serve, rotation, corner):
    serve(pyav=ScriptedSource())
    result = extract_keyframes(clip, Uniform(num_frames=1), video_id="v", short_side=24, rotation=rotation)
    turned = np.rot90(picture(20, 32, 24), k=-(rotation // 90))  # clockwise
    assert result.jpegs == [jpeg(np.ascontiguousarray(turned))]
    assert (result.width, result.height) == ((32, 24) if rotation in (0, 180) else (24, 32))
    pixels = decoded(result.jpegs[0])
    row, column = corner
    assert pixels[row, column].min() > 200  # the white corner, where a clockwise turn puts it


def test_a_video_shorter_than_asked_repeats_frames(clip, serve):
    serve(pyav=ScriptedSource(frame_count=3))
    result = extract_keyframes(clip, Uniform(num_frames=5), video_id="v", short_side=0)
    assert result.indices == [0, 0, 1, 2, 2] and result.repeated
    assert result.jpegs == [jpeg(p) for p in frames_of([0, 0, 1, 2, 2])]


def test_the_fail_policy_fails_a_damaged_video_without_trying_other_decoders(clip, serve):
    opened = serve(pyav=ScriptedSource(damaged={15}), decord=ScriptedSource(name="decord"))
    with pytest.raises(DamagedFrames) as raised:
        extract_keyframes(clip, Uniform(num_frames=4), video_id="v")
    assert raised.value.reason == "damaged_frames" and raised.value.indices == [15]
    assert [backend for _, backend, _ in opened] == ["pyav"]


@pytest.mark.parametrize("per_frame", [True, False], ids=["per-frame", "whole-read"])
def test_nearest_clean_stores_the_replacement_and_says_so(clip, serve, per_frame):
    serve(pyav=ScriptedSource(damaged={15}, per_frame=per_frame))
    result = extract_keyframes(clip, Uniform(num_frames=4), video_id="v", short_side=0, damaged="nearest_clean")
    assert result.indices == [5, 14, 25, 35]
    assert result.timestamps == [0.166667, 0.466667, 0.833333, 1.166667]
    assert result.jpegs == [jpeg(p) for p in frames_of([5, 14, 25, 35])]
    assert result.note == f"damaged frames replaced by the nearest clean ones (15->14): frame 15 decoded with " \
                          f"errors: {ERROR}" and not result.repeated


def test_a_replacement_past_the_next_frame_is_stored_in_frame_order(clip, serve):
    # Frame 12's nearest clean frame seen is 18 (frames 6 and 8-16 are damaged), past the asked frame 17.
    serve(pyav=ScriptedSource(frame_count=50, damaged={6, *range(8, 17)}))
    result = extract_keyframes(clip, Uniform(num_frames=10), video_id="v", short_side=0, damaged="nearest_clean")
    assert result.indices == [2, 7, 17, 18, 22, 27, 32, 37, 42, 47]
    assert result.jpegs == [jpeg(p) for p in frames_of(result.indices)]
    assert result.timestamps == [round(i / 30, 6) for i in result.indices]
    assert result.note.startswith("damaged frames replaced by the nearest clean ones (12->18): ")


def test_a_replacement_that_is_another_chosen_frame_repeats_it(clip, serve):
    serve(pyav=ScriptedSource(frame_count=4, damaged={2, 3}))
    result = extract_keyframes(clip, Uniform(num_frames=2), video_id="v", short_side=0, damaged="nearest_clean")
    assert result.indices == [1, 1] and result.repeated
    assert result.jpegs == [jpeg(p) for p in frames_of([1, 1])]


def test_nearest_clean_with_no_clean_frame_fails_without_trying_other_decoders(clip, serve):
    opened = serve(pyav=ScriptedSource(frame_count=8, damaged=range(8)), decord=ScriptedSource(name="decord"))
    with pytest.raises(DamagedFrames, match="^damaged_frames: frame 1 and every frame tried near it"):
        extract_keyframes(clip, Uniform(num_frames=4), video_id="v", damaged="nearest_clean")
    assert [backend for _, backend, _ in opened] == ["pyav"]


def test_disparity_looks_at_small_grey_frames_and_fails_on_damage_alone(clip, serve):
    source = ScriptedSource(frame_count=60, width=128, height=48, damaged=range(60))
    opened = serve(pyav=source, decord=ScriptedSource(name="decord"))
    with pytest.raises(DamagedFrames, match="every candidate frame decoded with errors"):
        extract_keyframes(clip, Disparity(num_frames=3), video_id="v", damaged="nearest_clean")
    assert [backend for _, backend, _ in opened] == ["pyav"]
    assert {(size, grey) for _, size, grey in source.reads} == {((64, 24), True)}


@pytest.mark.parametrize("width, height, grey", [(128, 48, (64, 24)), (48, 128, (64, 171)), (200, 2, (64, 1)),
                                                 (1, 2, (64, 128))])
def test_grey_candidates_are_64_pixels_wide_keeping_the_aspect(width, height, grey):
    assert _gray_size(ScriptedSource(width=width, height=height)) == grey


def test_disparity_stores_clean_frames_of_a_damaged_video(clip, serve):
    # Frame 30 is found damaged among the grey candidates, then asked for: replaced, with the
    # decoder's words from the first read in the note (there was no message to quote once).
    serve(pyav=ScriptedSource(frame_count=60, damaged={30}))
    result = extract_keyframes(clip, Disparity(num_frames=4, min_gap_seconds=0.3), video_id="v", short_side=0,
                               damaged="nearest_clean")
    assert 30 not in result.indices and len(result.indices) == 4
    assert result.note.endswith(f"frame 30 decoded with errors: {ERROR}"), result.note
    assert result.jpegs == [jpeg(p) for p in frames_of(result.indices)]


def test_a_decoder_that_fails_hands_over_to_the_next_and_the_note_says_why(clip, serve):
    opened = serve(pyav=RuntimeError("moov atom not found"), decord=ScriptedSource(name="decord", damaged={15}))
    result = extract_keyframes(clip, Uniform(num_frames=4), video_id="v", short_side=0, damaged="nearest_clean")
    assert [backend for _, backend, _ in opened] == ["pyav", "decord"]
    assert result.decoder == "decord" and result.indices == [5, 14, 25, 35]
    assert result.note == (f"pyav failed, used decord. pyav: moov atom not found damaged frames replaced by the "
                           f"nearest clean ones (15->14): frame 15 decoded with errors: {ERROR}")


def test_a_decoder_failing_while_reading_hands_over_too(clip, serve):
    failing = ScriptedSource(fails=RuntimeError("   "))
    serve(ffmpeg=failing, pyav=ScriptedSource())
    result = extract_keyframes(clip, Uniform(num_frames=2), video_id="v", backend="ffmpeg")
    assert result.decoder == "pyav" and result.note == "ffmpeg failed, used pyav. ffmpeg: RuntimeError"
    assert failing.closed


def test_every_decoder_failing_fails_the_video_naming_each(clip, serve):
    opened = serve(pyav=RuntimeError("z" * 501), decord=OSError("x" * 600), ffmpeg=RuntimeError("y" * 500))
    with pytest.raises(VideoError) as raised:
        extract_keyframes(clip, Uniform(num_frames=2), video_id="v", backend="decord")
    assert [backend for _, backend, _ in opened] == ["decord", "pyav", "ffmpeg"]
    assert raised.value.reason == "decode_error"
    assert raised.value.message == f"decord: {'x' * 500} ...; pyav: {'z' * 500} ...; ffmpeg: {'y' * 500}"


def test_without_fallback_only_the_chosen_decoder_is_tried(clip, serve):
    opened = serve(pyav=RuntimeError("bad header"), decord=ScriptedSource(name="decord"))
    with pytest.raises(VideoError, match="^decode_error: pyav: bad header$"):
        extract_keyframes(clip, Uniform(num_frames=2), video_id="v", fallback=False)
    assert len(opened) == 1


def test_a_timeout_is_not_handed_to_another_decoder(clip, serve):
    opened = serve(pyav=ScriptedSource(fails=VideoError("timeout", "ffmpeg ran out of time")),
                   decord=ScriptedSource(name="decord"))
    with pytest.raises(VideoError, match="^timeout: ffmpeg ran out of time$"):
        extract_keyframes(clip, Uniform(num_frames=2), video_id="v")
    assert len(opened) == 1


def test_other_video_errors_are_handed_to_another_decoder(clip, serve):
    serve(pyav=ScriptedSource(fails=VideoError("decode_error", "PyAV decoded no frame")),
          decord=ScriptedSource(name="decord"))
    result = extract_keyframes(clip, Uniform(num_frames=2), video_id="v")
    assert result.decoder == "decord"
    assert result.note == "pyav failed, used decord. pyav: decode_error: PyAV decoded no frame"


def test_the_time_limit_is_the_asked_one(clip, serve):
    serve(pyav=ScriptedSource())
    with pytest.raises(ValueError, match="a time limit must be > 0 seconds, got 0"):
        extract_keyframes(clip, Uniform(num_frames=2), video_id="v", timeout_seconds=0)


def test_a_file_outside_the_video_root_is_never_opened(clip, serve, tmp_path):
    opened = serve(pyav=ScriptedSource())
    root = tmp_path / "videos"
    root.mkdir()
    with pytest.raises(VideoError) as raised:
        extract_keyframes(clip, Uniform(num_frames=2), video_id="v", video_root=str(root))
    assert raised.value.reason == "outside_root" and opened == []


def test_a_link_is_opened_at_its_real_path(clip, serve, tmp_path):
    opened = serve(pyav=ScriptedSource())
    link = tmp_path / "link.mp4"
    link.symlink_to(clip)
    extract_keyframes(str(link), Uniform(num_frames=2), video_id="v", video_root=str(tmp_path))
    assert opened[0][0] == os.path.realpath(clip)


@pytest.mark.parametrize("arguments, message", [
    ({"backend": "opencv"}, "unknown decoder backend 'opencv'; use one of pyav, decord, ffmpeg"),
    ({"short_side": -1}, "short_side must be >= 0 (0 keeps the size), got -1"),
    ({"jpeg_quality": 0}, "jpeg_quality must be in 1..100, got 0"),
    ({"jpeg_quality": 101}, "jpeg_quality must be in 1..100, got 101"),
    ({"rotation": 45}, "rotation must be 0, 90, 180 or 270, got 45"),
], ids=["backend", "short-side", "quality-0", "quality-101", "rotation"])
def test_bad_arguments_are_refused_before_any_decoding(clip, serve, arguments, message):
    opened = serve(pyav=ScriptedSource())
    with pytest.raises(ValueError) as raised:
        extract_keyframes(clip, Uniform(num_frames=2), video_id="v", **arguments)
    assert str(raised.value) == message and opened == []


@pytest.mark.parametrize("quality", [1, 100])
def test_jpeg_quality_bounds_are_allowed(clip, serve, quality):
    serve(pyav=ScriptedSource())
    result = extract_keyframes(clip, Uniform(num_frames=1), video_id="v", short_side=0, jpeg_quality=quality)
    assert result.jpegs == [jpeg(picture(20, 64, 48), quality)]


# ---- one real clip ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_clip(video_dir) -> str:
    path = video_dir / "tiny_clean_reader.mp4"
    synth.make_clip(path, seconds=1, width=64, height=48, fps=10)
    return str(path)


def test_a_real_clean_clip_needs_no_replacement(tiny_clip):
    result = extract_keyframes(tiny_clip, Uniform(num_frames=3), video_id="v", short_side=0,
                               damaged="nearest_clean")
    assert result.indices == [1, 5, 8] and result.decoder == "pyav" and result.note is None
    assert result.timestamps == [0.1, 0.5, 0.8] and (result.width, result.height) == (64, 48)

"""Which frames of a video to keep: the sampling strategies of the papers we reproduce.

Each strategy is a small frozen dataclass whose first field, `strategy`, names it (the YAML
config loader picks the member of the `Sampling` union by that field). Fields are keyword-only,
so `Uniform(num_frames=8)`, never `Uniform(8)` (which would set `strategy`). `choose_frames` maps a
strategy and a video's per-frame timestamps to frame indices. Every strategy but Disparity looks
only at timestamps, so the decoder then seeks to just those frames. Ranges are declared on the
fields (`bounds`) and checked on construction, so a bad value fails before any video is read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from pipeline.config import bounds, check_bounds
from pipeline.decode.probe import VideoError


class _Strategy:
    """Checks shared by every strategy when it is constructed, from a config file or in code."""

    def __post_init__(self):
        expected = type(self).__dataclass_fields__["strategy"].default
        if self.strategy != expected:
            raise ValueError(f"strategy must be {expected!r}, got {self.strategy!r}")
        check_bounds(self)


@dataclass(frozen=True, kw_only=True)
class Uniform(_Strategy):
    """N frames at the centres of N equal segments (CLIP4Clip / X-Pool style)."""

    strategy: Literal["uniform"] = "uniform"
    num_frames: int = field(default=12, metadata=bounds(min=1))


@dataclass(frozen=True, kw_only=True)
class SegmentRandom(_Strategy):
    """One random frame per equal segment (TSN-style training sampling), seeded per video."""

    strategy: Literal["segment_random"] = "segment_random"
    num_frames: int = field(default=12, metadata=bounds(min=1))
    seed: int = field(default=0, metadata=bounds(min=0))


@dataclass(frozen=True, kw_only=True)
class Fps(_Strategy):
    """Frames at a fixed rate in seconds (t = 0, 1/rate, ...), right for variable frame rates;
    at most max_frames, spread uniformly over those, when set."""

    strategy: Literal["fps"] = "fps"
    rate: float = field(default=1.0, metadata=bounds(above=0))
    max_frames: int | None = field(default=None, metadata=bounds(min=1))


@dataclass(frozen=True, kw_only=True)
class Vlm(_Strategy):
    """Sparse frames for prompting a video VLM, sampled as LLaVA-NeXT-Video does
    (`np.linspace(0, F - 1, N, dtype=int)`: first and last frame included)."""

    strategy: Literal["vlm"] = "vlm"
    num_frames: int = field(default=8, metadata=bounds(min=1))


@dataclass(frozen=True, kw_only=True)
class Disparity(_Strategy):
    """MMI key-images: the frames where the content changes most.

    Low-resolution grey candidates are read at about candidate_fps; each is scored by its mean
    absolute difference to the previous candidate. The first frame is always kept, then the
    highest-scoring change points, then uniform frames and the frames farthest from those kept,
    every frame at least min_gap_seconds from every other. A frame is kept only if the rest still
    fit around it, so a video that holds num_frames frames that far apart gets that many distinct
    ones; only a shorter video repeats frames, after using every distinct one it can hold."""

    strategy: Literal["disparity"] = "disparity"
    num_frames: int = field(default=8, metadata=bounds(min=1))
    candidate_fps: float = field(default=2.0, metadata=bounds(above=0))
    min_gap_seconds: float = field(default=0.5, metadata=bounds(min=0))


@dataclass(frozen=True, kw_only=True)
class MiddleSegment(_Strategy):
    """LSDO's "single" frame: split into num_segments and take one seeded random frame of the
    middle segment (0-based index num_segments // 2 - 1: the 6th of 12, the 32nd of 64)."""

    strategy: Literal["middle_segment"] = "middle_segment"
    # At least 2: with one segment the middle index, num_segments // 2 - 1, would be -1.
    num_segments: int = field(default=12, metadata=bounds(min=2))
    seed: int = field(default=0, metadata=bounds(min=0))


Sampling = Uniform | SegmentRandom | Fps | Vlm | Disparity | MiddleSegment

ReadGray = Callable[[list[int]], np.ndarray]  # indices -> uint8 [n, h, w]


@dataclass
class Selection:
    indices: list[int]  # presentation-order frame indices, ascending
    repeated: bool  # the video has fewer distinct frames than asked for, so some repeat


def choose_frames(
    sampling: Sampling,
    timestamps: np.ndarray,
    video_id: str,
    read_gray: ReadGray | None = None,
) -> Selection:
    """Frame indices for one video. `timestamps` holds each frame's presentation time in
    seconds (its length is the frame count); `read_gray` is needed by Disparity only."""
    timestamps = np.asarray(timestamps, dtype=np.float64)
    frame_count = len(timestamps)
    if frame_count == 0:
        raise VideoError("decode_error", "the video has no frames to sample")
    match sampling:
        case Uniform(num_frames=n):
            indices = segment_centres(frame_count, n)
        case SegmentRandom(num_frames=n, seed=seed):
            rng = video_rng(seed, video_id)
            indices = [_random_in_segment(frame_count, n, k, rng) for k in range(n)]
        case Fps(rate=rate, max_frames=max_frames):
            indices = _at_rate(timestamps, rate)
            if max_frames is not None and len(indices) > max_frames:
                indices = [indices[i] for i in segment_centres(len(indices), max_frames)]
        case Vlm(num_frames=n):
            indices = np.linspace(0, frame_count - 1, n, dtype=int).tolist()
        case Disparity():
            if read_gray is None:
                raise ValueError("Disparity sampling needs read_gray to look at the frames")
            indices = _disparity(sampling, timestamps, read_gray)
        case MiddleSegment(num_segments=s, seed=seed):
            middle = s // 2 - 1
            indices = [_random_in_segment(frame_count, s, middle, video_rng(seed, video_id))]
        case _:
            raise TypeError(f"unknown sampling strategy: {sampling!r}")
    indices = sorted(int(i) for i in indices)
    return Selection(indices=indices, repeated=len(set(indices)) < len(indices))


# ---- index rules --------------------------------------------------------------------------------


def segment_centres(frame_count: int, n: int) -> list[int]:
    """floor((2k+1)F / 2N) for k < N: the centre frame of each of N equal segments of [0, F)."""
    return [(2 * k + 1) * frame_count // (2 * n) for k in range(n)]


def video_rng(seed: int, video_id: str) -> np.random.Generator:
    """A generator fixed by (seed, video_id). sha256, not hash(): Python salts str hashes per
    process, and the same video must get the same frames in every worker and every run."""
    digest = hashlib.sha256(f"{seed}\0{video_id}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _random_in_segment(frame_count: int, n: int, k: int, rng: np.random.Generator) -> int:
    """A random frame of segment k of N equal segments; a segment shorter than one frame (when
    F < N) is its first frame."""
    start = k * frame_count // n
    stop = max((k + 1) * frame_count // n, start + 1)
    return int(rng.integers(start, stop))


# Matroska stores milliseconds, so a frame shown at 1/3 s reads 0.333: accept frames up to
# half a millisecond before the target time as "at" it.
_TIME_SLACK = 0.0005


def _at_rate(timestamps: np.ndarray, rate: float) -> list[int]:
    """For t = 0, 1/rate, 2/rate, ... up to the last frame: the first frame shown at or after t
    (times count from the first frame)."""
    times = timestamps - timestamps[0]
    count = int(np.floor((times[-1] + _TIME_SLACK) * rate)) + 1
    targets = np.arange(count) / rate
    return np.searchsorted(times, targets - _TIME_SLACK, side="left").tolist()


def _disparity(sampling: Disparity, timestamps: np.ndarray, read_gray: ReadGray) -> list[int]:
    """Change points first, then uniform frames, then the frames farthest from those picked, every
    one at least `min_gap_seconds` from every other. A frame is kept only if the frames still
    missing can be placed around it, so whenever the video holds N frames that far apart, N
    distinct ones are returned; a video too short for that repeats the most it can hold
    (`repeated_frames`) rather than break the gap."""
    n, frame_count = sampling.num_frames, len(timestamps)
    gap = sampling.min_gap_seconds - _TIME_SLACK
    # The most distinct frames the video holds that far apart, up to N: the first frame and every
    # frame at least a gap after the one before (earliest first packs the most onto a line).
    target = 1 + _room(timestamps, gap, 0, None, n - 1)
    chosen: list[int] = []

    def keep(i: int) -> bool:
        """Keep frame i when it is a gap from every kept frame and leaves room to reach target."""
        if len(chosen) == target or i in chosen or not all(_apart(timestamps, i, j, gap) for j in chosen):
            return False
        if not _can_reach(timestamps, gap, sorted([*chosen, i]), target):
            return False
        chosen.append(i)
        return True

    # With no more frames than asked and no gap to keep, every frame is taken: nothing to read.
    if frame_count > n or gap > 0:
        candidates = sorted(set(_at_rate(timestamps, sampling.candidate_fps)))
        grey = np.asarray(read_gray(candidates), dtype=np.float32)
        change = np.abs(np.diff(grey, axis=0)).mean(axis=(1, 2))
        scores = np.concatenate([[np.inf], change])  # the first frame is always kept
        for c in np.argsort(-scores, kind="stable"):
            if len(chosen) == target or scores[c] == 0:  # an unchanged frame is no change point
                break
            keep(candidates[c])
    for i in segment_centres(frame_count, n):
        keep(i)
    _add_farthest(chosen, timestamps, target, gap, keep)
    distinct = sorted(chosen)
    # Fewer distinct frames than asked only when the video holds no more: each is used, some twice.
    return [distinct[i] for i in segment_centres(len(distinct), n)]


def _add_farthest(
    chosen: list[int], timestamps: np.ndarray, target: int, gap: float, keep: Callable[[int], bool]
) -> None:
    """Until `target` frames are chosen, keep the frame farthest in time from every chosen one
    that `keep` accepts. One always is: `keep` only ever accepts a frame that leaves room for the
    rest, so the frames of such a completion are there to take."""
    while len(chosen) < target:
        distance = np.full(len(timestamps), np.inf)
        for i in chosen:
            distance = np.minimum(distance, np.abs(timestamps - timestamps[i]))
        distance[chosen] = -np.inf  # with no gap (min_gap_seconds 0) a chosen frame is still taken
        order = np.argsort(-distance, kind="stable")
        if not any(keep(int(i)) for i in order[distance[order] >= gap]):
            raise RuntimeError(f"disparity found no frame to add to {sorted(chosen)}; this is a bug")


def _apart(timestamps: np.ndarray, i: int, j: int, gap: float) -> bool:
    """Frames i and j are at least `gap` apart in time: the one test every step uses, so the
    room counted for later frames is exactly the room they get."""
    return abs(timestamps[i] - timestamps[j]) >= gap


def _next_apart(timestamps: np.ndarray, i: int, gap: float) -> int:
    """The first frame after frame i that is `gap` from it (len(timestamps) when none is);
    timestamps ascend, as presentation order gives them."""
    j = max(i + 1, int(np.searchsorted(timestamps, timestamps[i] + gap, side="left")))
    # searchsorted compares with the rounded sum t_i + gap; settle on `_apart`'s own test.
    while j - 1 > i and _apart(timestamps, i, j - 1, gap):
        j -= 1
    while j < len(timestamps) and not _apart(timestamps, i, j, gap):
        j += 1
    return j


def _room(timestamps: np.ndarray, gap: float, after: int | None, before: int | None, cap: int) -> int:
    """How many frames fit between frames `after` and `before` (None: the video's start or end),
    each `gap` from one another and from those two, counted up to `cap`. Taking the earliest frame
    that fits, again and again, fits the most (an exchange argument, frames lying on a line)."""
    i = 0 if after is None else _next_apart(timestamps, after, gap)
    end = len(timestamps) if before is None else before
    count = 0
    while count < cap and i < end and (before is None or _apart(timestamps, i, before, gap)):
        count += 1
        i = _next_apart(timestamps, i, gap)
    return count


def _can_reach(timestamps: np.ndarray, gap: float, ordered: list[int], target: int) -> bool:
    """Whether frames a gap apart can be added to `ordered` (ascending, already a gap apart) until
    there are `target`: the room before, between and after them adds up to it. Frames in different
    stretches are a chosen frame apart, so each stretch is counted on its own."""
    edges = [None, *ordered, None]
    room = sum(_room(timestamps, gap, a, b, target) for a, b in zip(edges, edges[1:]))
    return len(ordered) + room >= target

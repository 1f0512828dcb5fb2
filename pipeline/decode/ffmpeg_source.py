"""The ffmpeg command-line frame source: one ffmpeg process per read, built with ffmpeg-python.

Frame i is the i-th entry of the packet list sorted by presentation time (`read_stream_frames`),
the same numbering decord uses, so both backends return the same frame for the same index, on
variable frame rates too. A read is split into *segments*: runs of wanted frames decoded in one
pass. Each segment is one input of the ffmpeg process, the same file opened again with an input
`-ss` just before its first frame (ffmpeg seeks to the keyframe before it and decodes forward);
a `select` on each frame's presentation time keeps exactly the wanted frames, a `trim` stops
decoding after the last one, and `concat` joins the segments into one raw RGB pipe.

Where seeking is not exact the source decodes from the start instead (slower, but right):
in containers without a frame index (MPEG-TS: a seek lands near a keyframe and the decoder
drops the frames it cannot rebuild), and where packets lack presentation times (AVI with
B-frames: decoded frames then carry other timestamps than the packet list, so frames are
counted instead of timed).
"""

from __future__ import annotations

import re

import ffmpeg
import numpy as np

from pipeline.decode.containment import INPUT_OPTIONS
from pipeline.decode.decoder_log import damage_message, decoder_errors, join_whole
from pipeline.decode.errors import DamagedFrames
from pipeline.decode.frames import Size, distinct_indices, gop_starts, to_gray
from pipeline.decode.probe import (
    DECODE_TIMEOUT_S,
    StreamFrames,
    VideoError,
    ffmpeg_version,
    read_stream_frames,
    require_binary,
    run_limited,
)

# Opening one more input (probing the file, starting a decoder) costs about as much as decoding
# this many 640x360 H.264 frames (measured: ~15 ms against ~0.5 ms a frame, one thread). The
# planner starts a new segment only when seeking saves more decoding than that.
SEEK_OVERHEAD_FRAMES = 30

# One process opens every segment's input at once; bound the open files and decoders.
MAX_SEGMENTS_PER_PROCESS = 32

# ffmpeg's expression parser refuses a `select` of more than ~100 terms (measured: 100 parse,
# 110 fail), so a segment keeps at most this many frames; a denser run becomes several
# segments, each seeking to where the previous one ended.
MAX_FRAMES_PER_SEGMENT = 50

# What the ffmpeg command line prints when a decoded frame carries the corrupt flag.
_CORRUPT_FRAME = re.compile(r"^\[(?:warning|error|fatal)\] .*: corrupt decoded frame in stream \d+$")

# Lines of the log below warnings (stream listings at INFO) say nothing about a failure.
_QUIET = re.compile(r"^(?:\[[^]]+ @ 0x[0-9a-f]+\] )?\[(?:info|verbose|debug|trace)\] ")


class FfmpegSource:
    name = "ffmpeg"

    def __init__(self, path: str):
        require_binary("ffmpeg")
        self._path = path
        self._frames: StreamFrames = read_stream_frames(path)
        self.version = ffmpeg_version()
        self.frame_count = len(self._frames.pts)
        self.timestamps = np.round(self._frames.timestamps, 6)
        self.width, self.height = self._frames.width, self._frames.height
        self.gop_start = gop_starts(self._frames.keyframe)  # damage is told apart GOP by GOP

    def read(self, indices: list[int], size: Size | None = None) -> np.ndarray:
        wanted, inverse = distinct_indices(indices, self.frame_count)
        width, height = size or (self.width, self.height)
        if self._frames.exact_pts and self._frames.seekable:
            segments = plan_segments(wanted, self._frames.keyframe)
        else:  # no seeking: every segment decodes from the first frame
            step = MAX_FRAMES_PER_SEGMENT
            segments = [wanted[i : i + step] for i in range(0, len(wanted), step)]
        batches = [
            self._decode_checked(segments[i : i + MAX_SEGMENTS_PER_PROCESS], width, height, size)
            for i in range(0, len(segments), MAX_SEGMENTS_PER_PROCESS)
        ]
        frames = np.concatenate(batches) if batches else np.empty((0, height, width, 3), np.uint8)
        return frames[inverse]

    def read_gray(self, indices: list[int], size: Size) -> np.ndarray:
        return to_gray(self.read(indices, size))

    def _decode_checked(self, segments: list[list[int]], width: int, height: int, size: Size | None) -> np.ndarray:
        """The frames of `segments`, unless the decoder reported errors or concealment making
        them, or flagged a frame as corrupt. The log is not tied to frames: the error may lie in
        any frame decoded since a segment's keyframe, and every frame of the read is reported.

        Each read seeks to the keyframe of its first frame's GOP, so in a file of closed GOPs
        whatever the decoder reports concerns the frames decoded for the read. After a seek into
        an open GOP, H.264 also reports the leading pictures' missing references although no
        wanted frame is harmed; in such files errors after a seek are confirmed by decoding the
        same frames from the start, and only errors seen there condemn the frames (damage
        anywhere before them then condemns them too: the log cannot say which frame it hit)."""
        frames, errors = self._decode(segments, width, height, size)
        seeked = self._frames.seekable and any(self.gop_start[segment[0]] > 0 for segment in segments)
        if errors and seeked and self._frames.open_gop:
            frames, errors = self._decode(segments, width, height, size, from_start=True)
        if errors:
            indices = [i for segment in segments for i in segment]
            raise DamagedFrames(indices, damage_message(indices, errors), per_frame=False)
        return frames

    def _decode(
        self, segments: list[list[int]], width: int, height: int, size: Size | None, from_start: bool = False
    ) -> tuple[np.ndarray | None, list[str]]:
        command = self._command(segments, size, from_start)
        # Within the video's time limit (extract_keyframes sets it), else DECODE_TIMEOUT_S.
        done = run_limited(command, DECODE_TIMEOUT_S)
        stderr = done.stderr.decode(errors="replace").strip()
        said = [line for line in stderr.splitlines() if not _QUIET.match(line.strip())]
        if done.returncode != 0:
            raise VideoError("decode_error", join_whole("ffmpeg failed", said))
        expected = sum(len(s) for s in segments)
        frame_bytes = width * height * 3
        corrupt = [line.split("] ", 1)[1] for line in said if _CORRUPT_FRAME.match(line.strip())]
        errors = decoder_errors(stderr) + corrupt
        if len(done.stdout) != expected * frame_bytes:
            got = len(done.stdout) / frame_bytes
            if errors:  # frames lost to damage (a GOP cut short), not a file ffmpeg misreads
                return None, [*errors, f"ffmpeg returned {got:g} of {expected} frames"]
            raise VideoError("decode_error", join_whole(f"ffmpeg returned {got:g} of {expected} frames", said))
        frames = np.frombuffer(done.stdout, np.uint8).reshape(expected, height, width, 3)
        return frames, errors

    def _command(self, segments: list[list[int]], size: Size | None, from_start: bool = False) -> list[str]:
        streams = [self._segment_stream(segment, size, from_start) for segment in segments]
        joined = streams[0] if len(streams) == 1 else ffmpeg.concat(*streams, v=1, a=0)
        out = joined.filter("setpts", "N").output("pipe:", format="rawvideo", pix_fmt="rgb24")
        # -copyts keeps each frame's own presentation time, which the select windows use;
        # passthrough hands every selected frame on without duplicating or dropping any. The log
        # goes down to INFO, levels printed, for the decoder's concealment notices.
        global_args = [
            "-nostdin", "-hide_banner", "-nostats", "-loglevel", "level+info", "-copyts",
            "-vsync", "passthrough", "-filter_complex_threads", "1",
        ]  # fmt: skip
        return [require_binary("ffmpeg"), *global_args, *out.get_args()]

    def _segment_stream(self, segment: list[int], size: Size | None, from_start: bool = False):
        if self._frames.exact_pts:
            stream = self._select_by_time(segment, from_start)
        else:
            stream = self._select_by_count(segment)
        if size is not None:
            stream = stream.filter("scale", size[0], size[1], flags="bicubic")
        return stream

    def _input(self, **seek):
        # Only the file protocol and self-contained demuxers, whatever the file turns out to be.
        args = {"noautorotate": None, "threads": 1, **INPUT_OPTIONS, **seek}
        return ffmpeg.input(self._path, **args)[str(self._frames.stream_index)]

    def _select_by_count(self, segment: list[int]):
        """Decode from the first frame; keep frames by their position in the decoded order."""
        stream = self._input().filter("trim", end_frame=segment[-1] + 1)
        return stream.filter("select", "+".join(f"eq(n,{i})" for i in segment))

    def _select_by_time(self, segment: list[int], from_start: bool = False):
        """Seek to the keyframe of the segment's first frame (unless `from_start`); keep frames
        by their presentation times. The seek names a time between that
        keyframe and the next frame, and the demuxer goes to the keyframe at or before it: that
        keyframe, not the one before (a time just before the keyframe would decode the GOP
        before too, and its damage, if any, would condemn the segment). Nothing is cut at the
        seek (`-noaccurate_seek`): the windows pick the frames."""
        pts = self._frames.pts
        windows = [_window(pts, i) for i in segment]
        key = int(self.gop_start[segment[0]])
        after_key = _window(pts, key)[1]
        if not np.isfinite(after_key):  # the keyframe is the last frame
            after_key = float(pts[key]) + 1e-3
        seek = after_key - self._frames.format_start  # -ss counts from the container start
        if not from_start and self._frames.seekable and key > 0 and seek > 0:
            stream = self._input(ss=f"{seek:.6f}", noaccurate_seek=None)
        else:
            stream = self._input()
        following = segment[-1] + 1
        if following < len(pts):
            # Stop decoding at the frame after the last one wanted. Its own time, not a midpoint:
            # trim rounds `end` to the stream's time base (1/fps in AVI), and a midpoint can round
            # down onto the last wanted frame and drop it.
            stream = stream.filter("trim", end=f"{pts[following]:.6f}")
        keep = "+".join(f"between(t,{lo:.6f},{hi:.6f})" for lo, hi in windows)
        return stream.filter("select", keep)

    def close(self) -> None:
        pass  # nothing stays open between reads

    def __enter__(self) -> FfmpegSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _window(pts: np.ndarray, i: int) -> tuple[float, float]:
    """Times that belong to frame i alone: halfway to its neighbours. Halfway points never fall
    on a frame, so rounding of stored timestamps (milliseconds in Matroska) cannot move a frame
    into its neighbour's window."""
    lo = (pts[i - 1] + pts[i]) / 2 if i > 0 else pts[0] - 1.0
    hi = (pts[i] + pts[i + 1]) / 2 if i + 1 < len(pts) else np.inf
    return float(lo), float(hi)


def plan_segments(wanted: list[int], keyframe: np.ndarray) -> list[list[int]]:
    """Group sorted frame indices into runs decoded in one pass.

    Continuing a run to frame i decodes the frames since the previous wanted one; starting a
    new run seeks to the keyframe before i, decodes from there and pays the cost of one more
    input. Take the cheaper, frame by frame. Dense requests (Disparity's candidates) thus
    become sequential passes, sparse ones on short GOPs one seek per frame."""
    positions = np.arange(len(keyframe))
    latest_keyframe = np.maximum.accumulate(np.where(keyframe, positions, 0))
    segments: list[list[int]] = []
    for i in wanted:
        if segments and len(segments[-1]) < MAX_FRAMES_PER_SEGMENT:
            continue_cost = i - segments[-1][-1]
            seek_cost = SEEK_OVERHEAD_FRAMES + i - int(latest_keyframe[i])
            if continue_cost <= seek_cost:
                segments[-1].append(i)
                continue
        segments.append([i])
    return segments

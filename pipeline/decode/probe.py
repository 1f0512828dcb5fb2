"""What a video file holds, read with ffprobe, and why a file cannot be used.

`probe_video` returns the PROBE row of one file (see `pipeline.store.schema.PROBE`) or raises
`VideoError` with a short reason code. The frame list comes from the video packets, not the
container header: the header's frame count is missing in Matroska/WebM and its frame rate is a
nominal one, while the packets give every frame's presentation time. That list is also what the
ffmpeg frame source seeks with (`read_stream_frames`), so both agree on what "frame i" means.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from pipeline.decode.containment import ALLOWED_FAMILIES, INPUT_OPTIONS, check_video_file
from pipeline.decode.errors import VideoError

# Default limits (the stages pass `probe.timeout_seconds` and `keyframes.timeout_seconds`).
# ffprobe reads headers and the packet list, never decodes; one that takes longer is stuck (a
# network mount that hangs), and we would rather report it than stall a worker.
PROBE_TIMEOUT_S = 120.0
# Everything one video's frames take: every ffprobe and ffmpeg process, both backends.
DECODE_TIMEOUT_S = 600.0

# Demuxers without a frame index (MPEG transport and program streams, raw elementary streams):
# seeking in them lands near, not at, a keyframe, and decoders then drop frames.
UNINDEXED_CONTAINERS = frozenset({"mpegts", "mpeg", "mpegvideo", "h264", "hevc", "m4v"})

# Messages demuxers print when the file stops before the data its index or headers promise.
_TRUNCATION_MESSAGES = ("partial file", "ended prematurely", "truncated")


@dataclass
class VideoMeta:
    """One PROBE row without video_id and path."""

    size_bytes: int
    container: str | None
    codec: str | None
    duration: float | None  # seconds, first frame to the end of the last one
    fps: float | None  # average frame rate
    frame_count: int | None
    width: int | None  # as stored, before rotation
    height: int | None
    rotation: int  # degrees clockwise to display upright: 0/90/180/270
    variable_frame_rate: bool


@dataclass(frozen=True)
class StreamFrames:
    """Every frame of the video stream in presentation order, from its packet list."""

    stream_index: int
    width: int
    height: int
    format_start: float  # container start time; ffmpeg's input -ss counts from here
    pts: np.ndarray  # presentation time of each frame, seconds on the stream's clock, ascending
    keyframe: np.ndarray  # bool per frame: decoding can start here
    # False when packets lack presentation times (AVI with B-frames, MPEG program streams): `pts`
    # is then rebuilt from decode times or the frame rate and only frame counting is exact.
    exact_pts: bool
    seekable: bool  # the container has a frame index (not in UNINDEXED_CONTAINERS)
    # Some keyframe is stored before frames shown ahead of it (an open GOP's leading pictures,
    # predicted from the GOP before as well): a seek there makes the decoder report them.
    open_gop: bool = False

    @property
    def timestamps(self) -> np.ndarray:
        """Seconds since the first frame."""
        return self.pts - self.pts[0] if len(self.pts) else self.pts


def require_binary(name: str) -> str:
    """Path of an FFmpeg command-line tool, or a clear error saying how to get it."""
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not on PATH; install it with apt-get install ffmpeg")
    return found


@cache
def ffmpeg_version() -> str:
    """First line of `ffmpeg -version`, recorded as the ffmpeg decoder's version."""
    out = subprocess.run(
        [require_binary("ffmpeg"), "-version"], capture_output=True, text=True, check=True
    )
    return out.stdout.splitlines()[0].strip()


# ---- time limits --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TimeLimit:
    """A time budget for one video's work: every ffprobe and ffmpeg process run while it is
    applied is killed when it runs out. Work that ends after it (in-process decoders such as
    decord cannot be stopped) fails as `timeout` too, so a video is never stored late, and work
    started after it fails at once."""

    seconds: float
    what: str  # what is limited, for the message: "ffprobe", "decoding"
    ends: float  # time.monotonic() at which it runs out

    @classmethod
    def start(cls, seconds: float, what: str) -> TimeLimit:
        if not seconds > 0:
            raise ValueError(f"a time limit must be > 0 seconds, got {seconds}")
        return cls(seconds, what, time.monotonic() + seconds)

    def left(self) -> float:
        return self.ends - time.monotonic()

    def expired(self) -> VideoError:
        return VideoError("timeout", f"{self.what} took longer than its {self.seconds:g} s time limit")

    @contextmanager
    def applied(self):
        if self.left() <= 0:
            raise self.expired()
        token = _LIMIT.set(self)
        try:
            yield
        finally:
            _LIMIT.reset(token)
        if self.left() <= 0:
            raise self.expired()


# The limit applied to the video being worked on. A context variable rather than an argument so
# that it reaches every ffprobe and ffmpeg process of one video (the ffmpeg source runs ffprobe
# when it opens a file, then decodes in several processes) through the decoders' common interface.
_LIMIT: ContextVar[TimeLimit | None] = ContextVar("video_time_limit", default=None)


def time_limit(seconds: float, what: str):
    """`with time_limit(30, "ffprobe"):` applies a fresh TimeLimit."""
    return TimeLimit.start(seconds, what).applied()


def run_limited(command: list[str], default_seconds: float, *, text: bool = False) -> subprocess.CompletedProcess:
    """Run an FFmpeg tool within the enclosing `time_limit` (else `default_seconds`); past it the
    process is killed and VideoError("timeout") raised."""
    tool = Path(command[0]).name
    limit = _LIMIT.get() or TimeLimit.start(default_seconds, tool)
    left = limit.left()
    if left <= 0:
        raise VideoError("timeout", f"{tool} not started: the {limit.seconds:g} s time limit has run out")
    try:
        return subprocess.run(command, capture_output=True, text=text, timeout=left)
    except subprocess.TimeoutExpired:
        raise VideoError("timeout", f"{tool} did not finish within the {limit.seconds:g} s time limit") from None


def input_flags() -> list[str]:
    """Command-line options for an FFmpeg input: the file protocol only, the allowed demuxers only."""
    return [flag for key, value in INPUT_OPTIONS.items() for flag in (f"-{key}", value)]


# ---- ffprobe ----------------------------------------------------------------------------------


def _open_checked(path: str, video_root: str | None) -> tuple[str, int]:
    """The real path to hand to ffprobe and its size, after the containment check; a file whose
    first bytes match no known format is not given to ffprobe at all."""
    checked = check_video_file(path, video_root)
    if checked.container is None:
        raise VideoError(
            "corrupt", f"{path}: its first bytes are no known container's ({ALLOWED_FAMILIES}): not a video file, "
            "or its header is damaged"
        )
    return checked.path, checked.size


@dataclass(frozen=True)
class Packets:
    pts: np.ndarray  # seconds, in file (decode) order; NaN where the packet has none
    dts: np.ndarray
    duration: np.ndarray  # seconds, NaN where unknown
    keyframe: np.ndarray
    end_offset: np.ndarray  # byte offset just after each packet, -1 where unknown
    discarded: np.ndarray  # packets an edit list drops from presentation


@dataclass(frozen=True)
class _Probe:
    info: dict  # ffprobe's format and (video) streams
    stream: dict  # the video stream we decode
    packets: Packets  # that stream's packets
    stderr: str  # ffprobe's warnings and errors


def _run_ffprobe(path: str) -> _Probe:
    """One ffprobe call for container, video streams and their packet list: every ffprobe
    process costs ~0.1 s of start-up and stream probing, more than reading the packets."""
    command = [
        require_binary("ffprobe"), "-hide_banner", "-v", "warning", "-select_streams", "v",
        "-show_format", "-show_streams",
        "-show_entries", "packet=stream_index,pts_time,dts_time,duration_time,pos,size,flags",
        "-of", "json", *input_flags(), path,
    ]  # fmt: skip
    done = run_limited(command, PROBE_TIMEOUT_S, text=True)
    stderr = done.stderr.strip()
    if done.returncode != 0:
        raise _classify_open_failure(path, stderr)
    try:
        info = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise VideoError("corrupt", f"ffprobe printed no readable description: {stderr}") from None
    if "format" not in info:
        raise VideoError("corrupt", f"ffprobe found no container: {stderr}")
    stream = _choose_video_stream(info)
    _check_decodable(stream, stderr)
    packets = [p for p in info.get("packets", []) if p.get("stream_index") == stream["index"]]
    return _Probe(info=info, stream=stream, packets=_packet_arrays(packets), stderr=stderr)


def _classify_open_failure(path: str, stderr: str) -> VideoError:
    lowered = stderr.lower()
    if any(m in lowered for m in _TRUNCATION_MESSAGES):
        return VideoError("truncated", stderr)
    # An MP4 cut before its index ("moov") fails exactly like random bytes with an .mp4 name;
    # tell them apart by the box structure: a real MP4 whose boxes run past the end was cut.
    if "moov atom not found" in lowered and _mp4_boxes_run_past_end(path):
        return VideoError("truncated", f"the MP4 ends inside its data, before its index: {stderr}")
    return VideoError("corrupt", stderr or "ffprobe could not read the file")


def _mp4_boxes_run_past_end(path: str) -> bool:
    """True when the file starts like an ISO-BMFF file (ftyp box) and a top-level box is
    declared longer than what is left of the file."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        if f.read(8)[4:8] != b"ftyp":
            return False
        offset = 0
        while offset + 8 <= size:
            f.seek(offset)
            header = f.read(16)
            box_size = int.from_bytes(header[0:4], "big")
            if box_size == 1 and len(header) >= 16:  # 64-bit size follows the type
                box_size = int.from_bytes(header[8:16], "big")
            if box_size == 0:  # "extends to end of file": cannot be cut short by definition
                return False
            if box_size < 8:
                return False  # not a box structure after all
            if offset + box_size > size:
                return True
            offset += box_size
    return False


def _choose_video_stream(info: dict) -> dict:
    """The first real video stream (cover art in audio files is a video stream too)."""
    for stream in info.get("streams", []):
        is_cover_art = stream.get("disposition", {}).get("attached_pic") == 1
        if stream.get("codec_type") == "video" and not is_cover_art:
            return stream
    total = info["format"].get("nb_streams", 0)
    raise VideoError("no_video_stream", f"none of the file's {total} streams is a video")


def _check_decodable(stream: dict, stderr: str) -> None:
    codec = stream.get("codec_name")
    # ffprobe warns about every stream it has no decoder for; only ours matters (phones add
    # timecode and metadata streams that nothing decodes).
    pattern = rf"unsupported codec .* for input stream {stream['index']}\b"
    no_decoder = re.search(pattern, stderr, re.IGNORECASE)
    if not codec or codec == "none" or no_decoder:
        tag = stream.get("codec_tag_string", "?")
        raise VideoError(
            "unsupported_codec",
            f"ffmpeg has no decoder for video stream {stream.get('index')} "
            f"(codec {codec or 'unknown'}, tag {tag})",
        )


def _packet_arrays(rows: list[dict]) -> Packets:
    return Packets(
        pts=np.array([_seconds(r.get("pts_time")) for r in rows], float),
        dts=np.array([_seconds(r.get("dts_time")) for r in rows], float),
        duration=np.array([_seconds(r.get("duration_time")) for r in rows], float),
        keyframe=np.array(["K" in r.get("flags", "") for r in rows], bool),
        end_offset=np.array([_end_offset(r) for r in rows], np.int64),
        discarded=np.array(["D" in r.get("flags", "") for r in rows], bool),
    )


def _seconds(*candidates: str | None) -> float:
    for value in candidates:
        if value not in (None, "", "N/A"):
            return float(value)
    return float("nan")


def _end_offset(row: dict) -> int:
    pos, size = row.get("pos", "N/A"), row.get("size", "N/A")
    if pos in ("N/A", "") or size in ("N/A", ""):
        return -1
    return int(pos) + int(size)


def _stream_frames(info: dict, stream: dict, packets: Packets) -> StreamFrames:
    rate = _fraction(stream.get("avg_frame_rate")) or _fraction(stream.get("r_frame_rate"))
    return frames_from_packets(
        packets,
        stream_index=int(stream["index"]),
        width=int(stream.get("width") or 0),
        height=int(stream.get("height") or 0),
        format_start=_seconds(info["format"].get("start_time")) if _has_start(info) else 0.0,
        format_name=info["format"].get("format_name", ""),
        frame_rate=rate,
    )


def frames_from_packets(
    packets: Packets, *, stream_index: int, width: int, height: int, format_start: float, format_name: str,
    frame_rate: float | None,
) -> StreamFrames:  # fmt: skip
    """The frame list from a stream's packets in file order (what ffprobe or PyAV's demuxer read)."""
    if not (~packets.discarded).any():
        raise VideoError("corrupt", "the video stream has no frames")
    shown = ~packets.discarded
    pts, dts, keyframe = packets.pts[shown], packets.dts[shown], packets.keyframe[shown]
    exact = not np.isnan(pts).any()
    if not exact:
        # Without presentation times, frame k is shown at the k-th smallest decode time (AVI
        # stores one frame per tick), or at k / rate for raw streams that have neither.
        pts = dts if not np.isnan(dts).any() else np.arange(len(pts)) / (frame_rate or 25.0)
    order = np.argsort(pts, kind="stable")
    # Shown before keyframe k but stored after it: the latest-stored frame shown before each
    # keyframe comes after the keyframe in the file.
    stored_by_then = np.maximum.accumulate(order)
    keys = np.flatnonzero(keyframe[order])
    keys = keys[keys > 0]
    open_gop = bool(exact and (stored_by_then[keys - 1] > order[keys]).any())
    return StreamFrames(
        stream_index=stream_index,
        width=width,
        height=height,
        format_start=format_start,
        pts=pts[order],
        keyframe=keyframe[order],
        exact_pts=exact,
        seekable=not set(format_name.split(",")) & UNINDEXED_CONTAINERS,
        open_gop=open_gop,
    )


def _has_start(info: dict) -> bool:
    return info["format"].get("start_time") not in (None, "", "N/A")


def _fraction(text: str | None) -> float | None:
    if not text or "/" not in text:
        return None
    num, den = (float(x) for x in text.split("/"))
    return num / den if num > 0 and den > 0 else None


# ---- public ------------------------------------------------------------------------------------


def check_readable(path: str) -> None:
    """The checks `read_stream_frames` makes before any demuxer opens the file (containment, a
    known container's signature), for readers that list frames themselves."""
    _open_checked(path, None)


def read_stream_frames(path: str) -> StreamFrames:
    """The frame list of a file's video stream, for decoding. Unlike `probe_video` this does not
    judge truncation: a cut file still has the frames before the cut. ffprobe runs within the
    enclosing `time_limit`, else `PROBE_TIMEOUT_S`."""
    real, _ = _open_checked(path, None)
    probe = _run_ffprobe(real)
    return _stream_frames(probe.info, probe.stream, probe.packets)


def probe_video(path: str, *, video_root: str | None = None, timeout_seconds: float = PROBE_TIMEOUT_S) -> VideoMeta:
    """Describe one video file, or raise VideoError saying why it cannot be used. With
    `video_root`, a file whose real path lies outside it is refused (`outside_root`)."""
    real, size = _open_checked(path, video_root)
    with time_limit(timeout_seconds, "ffprobe"):
        probe = _run_ffprobe(real)
    _check_complete(probe, size)
    frames = _stream_frames(probe.info, probe.stream, probe.packets)
    duration = _duration(frames.pts, _last_frame_duration(probe.packets))
    vfr = _is_variable_frame_rate(frames.pts, probe.stream)
    return VideoMeta(
        size_bytes=size,
        container=_container_name(probe.info["format"].get("format_name", ""), path),
        codec=probe.stream.get("codec_name"),
        duration=duration,
        fps=_average_fps(probe.stream, len(frames.pts), duration, vfr),
        frame_count=len(frames.pts),
        width=frames.width or None,
        height=frames.height or None,
        rotation=_rotation(probe.stream),
        variable_frame_rate=vfr,
    )


def _check_complete(probe: _Probe, size: int) -> None:
    lowered = probe.stderr.lower()
    if any(m in lowered for m in _TRUNCATION_MESSAGES):
        raise VideoError("truncated", probe.stderr)
    if (probe.packets.end_offset > size).any():
        raise VideoError("truncated", "the index points at frames beyond the end of the file")
    declared = int(probe.stream.get("nb_frames") or 0)  # AVI and MP4 headers state it
    held = len(probe.packets.pts)
    if declared > held:
        raise VideoError(
            "truncated", f"the header declares {declared} frames, the file holds {held}"
        )


def _median_step(pts: np.ndarray) -> float:
    steps = np.diff(pts)
    steps = steps[steps > 0]
    return float(np.median(steps)) if len(steps) else 0.0


def _last_frame_duration(packets: Packets) -> float:
    shown = ~packets.discarded
    times = np.where(np.isnan(packets.pts), packets.dts, packets.pts)[shown]
    if len(times) == 0 or np.isnan(times).all():
        return float("nan")
    return float(packets.duration[shown][np.nanargmax(times)])


def _duration(pts: np.ndarray, last_frame_duration: float) -> float:
    """First frame's start to the last frame's end."""
    last = last_frame_duration
    if not np.isfinite(last) or last <= 0:
        last = _median_step(pts)
    return round(float(pts[-1] - pts[0]) + last, 6)


def _is_variable_frame_rate(pts: np.ndarray, stream: dict) -> bool:
    """Frame intervals differ by more than timestamp rounding (Matroska stores milliseconds, so
    a 30 fps file alternates 33 and 34 ms) and more than 1% jitter."""
    steps = np.diff(pts)
    if len(steps) < 2:
        return False
    tick = _fraction(stream.get("time_base")) or 0.0
    median = float(np.median(steps))
    tolerance = max(1.5 * tick, 0.01 * median, 1e-6)
    return bool((np.abs(steps - median) > tolerance).any())


def _average_fps(stream: dict, frame_count: int, duration: float, vfr: bool) -> float | None:
    # The container's average rate is exact for constant rates; for variable ones Matroska
    # reports the nominal rate, so count frames instead.
    declared = _fraction(stream.get("avg_frame_rate"))
    if declared and not vfr:
        return declared
    return frame_count / duration if duration > 0 else declared


def _rotation(stream: dict) -> int:
    """Clockwise degrees to display upright. ffprobe reports the display matrix angle
    counter-clockwise (this is the rotation that ffmpeg's autorotate undoes); the legacy
    `rotate` tag is already clockwise."""
    for side_data in stream.get("side_data_list", []):
        if "rotation" in side_data:
            return _quarter_turn(-float(side_data["rotation"]))
    tag = stream.get("tags", {}).get("rotate")
    return _quarter_turn(float(tag)) if tag else 0


def _quarter_turn(degrees: float) -> int:
    return int(round(degrees / 90.0)) * 90 % 360


def _container_name(format_name: str, path: str) -> str | None:
    """ffprobe names demuxers by family ("mov,mp4,m4a,3gp,3g2,mj2"); pick the member that
    matches the file's extension, else the first."""
    aliases = [a for a in format_name.split(",") if a]
    extension = Path(path).suffix.lower().lstrip(".")
    if extension in aliases:
        return extension
    return aliases[0] if aliases else None

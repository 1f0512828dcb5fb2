"""Frame sources: one video opened with one decoder, read by frame index.

Both backends number frames the same way (presentation order, as the packet list gives them),
return frames as stored (no rotation applied), and decode single-threaded because Ray runs one
decoder per worker process. `open_source(path, "decord" | "ffmpeg")` is the entry point.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from pipeline.decode.decoder_log import captured_stderr, damage_message, decoder_errors
from pipeline.decode.errors import DamagedFrames, VideoError
from pipeline.decode.ffmpeg_source import FfmpegSource
from pipeline.decode.frames import Size, distinct_indices, gop_starts, resize_frames, scaled_size, to_gray
from pipeline.decode.probe import UNINDEXED_CONTAINERS, ffmpeg_version
from pipeline.decode.pyav_source import PyavSource, pyav_version

Backend = Literal["decord", "ffmpeg", "pyav"]

# decord decodes a batch into one array; at full size keep batches small enough that a 4K
# video does not need gigabytes.
_DECORD_BATCH = 16

# FFmpeg's av_log flag that prints each line's level (`[h264 @ 0x..] [info] ...`).
_AV_LOG_PRINT_LEVEL = 2


class FrameSource(Protocol):
    name: str  # "pyav", "decord" or "ffmpeg"
    version: str  # decoder version, for provenance
    frame_count: int
    timestamps: np.ndarray  # float64 seconds since the first frame, one per frame
    width: int  # as stored, before rotation
    height: int

    def read(self, indices: list[int], size: Size | None = None) -> np.ndarray:
        """uint8 [n, H, W, 3] RGB frames, in the order of `indices` (which may repeat)."""
        ...

    # A source whose DamagedFrames cannot name frames (`per_frame=False`) may also carry
    # `gop_start: np.ndarray`, the keyframe at or before each frame, so that the frames it
    # condemns together can be told apart GOP by GOP (keyframes._CleanReader).

    def read_gray(self, indices: list[int], size: Size) -> np.ndarray:
        """uint8 [n, h, w] luma of the frames, resized to `size`."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> FrameSource: ...

    def __exit__(self, *exc) -> None: ...


def open_source(path: str, backend: Backend, short_side: int = 0) -> FrameSource:
    """Open `path` with one decoder. `short_side` says at what size most frames will be read
    (`scaled_size`), so a decoder that must prepare per size can do so once. Raises VideoError
    (missing file, no video stream, ...) or the decoder's own exception when it cannot open."""
    if not os.path.isfile(path):
        raise VideoError("missing", f"no such file: {path}")
    if backend == "decord":
        return DecordSource(path, short_side)
    if backend == "ffmpeg":
        return FfmpegSource(path)
    if backend == "pyav":
        return PyavSource(path)
    raise ValueError(f"unknown decoder backend {backend!r}; use 'decord', 'ffmpeg' or 'pyav'")


def backend_version(backend: Backend) -> str:
    """The decoder's version without opening a video, for provenance metadata."""
    if backend == "decord":
        import decord

        return decord.__version__
    if backend == "pyav":
        return pyav_version()
    return ffmpeg_version()


# ---- when decord can be trusted ------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """What PyAV sees of the video stream without decoding it (one frame aside)."""

    width: int  # as stored
    height: int
    rotation: int  # clockwise degrees to upright
    frame_count: int  # packets
    unsafe_for_decord: str | None  # why decord would return wrong frames, if it would


def _inspect_layout(path: str) -> _Layout:
    """Read the packet list with PyAV (in-process, a few ms for a 5 MB file, where an ffprobe
    process costs ~0.1 s) and decode the first frame for its display rotation."""
    import av

    with av.open(path) as container:
        cover_art = av.stream.Disposition.attached_pic
        videos = [s for s in container.streams.video if not s.disposition & cover_art]
        if not videos:
            raise VideoError("no_video_stream", f"{path} has no video stream")
        stream = videos[0]
        stream.thread_count = 1
        pts: list[int | None] = []
        keyframe: list[bool] = []
        first = None
        for packet in container.demux(stream):
            if packet.size == 0:  # end-of-stream marker
                continue
            pts.append(packet.pts)
            keyframe.append(packet.is_keyframe)
            if first is None:
                first = next(iter(packet.decode()), None)
        formats = set(container.format.name.split(","))
    if first is None:
        raise VideoError("decode_error", "PyAV decoded no frame")
    unsafe = None
    if formats & UNINDEXED_CONTAINERS:  # measured: H.264 in MPEG-TS, MPEG-2 in MPEG-PS
        unsafe = f"decord seeks inaccurately in {container.format.name} files"
    elif any(p is None for p in pts):
        unsafe = "packets without presentation times; decord seeks to wrong frames"
    elif _has_open_gop(pts, keyframe):
        unsafe = "open GOPs (frames shown before their keyframe); decord seeks to wrong frames"
    # PyAV (>= 13) gives the display matrix angle counter-clockwise, as ffprobe does.
    rotation = int(round(-first.rotation / 90)) * 90 % 360
    return _Layout(
        width=first.width,
        height=first.height,
        rotation=rotation,
        frame_count=len(pts),
        unsafe_for_decord=unsafe,
    )


def _has_open_gop(pts: list[int], keyframe: list[bool]) -> bool:
    """A packet after a (non-first) keyframe in decode order but shown before it: a leading
    picture of an open GOP (default in x265 and MPEG-2 encoders, an option in x264)."""
    keyframes_seen, keyframe_pts = 0, 0
    for time, is_key in zip(pts, keyframe, strict=True):
        if is_key:
            keyframes_seen, keyframe_pts = keyframes_seen + 1, time
        elif keyframes_seen >= 2 and time < keyframe_pts:
            return True
    return False


# ---- decord -------------------------------------------------------------------------------------


class DecordSource:
    """decord's VideoReader, one thread. decord seeks to the keyframe before each wanted frame
    and decodes forward, so sparse batches cost about one GOP per frame.

    decord returns wrong frames, silently, after seeking in some files (measured: open-GOP
    H.264/HEVC, MPEG-TS, AVI with B-frames); opening such a file raises VideoError so that the
    ffmpeg backend takes over. decord also applies the display rotation itself (and its resize
    breaks on rotated videos), so for rotated videos frames are read at full size, turned back
    to the stored orientation and resized here."""

    name = "decord"

    def __init__(self, path: str, short_side: int = 0):
        import decord

        layout = _inspect_layout(path)
        if layout.unsafe_for_decord:
            reason = layout.unsafe_for_decord
            raise VideoError("decode_error", f"not decoding with decord: {reason}")
        self.version = decord.__version__
        self.width, self.height, self._rotation = layout.width, layout.height, layout.rotation
        # Error lines are how decoding errors that FFmpeg conceals show (see `_checked_batch`).
        decord.logging.set_level(decord.logging.ERROR)
        self._decord = decord
        self._path = path
        # decord scales while it converts to RGB, but one reader serves one size: open the size
        # the frames will be read at first (its frame count and times are the same).
        first = None if self._rotation else scaled_size(self.width, self.height, short_side)
        self._readers: dict[Size | None, decord.VideoReader] = {first: self._open(first)}
        self.frame_count = len(self._readers[first])
        if self.frame_count != layout.frame_count:
            raise VideoError(
                "decode_error",
                f"decord counts {self.frame_count} frames, the file has {layout.frame_count}",
            )
        self.timestamps = self._timestamps(self._readers[first])
        # The keyframe at or before each frame: a batch holds one GOP's frames (see `_batch`).
        keys = np.zeros(self.frame_count, bool)
        keys[np.asarray(self._readers[first].get_key_indices(), np.int64)] = True
        keys[0] = True
        self.gop_start = gop_starts(keys)

    def _timestamps(self, reader) -> np.ndarray:
        stamps = reader.get_frame_timestamp(np.arange(self.frame_count))[:, 0].astype(np.float64)
        stamps -= stamps[0]
        if np.isfinite(stamps).all() and (np.diff(stamps) > 0).all():
            return np.round(stamps, 6)  # decord keeps float32: drop its sub-microsecond noise
        # Packets without presentation times (AVI with B-frames): decord then reports garbage
        # times and, measured, seeks to the wrong frames. Refuse, so the ffmpeg backend (which
        # counts frames in such files) takes over.
        raise VideoError(
            "decode_error", "decord has no frame timestamps for this file and cannot seek in it"
        )

    def _reader(self, size: Size | None):
        if size not in self._readers:
            self._readers[size] = self._open(size)
        return self._readers[size]

    def _open(self, size: Size | None):
        width, height = size or (-1, -1)
        return self._decord.VideoReader(
            self._path, ctx=self._decord.cpu(0), num_threads=1, width=width, height=height
        )

    def read(self, indices: list[int], size: Size | None = None) -> np.ndarray:
        wanted, inverse = distinct_indices(indices, self.frame_count)
        if self._rotation or size is None:
            frames = self._read_stored(wanted)
            return (resize_frames(frames, size) if size else frames)[inverse]
        return self._batch(self._reader(size), wanted, size)[inverse]

    def read_gray(self, indices: list[int], size: Size) -> np.ndarray:
        return to_gray(self.read(indices, size))

    def _read_stored(self, wanted: list[int]) -> np.ndarray:
        """Full-size frames, back in the stored orientation."""
        frames = self._batch(self._reader(None), wanted, None)
        # decord turned them clockwise by the rotation; np.rot90 turns counter-clockwise.
        return np.ascontiguousarray(np.rot90(frames, k=self._rotation // 90, axes=(1, 2)))

    def _batch(self, reader, wanted: list[int], size: Size | None) -> np.ndarray:
        """Each batch holds frames of one GOP, so an error the log cannot tie to a frame condemns
        only frames that may have been predicted from the damage."""
        chunks = []
        wanted_array = np.asarray(wanted, np.int64)
        for gop in np.split(wanted_array, np.flatnonzero(np.diff(self.gop_start[wanted_array])) + 1):
            batches = [gop[i : i + _DECORD_BATCH].tolist() for i in range(0, len(gop), _DECORD_BATCH)]
            chunks += [self._checked_batch(reader, batch) for batch in batches]
        if chunks:
            return np.concatenate(chunks)
        width, height = size or (self.width, self.height)
        if self._rotation in (90, 270) and size is None:
            width, height = height, width  # decord's (rotated) shape, turned back by the caller
        return np.empty((0, height, width, 3), np.uint8)

    def _checked_batch(self, reader, indices: list[int]) -> np.ndarray:
        """decord's frames, unless its FFmpeg logged a decoding error or concealment while making
        them. decord goes on from where its last read stopped when the next frame is further in
        the same GOP, so errors logged by that read would not be logged again: the reader is sent
        back to frame 0 first, and decodes each batch from its keyframe. The error may lie in any
        frame decoded since, and the whole batch is reported."""
        log_flags = self._decord._ffi.base._LIB.av_log_get_flags()
        self._decord._ffi.base._LIB.av_log_set_flags(log_flags | _AV_LOG_PRINT_LEVEL)
        self._decord.logging.set_level(self._decord.logging.INFO)  # concealment is logged at INFO
        try:
            with captured_stderr() as lines:
                reader.seek(0)
                frames = reader.get_batch(indices).asnumpy()
        finally:
            self._decord.logging.set_level(self._decord.logging.ERROR)
            self._decord._ffi.base._LIB.av_log_set_flags(log_flags)
        errors = decoder_errors("\n".join(lines))
        if errors:
            raise DamagedFrames(indices, damage_message(indices, errors), per_frame=False)
        return frames

    def close(self) -> None:
        self._readers.clear()  # decord frees the file when its reader is collected

    def __enter__(self) -> DecordSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

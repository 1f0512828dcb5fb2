"""The PyAV frame source: FFmpeg's decoder in-process, seeking to the keyframe before each group of
wanted frames and decoding forward only as far as the last of them.

Frame i is the i-th entry of the packet list sorted by presentation time (`read_stream_frames`),
as for the other backends. Decoded frames are matched to that list by their presentation time,
never by counting after a seek, so a seek that lands on another keyframe than asked costs time
but cannot shift frames. Where that is not possible the source decodes from the first packet,
as the ffmpeg source does: in containers without a frame index (MPEG-TS/PS, where a seek lands
near a keyframe), and where packets lack presentation times (AVI with B-frames), whose frames
are then counted.

Integrity: FFmpeg conceals decoding errors (a damaged frame and every frame predicted from it
come out smeared but look like frames). The source collects, per packet, the decoder's error
messages and concealment notices, its exceptions, and the corrupt flags of packets and frames;
a requested frame is damaged when such a report came from any packet of its GOP up to its own
(every frame decoded since the keyframe, whether or not others refer to it: the decord and
ffmpeg backends see the same) or from the few packets after it (where damage the decoder
decoded without noticing usually shows), or, for a leading picture of an open GOP, from the GOP
before. After the last wanted frame of a pass the next packets are checked for broken structure
without decoding them. `read` then raises `DamagedFrames` naming the requested indices instead
of returning pixels. Damage that the decoder decodes as valid data, with nothing wrong in the
rest of the GOP, cannot be seen this way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from pipeline.decode.containment import INPUT_OPTIONS
from pipeline.decode.decoder_log import damage_message, is_concealment
from pipeline.decode.decoder_log import one_line as _one_line
from pipeline.decode.errors import DamagedFrames
from pipeline.decode.frames import Size, distinct_indices, to_gray
from pipeline.decode.probe import (
    Packets,
    StreamFrames,
    VideoError,
    check_readable,
    frames_from_packets,
    read_stream_frames,
)

# Seeking (an index look-up, flushing the decoder, demuxing to the keyframe) costs about as much
# as decoding this many frames; a pass goes on to the next wanted frame rather than seeking
# when the keyframe before it is no further than this past the last frame decoded.
SEEK_OVERHEAD_FRAMES = 5

# Where a seek lands after the keyframe asked for (an index keyed on decode times), seek again
# this many keyframes earlier before decoding from the first packet.
SEEK_RETRIES = 2

# After a pass's last wanted frame, the structure of up to this many following packets of its GOP
# is checked for damage running on from the frames decoded.
LOOKAHEAD_PACKETS = 25

# Demuxers whose packets carry stored presentation times, so PyAV's packet list is ffprobe's.
# For the others (AVI, MPEG-PS, Ogg, ASF) demuxers guess missing times, and FFmpeg versions guess
# differently (PyAV's FFmpeg 8 gives B-frame AVI packets times the system ffprobe leaves empty):
# their frame list comes from ffprobe, as for the other backends.
IN_PROCESS_LISTED = frozenset({"mov", "mp4", "matroska", "webm", "flv", "live_flv", "mpegts"})



def pyav_version() -> str:
    import av

    return f"PyAV {av.__version__} (FFmpeg {av.ffmpeg_version_info})"


@dataclass
class _Pass:
    """One decode pass: the frames it must deliver and the keyframe it starts from (None: the
    first packet of the file)."""

    wanted: list[int]
    start: int | None


def plan_passes(wanted: list[int], keyframe: np.ndarray, seek_overhead: int) -> list[_Pass]:
    """Group sorted frame indices into decode passes, each seeking to the keyframe at or before
    its first frame. Going on to frame i costs the frames since the previous wanted one, seeking
    costs the overhead and the frames since the keyframe before i: a pass goes on when the
    keyframe before i is at most `seek_overhead` frames past the previous wanted frame, so frames
    of one GOP always share a pass."""
    positions = np.arange(len(keyframe))
    latest_key = np.maximum.accumulate(np.where(keyframe, positions, -1))
    passes: list[_Pass] = []
    for i in wanted:
        key = int(latest_key[i])
        if passes and key - passes[-1].wanted[-1] <= seek_overhead:
            passes[-1].wanted.append(i)
        else:
            passes.append(_Pass([i], key if key >= 0 else None))
    return passes


class _FrameClock:
    """Frame index of a presentation time: the nearest frame of the packet list, if the time is
    closer to it than to its neighbours (the list's times are ffprobe's, printed in microseconds,
    so exact tick equality would not hold for fine time bases)."""

    def __init__(self, pts: np.ndarray, time_base):
        self._pts = pts
        self._bounds = (pts[:-1] + pts[1:]) / 2
        gaps = np.diff(pts)
        self._first_tolerance = gaps[0] / 2 if len(gaps) else np.inf
        self._last_tolerance = gaps[-1] / 2 if len(gaps) else np.inf
        self._time_base = float(time_base)

    def ticks(self, index: int) -> int:
        return int(round(self._pts[index] / self._time_base))

    def index(self, ticks: int | None) -> int | None:
        if ticks is None:
            return None
        time = ticks * self._time_base
        i = int(np.searchsorted(self._bounds, time, side="right"))
        if i == 0 and self._pts[0] - time > self._first_tolerance:
            return None  # before the first frame: e.g. a packet an edit list drops
        if i == len(self._pts) - 1 and time - self._pts[-1] > self._last_tolerance:
            return None
        return i


class _Damage:
    """What the decoder reported while one pass decoded its packets (error messages,
    exceptions, frames and packets flagged as corrupt), and which frames that may have reached.

    A frame is damaged by a report in its GOP (a keyframe starts one) from any packet decoded
    before its own (it may be predicted from it, or the damage may have spread from it unseen),
    or up to LOOKAHEAD_PACKETS after it: a damaged picture often decodes "cleanly" and the damage
    shows only in the next packets. The leading picture of an open GOP (shown before its
    keyframe) is predicted from the GOP before as well. The demuxer's own messages (e.g. a
    truncated file's end) blame no frame; they are only quoted for frames that never came out."""

    def __init__(self) -> None:
        self._reports: list[tuple[int, int, str]] = []  # (GOP, packet in decode order, words)
        self._gop, self._packet, self._key = -1, -1, None
        self._frames: dict[int, tuple[int, int, bool]] = {}  # frame -> (GOP, packet, leading)
        self.demuxer: list[str] = []

    def packet(self, index: int | None, is_key: bool, errors: list[str]) -> None:
        self._packet += 1
        if is_key or self._gop < 0:
            self._gop, self._key = self._gop + 1, index if is_key else None
        self._reports += [(self._gop, self._packet, e) for e in errors]
        if index is not None:
            leading = self._key is not None and index < self._key
            self._frames[index] = (self._gop, self._packet, leading)

    def counted_frame(self, index: int) -> None:
        """A frame known only by its position: its packet was this one or an earlier one, of
        this GOP or the one before."""
        self._frames[index] = (self._gop, self._packet, True)

    def corrupt_frame(self, index: int | None) -> None:
        gop, packet, _ = self._frames.get(index, (self._gop, self._packet, False))
        self._reports.append((max(gop, 0), packet, f"the decoder flagged frame {index} as corrupt"))

    def of_frame(self, index: int) -> list[str]:
        gop, packet, leading = self._frames.get(index, (self._gop, self._packet, True))
        return [
            words
            for g, p, words in self._reports
            if (g == gop and p <= packet + LOOKAHEAD_PACKETS) or (leading and g == gop - 1)
        ]

    @property
    def all(self) -> list[str]:
        return [words for _, _, words in self._reports] + self.demuxer


@dataclass
class _Result:
    frames: dict[int, np.ndarray] = field(default_factory=dict)
    damaged: dict[int, tuple[str, ...]] = field(default_factory=dict)

    def raise_if_damaged(self) -> None:
        if not self.damaged:
            return
        indices = sorted(self.damaged)
        errors = [e for i in indices for e in self.damaged[i]]
        raise DamagedFrames(indices, damage_message(indices, errors))


class PyavSource:
    """PyAV (FFmpeg's libraries in-process), one thread, seeking per group of wanted frames."""

    name = "pyav"

    def __init__(self, path: str):
        import av
        import av.logging
        from av.video.reformatter import Interpolation, VideoReformatter

        self._av = av
        self._path = path
        self._container = None
        self._at_start = False  # the open container has not been read from yet
        self._frames: StreamFrames = self._list_frames()
        self.version = pyav_version()
        self.frame_count = len(self._frames.pts)
        self.timestamps = np.round(self._frames.timestamps, 6)
        self.width, self.height = self._frames.width, self._frames.height
        self._reformatter = VideoReformatter()
        self._bicubic = Interpolation.BICUBIC  # what the ffmpeg source's scale filter uses
        if self._container is None:
            self._open()
        self._clock = _FrameClock(self._frames.pts, self._stream.time_base)
        # Work done, for tests and benchmarks.
        self.packets_decoded = 0  # sent to the decoder to decode
        self.packets_checked = 0  # sent only to check their structure
        self.frames_decoded = 0
        self.seeks = 0

    # ---- opening -------------------------------------------------------------------------------

    def _list_frames(self) -> StreamFrames:
        """The frame list, read by this process's demuxer: the same list as ffprobe's without
        starting ffprobe (~0.1 s a file, as much as decoding 8 sparse frames of a 2-minute clip).
        A file the demuxer cannot read to its end goes to ffprobe, which says why it is unusable
        or lists the frames before the damage."""
        check_readable(self._path)
        try:
            container = self._av.open(self._path, container_options=INPUT_OPTIONS)
        except self._av.FFmpegError:
            return read_stream_frames(self._path)
        try:
            frames = _demuxed_frames(self._av, container)
        except (self._av.FFmpegError, _NotListed):
            container.close()
            return read_stream_frames(self._path)
        self._container, self._at_start = container, False
        self._stream = container.streams[frames.stream_index]
        self._configure_decoder()
        return frames

    def _open(self) -> None:
        if self._container is not None:
            self._container.close()
        try:
            # Self-contained files only: nothing a playlist lists elsewhere gets opened.
            self._container = self._av.open(self._path, container_options=INPUT_OPTIONS)
        except self._av.FFmpegError as error:
            raise VideoError("decode_error", f"PyAV cannot open the file: {_error_text(error)}") from None
        self._stream = self._container.streams[self._frames.stream_index]
        if self._stream.type != "video":
            raise VideoError("decode_error", f"stream {self._frames.stream_index} is not a video stream for PyAV")
        self._configure_decoder()
        self._at_start = True

    def _configure_decoder(self) -> None:
        # One thread: Ray runs one decoder per worker process (frame threads would also add delay).
        self._stream.codec_context.thread_count = 1
        self._stream.codec_context.thread_type = "NONE"

    def _rewind(self) -> None:
        """Back to the first packet. Reopening is exact where seeking to the start is not (MPEG-TS)."""
        if not self._at_start:
            self._open()

    def _seek(self, ticks: int) -> None:
        # Seeking flushes the decoder; FFmpeg lands on the keyframe at or before `ticks`.
        self._container.seek(ticks, stream=self._stream, backward=True, any_frame=False)
        self._at_start = False
        self.seeks += 1

    # ---- reading -------------------------------------------------------------------------------

    def read(self, indices: list[int], size: Size | None = None) -> np.ndarray:
        wanted, inverse = distinct_indices(indices, self.frame_count)
        width, height = size or (self.width, self.height)
        result = _Result()
        with _decoder_log() as log:
            for decode_pass in self._plan(wanted):
                self._run(decode_pass, (width, height), log, result)
        result.raise_if_damaged()
        if not wanted:
            return np.empty((0, height, width, 3), np.uint8)
        return np.stack([result.frames[i] for i in wanted])[inverse]

    def read_gray(self, indices: list[int], size: Size) -> np.ndarray:
        return to_gray(self.read(indices, size))

    def _plan(self, wanted: list[int]) -> list[_Pass]:
        if not wanted:
            return []
        if self._frames.exact_pts and self._frames.seekable:
            return plan_passes(wanted, self._frames.keyframe, SEEK_OVERHEAD_FRAMES)
        return [_Pass(wanted, None)]  # no seeking: decode from the first packet

    def _run(self, decode_pass: _Pass, size: Size, log: list, result: _Result) -> None:
        outcome = self._attempt(decode_pass, size, log)
        earlier = self._keyframe_before(decode_pass.start)
        if outcome.damaged and earlier is not None:
            # Right after a seek into an open GOP the decoder misses pictures from before the
            # seek point and says so ("mmco: unref short failure") though the frames come out
            # right. Decoding from the keyframe before tells that apart from real damage.
            outcome = self._attempt(_Pass(decode_pass.wanted, earlier), size, log)
        result.frames.update(outcome.frames)
        result.damaged.update(outcome.damaged)

    def _attempt(self, decode_pass: _Pass, size: Size, log: list) -> _Result:
        for target in self._seek_targets(decode_pass.start):
            if target is None:
                self._rewind()
            else:
                self._seek(target)
            outcome = _Result()
            if self._decode(decode_pass, size, log, outcome):
                return outcome
        raise VideoError("decode_error", f"PyAV found no keyframe at frame {decode_pass.start}")

    def _keyframe_before(self, start: int | None) -> int | None:
        if start is None:
            return None
        earlier = np.flatnonzero(self._frames.keyframe[:start])
        return int(earlier[-1]) if len(earlier) else None

    def _seek_targets(self, start: int | None) -> Iterator[int | None]:
        """Where to seek for a pass from keyframe `start`: its own time, then earlier keyframes'
        (a seek can land past it), then the start of the file."""
        if start is not None:
            keys = np.flatnonzero(self._frames.keyframe[: start + 1])[::-1]
            for key in keys[: 1 + SEEK_RETRIES]:
                yield self._clock.ticks(int(key))
        yield None

    def _decode(self, decode_pass: _Pass, size: Size, log: list, result: _Result) -> bool:
        """Decode from where the container stands up to the pass's last wanted frame, then check
        the next packets of its GOP. False when the pass never reached its keyframe (the seek
        landed past it)."""
        state = _PassState(decode_pass, by_count=not self._frames.exact_pts)
        context = self._stream.codec_context
        mark, drained = len(log), False
        for packet, demux_error in self._packets():
            if demux_error is not None:
                state.damage.demuxer.append(demux_error)  # the frames after it never come out
                break
            index = None if state.by_count else self._clock.index(packet.pts)
            step = state.admit(packet.is_keyframe, index)
            if step == "overshot":
                return False
            if step == "stop":
                break
            if step == "skip":
                mark = len(log)  # what the demuxer said about a packet not decoded is moot
                continue
            context.skip_frame = step
            frames, decode_error = self._decode_packet(packet)
            drained = drained or not packet.size  # the end-of-stream packet drains the decoder
            errors = self._reported(log[mark:], state.damage)
            errors += [decode_error] if decode_error else []
            errors += [f"the demuxer flagged the packet of frame {index} as corrupt"] if packet.is_corrupt else []
            mark = len(log)
            state.damage.packet(index, packet.is_keyframe, errors)
            if self._collect(frames, state, size):
                state.looking_ahead = True
        context.skip_frame = "DEFAULT"
        if not state.started:
            return False
        if not drained:
            # Frames still held for reordering may carry the corrupt flag of a reference.
            self._collect(self._drain(), state, size)
        state.damage.packet(None, False, self._reported(log[mark:], state.damage))
        state.finish(result)
        return True

    def _reported(self, logs: list[tuple[int, str, str]], damage: _Damage) -> list[str]:
        """The decoder's error messages among `logs`; the demuxer's go aside."""
        errors = []
        for level, name, text in logs:
            # Warnings are mostly about harmless oddities; concealment (INFO) is often the only
            # trace of a damaged slice.
            if level > self._av.logging.ERROR and not (name != self._container.format.name and is_concealment(text)):
                continue
            if name == self._container.format.name:
                damage.demuxer.append(_one_line(f"{name}: {text}"))
            else:
                errors.append(_one_line(f"{name}: {text}" if name else text))
        return errors

    def _packets(self) -> Iterator[tuple[object, str | None]]:
        """The video stream's packets from where the container stands; a demuxer error ends them."""
        self._at_start = False
        packets = self._container.demux(self._stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except self._av.FFmpegError as error:
                yield None, f"demuxer: {_error_text(error)}"
                return
            yield packet, None

    def _decode_packet(self, packet) -> tuple[list, str | None]:
        if self._stream.codec_context.skip_frame == "ALL":
            self.packets_checked += 1
        else:
            self.packets_decoded += 1
        try:
            frames = self._stream.codec_context.decode(packet)
        except self._av.FFmpegError as error:
            return [], f"decoder: {_error_text(error)}"
        self.frames_decoded += len(frames)
        return frames, None

    def _drain(self) -> list:
        """The frames the decoder still holds. It then takes no packets until the next seek or
        rewind flushes it, which every pass starts with."""
        try:
            frames = self._stream.codec_context.decode(None)
        except self._av.FFmpegError:
            return []
        self.frames_decoded += len(frames)
        return frames

    def _collect(self, frames: list, state: _PassState, size: Size) -> bool:
        """Note the corrupt frames among `frames` and keep the wanted ones; True when the pass
        has all the frames it will get."""
        done = False
        for frame in frames:
            index = state.counted if state.by_count else self._clock.index(frame.pts)
            state.counted += 1
            if state.by_count:
                state.damage.counted_frame(index)
            if frame.is_corrupt:
                state.damage.corrupt_frame(index)
            if index in state.pending:
                state.pending.discard(index)
                state.taken[index] = self._rgb(frame, size)
            # Frames come out in presentation order: past the last one wanted, the rest will not.
            done = done or not state.pending or (index is not None and index > state.last)
        return done

    def _rgb(self, frame, size: Size) -> np.ndarray:
        width, height = size
        rgb = self._reformatter.reformat(frame, width, height, format="rgb24", interpolation=self._bicubic, threads=1)
        return rgb.to_ndarray()

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> PyavSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _PassState:
    """Where one decode pass stands: which packets it decodes, what it still needs."""

    def __init__(self, decode_pass: _Pass, by_count: bool):
        self.by_count = by_count  # frames are counted from the first packet, not timed
        self.start = decode_pass.start
        self.last = decode_pass.wanted[-1]
        self.pending = set(decode_pass.wanted)
        self.started = decode_pass.start is None
        self.damage = _Damage()
        self.taken: dict[int, np.ndarray] = {}
        self.counted = 0
        self.looking_ahead = False  # all wanted frames are out: checking the packets after them
        self.looked_ahead = 0

    def admit(self, is_key: bool, index: int | None) -> str:
        """How to treat the next packet: "skip" it, give up ("overshot": the seek landed past
        the pass's keyframe), "stop" the pass, or decode it with this skip_frame setting:
        "DEFAULT" to decode it, "ALL" to check its structure alone. Frames no other frame refers
        to are decoded too (not skipped as "NONREF"): an error in one of them is the only sign of
        damage elsewhere in the GOP that decodes without notice (measured on H.264 with three 40-byte runs of
        random bytes: frames whose reference chain reported nothing, damaged by up to 17 levels
        per pixel, followed a B-frame that did report); the cost, in BENCHMARKS.md, is largest for
        sparse frames of long GOPs (8 frames of 120 s clips with 10 s GOPs: 28.2 keyframes/s
        before, 13.3 now)."""
        if not self.started:
            if is_key and index == self.start:
                self.started = True
                return "DEFAULT"
            if index is not None and (index > self.last or (is_key and index > self.start)):
                return "overshot"
            return "skip"
        if self.looking_ahead:
            # Damage the decoder cannot see in a frame (it decodes garbage "cleanly") often runs
            # on into the next packets, whose structure breaks: check a few of them for that
            # (splitting a packet into NAL units costs ~50 us, decoding it ~1 ms at 640x360).
            self.looked_ahead += 1
            return "stop" if is_key or self.looked_ahead > LOOKAHEAD_PACKETS else "ALL"
        if self.start is not None and index is not None and index < self.start:
            return "skip"  # a leading picture of an open GOP, predicted from before the seek
        return "DEFAULT"

    def finish(self, result: _Result) -> None:
        for index, rgb in self.taken.items():
            errors = self.damage.of_frame(index)
            if errors:
                result.damaged[index] = tuple(errors)
            else:
                result.frames[index] = rgb
        self._missing(result)

    def _missing(self, result: _Result) -> None:
        """Wanted frames the decoder never returned: damaged when it reported errors, else a
        file whose packets and frames disagree, which another backend may read."""
        if not self.pending:
            return
        missing, errors = sorted(self.pending), self.damage.all
        if not errors:
            raise VideoError("decode_error", f"PyAV decoded no frame for indices {missing[:8]} and reported no error")
        for index in missing:
            result.damaged[index] = (*errors, f"no frame {index} came out")


# ---- the decoder's words --------------------------------------------------------------------------


@contextmanager
def _decoder_log() -> Iterator[list[tuple[int, str, str]]]:
    """FFmpeg's messages down to INFO (where concealment is logged) while the block runs, in
    order. PyAV drops FFmpeg's log by default and skips a message identical to the one before
    (hiding the second of two damaged frames); both are switched for the block only, in this
    thread only."""
    import av.logging as avlog

    level, skip_repeated = avlog.get_level(), avlog.get_skip_repeated()
    avlog.set_level(avlog.INFO)
    avlog.set_skip_repeated(False)
    try:
        with avlog.Capture(local=True) as logs:
            yield logs
    finally:
        avlog.set_skip_repeated(skip_repeated)
        avlog.set_level(level)


class _NotListed(Exception):
    """The demuxer's view is not one to list frames from; ffprobe decides what the file is."""


def _demuxed_frames(av, container) -> StreamFrames:
    from av.stream import Disposition

    streams = [s for s in container.streams.video if not s.disposition & Disposition.attached_pic]
    if not streams or streams[0].codec_context is None:
        raise _NotListed
    if not set(container.format.name.split(",")) & IN_PROCESS_LISTED:
        raise _NotListed
    stream = streams[0]
    time_base = float(stream.time_base)
    pts, dts, duration, keyframe, end_offset, discarded = [], [], [], [], [], []
    for packet in container.demux(stream):
        if packet.size == 0:
            continue  # the demuxer's end-of-stream marker, not a packet of the file
        pts.append(np.nan if packet.pts is None else packet.pts * time_base)
        dts.append(np.nan if packet.dts is None else packet.dts * time_base)
        duration.append(packet.duration * time_base if packet.duration else np.nan)
        keyframe.append(packet.is_keyframe)
        end_offset.append(packet.pos + packet.size if packet.pos is not None and packet.pos >= 0 else -1)
        discarded.append(packet.is_discard)
    packets = Packets(
        pts=np.array(pts, float), dts=np.array(dts, float), duration=np.array(duration, float),
        keyframe=np.array(keyframe, bool), end_offset=np.array(end_offset, np.int64),
        discarded=np.array(discarded, bool),
    )  # fmt: skip
    if not (~packets.discarded).any():
        raise _NotListed
    rate = stream.average_rate or stream.guessed_rate
    start = container.start_time
    return frames_from_packets(
        packets,
        stream_index=stream.index,
        width=stream.codec_context.width,
        height=stream.codec_context.height,
        format_start=start / av.time_base if start is not None else 0.0,
        format_name=container.format.name,
        frame_rate=float(rate) if rate else None,
    )


def _error_text(error: Exception) -> str:
    return _one_line(getattr(error, "strerror", None) or str(error))

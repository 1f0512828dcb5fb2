"""A video's sampled frames as upright, resized JPEGs: what the keyframes stage stores per video.

`extract_keyframes` opens the video with one decoder, chooses frames with a sampling strategy,
decodes just those (the sources seek), turns them upright, resizes and JPEG-encodes them. When
the decoder cannot decode the file it retries the whole video with the others and says why in
`note`; when all fail it raises VideoError("decode_error") naming each error.

A stored frame is a clean frame: no frame decoded since its GOP's keyframe reported an error
(see docs/decoding.md). A source raises `DamagedFrames` for frames that are not; that is the
data, not the decoder, so no other decoder is tried. The `damaged` policy decides: "fail" (the
default) fails the video as `damaged_frames`; "nearest_clean" takes, for each damaged frame, the
nearest frame that is clean by the same rule and records the index actually used (and says so
in `note`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import partial
from typing import Literal

import numpy as np
from PIL import Image

from pipeline.decode.containment import check_video_file
from pipeline.decode.probe import DECODE_TIMEOUT_S, TimeLimit, VideoError
from pipeline.decode.sampling import Sampling, choose_frames
from pipeline.decode.sources import Backend, DamagedFrames, FrameSource, open_source, scaled_size

# With fallback, the chosen backend is tried first, then the others in this order.
FALLBACK_ORDER: tuple[Backend, ...] = ("pyav", "decord", "ffmpeg")

DamagePolicy = Literal["fail", "nearest_clean"]

# How far (in frames, each side) and in what steps "nearest_clean" looks for a clean frame: close
# frames first, then further in growing steps, past a damaged GOP into the next one.
REPLACEMENT_OFFSETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
REPLACEMENT_BATCH = 8

# Disparity compares candidates at this width (grey); enough to see a cut, cheap to decode.
GRAY_WIDTH = 64

# Full-size frames decoded per read: bounds memory when a strategy asks for hundreds of frames
# (Fps on a long video), at 1080p about 200 MB.
READ_CHUNK = 32


@dataclass
class Keyframes:
    indices: list[int]  # frame indices, ascending (repeats when the video is too short)
    timestamps: list[float]  # seconds since the first frame, one per index
    jpegs: list[bytes]  # upright, resized
    width: int  # of the stored JPEGs
    height: int
    repeated: bool
    decoder: str  # backend that produced the frames: "pyav", "decord" or "ffmpeg"
    note: str | None  # why another backend was used, or which damaged frames were replaced


def extract_keyframes(
    path: str,
    sampling: Sampling,
    *,
    video_id: str,
    backend: Backend = "pyav",
    fallback: bool = True,
    short_side: int = 224,
    jpeg_quality: int = 90,
    rotation: int = 0,
    video_root: str | None = None,
    timeout_seconds: float = DECODE_TIMEOUT_S,
    damaged: DamagePolicy = "fail",
) -> Keyframes:
    """Sampled frames of one video. `rotation` is PROBE's (clockwise degrees to upright);
    `short_side` is the shorter side of the stored frames in pixels (0 keeps the decoded size).
    The file must lie under `video_root` (when given) and be a self-contained container (see
    `check_video_file`); all decoding of the video shares `timeout_seconds`."""
    _check_arguments(backend, short_side, jpeg_quality, rotation)
    # Before any decoder touches the file; decoders get the real path, so a link changed later cannot redirect them.
    path = check_video_file(path, video_root).path
    limit = TimeLimit.start(timeout_seconds, "decoding")
    backends = [backend, *(b for b in FALLBACK_ORDER if b != backend)] if fallback else [backend]
    errors: list[str] = []
    for name in backends:
        try:
            with limit.applied():
                keyframes = _extract_with(
                    name, path, sampling, video_id, short_side, jpeg_quality, rotation, damaged
                )
        except DamagedFrames:
            raise  # the bytes are damaged, not the decoder: another would decode the same damage
        except Exception as error:  # noqa: BLE001 - any failure of one decoder: try the other
            if isinstance(error, VideoError) and error.reason == "timeout":
                raise  # the video's time is used up: another decoder would only run past it too
            errors.append(f"{name}: {_describe(error)}")
            continue
        if errors:
            keyframes.note = " ".join(filter(None, [f"{backend} failed, used {name}. {errors[0]}", keyframes.note]))
        return keyframes
    raise VideoError("decode_error", "; ".join(errors))


def _check_arguments(backend: str, short_side: int, jpeg_quality: int, rotation: int) -> None:
    if backend not in FALLBACK_ORDER:
        raise ValueError(f"unknown decoder backend {backend!r}; use one of {', '.join(FALLBACK_ORDER)}")
    if short_side < 0:
        raise ValueError(f"short_side must be >= 0 (0 keeps the size), got {short_side}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    if rotation not in (0, 90, 180, 270):
        raise ValueError(f"rotation must be 0, 90, 180 or 270, got {rotation}")


def _describe(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text if len(text) <= 500 else text[:500] + " ..."


def _extract_with(
    backend: Backend,
    path: str,
    sampling: Sampling,
    video_id: str,
    short_side: int,
    jpeg_quality: int,
    rotation: int,
    damaged: DamagePolicy = "fail",
) -> Keyframes:
    with open_source(path, backend, short_side) as source:
        reader = _CleanReader(source, damaged)
        read_gray = partial(reader.read_gray, size=_gray_size(source))
        selection = choose_frames(sampling, source.timestamps, video_id, read_gray=read_gray)
        frames = reader.read(selection.indices, size=scaled_size(source.width, source.height, short_side))
        indices = [frames.used[i] for i in selection.indices]
        order = np.argsort(indices, kind="stable")
        indices = [indices[k] for k in order]
        encoded: dict[int, bytes] = {}  # a repeated frame is encoded once
        for asked in selection.indices:
            if asked not in encoded:
                encoded[asked] = _to_upright_jpeg(frames.pixels[asked], rotation, jpeg_quality)
        jpegs = [encoded[selection.indices[k]] for k in order]
        timestamps = [round(float(source.timestamps[i]), 6) for i in indices]
    width, height = Image.open(io.BytesIO(jpegs[0])).size
    return Keyframes(
        indices=indices,
        timestamps=timestamps,
        jpegs=jpegs,
        width=width,
        height=height,
        repeated=len(set(indices)) < len(indices),
        decoder=source.name,
        note=frames.note(),
    )


@dataclass
class _Frames:
    pixels: dict[int, np.ndarray]  # asked-for index -> decoded frame
    used: dict[int, int]  # asked-for index -> index actually decoded (differs when replaced)
    damage: list[str]

    def note(self) -> str | None:
        replaced = {a: u for a, u in self.used.items() if a != u}
        if not replaced:
            return None
        pairs = ", ".join(f"{a}->{u}" for a, u in sorted(replaced.items())[:8])
        return f"damaged frames replaced by the nearest clean ones ({pairs}): {self.damage[0]}"


class _CleanReader:
    """Reads frames through a source under the damage policy, a chunk of frames at a time (which
    bounds memory when a strategy asks for hundreds of frames)."""

    def __init__(self, source: FrameSource, damaged: DamagePolicy):
        self.source = source
        self.damaged = damaged
        self._bad: set[int] = set()  # frames found damaged: the nearest-clean search skips them
        self._first_damage: str | None = None  # the decoder's words when the first was found

    def read(self, indices: list[int], size) -> _Frames:
        frames = _Frames({}, {}, [])
        distinct = sorted(set(indices))
        for start in range(0, len(distinct), READ_CHUNK):
            chunk = distinct[start : start + READ_CHUNK]
            clean, bad = self._read_clean(chunk, size, frames.damage)
            for index in chunk:
                if index in clean:
                    frames.pixels[index], frames.used[index] = clean[index], index
            for index in bad:
                frames.used[index], frames.pixels[index] = self._nearest_clean(index, size, frames.damage, clean)
        return frames

    def read_gray(self, indices: list[int], size) -> np.ndarray:
        """Grey candidates for Disparity; a damaged one repeats the clean one before it, so it
        scores no change and is never chosen for itself."""
        clean, _ = self._read_clean(sorted(set(indices)), size, [], gray=True)
        if not clean:
            raise DamagedFrames(indices, "every candidate frame decoded with errors")
        first = clean[min(clean)]
        out, last = [], first
        for index in indices:
            last = clean.get(index, last)
            out.append(last)
        return np.stack(out)

    def _read_clean(self, indices: list[int], size, damage: list[str], gray: bool = False):
        """The frames of `indices` that decode clean, and the damaged ones (raises under "fail")."""
        read = partial(self.source.read_gray, size=size) if gray else partial(self.source.read, size=size)
        bad = [i for i in indices if i in self._bad]
        if bad and not damage:  # known damaged from an earlier read: its words, for the note
            damage.append(self._first_damage)  # set when the first of them was found
        wanted = [i for i in indices if i not in self._bad]
        clean: dict[int, np.ndarray] = {}
        while wanted:
            try:
                clean.update(zip(wanted, read(wanted), strict=True))
                break
            except DamagedFrames as error:
                if self.damaged == "fail":
                    raise
                damage.append(error.message)
                self._first_damage = self._first_damage or error.message
                newly = [i for i in error.indices if i in wanted] or wanted  # a source that cannot tell which
                whole = len(newly) == len(wanted)  # the read of exactly these frames failed
                wanted = [i for i in wanted if i not in newly]
                if error.per_frame or len(newly) == 1:
                    bad += newly
                    continue
                found, lost = self._tell_apart(newly, read, damage, whole)
                clean.update(found)
                bad += lost
        self._bad.update(bad)
        return clean, bad

    def _tell_apart(self, condemned: list[int], read, damage: list[str],
                    failed: bool) -> tuple[dict[int, np.ndarray], list[int]]:
        """Frames a source condemned together (its decoder's log names no frame): the clean ones
        and the damaged ones. Within a GOP, damage reaches every frame from the first damaged one
        on (each is decoded from everything before it), so the longest clean run from the GOP's
        start is found by bisection: about log2(n) reads per damaged GOP, whatever the number of
        damaged frames. A source that does not say where GOPs start has its frames read in
        halves instead. `failed`: a read of exactly `condemned` is known to have failed."""
        condemned = sorted(condemned)
        starts = getattr(self.source, "gop_start", None)
        if starts is None:
            if len(condemned) == 1:
                return {}, condemned
            half = len(condemned) // 2
            clean, bad = {}, []
            for part in (condemned[:half], condemned[half:]):
                try:
                    clean.update(zip(part, read(part), strict=True))
                except DamagedFrames as error:
                    damage.append(error.message)
                    found, lost = self._tell_apart(part, read, damage, True)
                    clean.update(found)
                    bad += lost
            return clean, bad
        clean, bad = {}, []
        order = np.asarray(condemned)
        gops = np.split(order, np.flatnonzero(np.diff(starts[order])) + 1)
        for gop in gops:
            gop = gop.tolist()
            # `good` frames from the GOP's first wanted one read clean; more than `most` cannot
            # (not all of them, when they alone were just read and failed).
            good, most, pixels = 0, len(gop) - (failed and len(gops) == 1), {}
            while good < most:
                trial = (good + most + 1) // 2 if most < len(gop) else most
                try:
                    pixels = dict(zip(gop[:trial], read(gop[:trial]), strict=True))
                    good = trial
                except DamagedFrames as error:
                    damage.append(error.message)
                    most = trial - 1
            clean.update((i, pixels[i]) for i in gop[:good])
            bad += gop[good:]
        return clean, bad

    def _nearest_clean(self, index: int, size, damage: list[str],
                       known: dict[int, np.ndarray]) -> tuple[int, np.ndarray]:
        """The nearest clean frame to `index` (the earlier of two as near) and its pixels;
        `known` holds frames already read clean, which need no second read."""
        count = self.source.frame_count
        candidates = [c for offset in REPLACEMENT_OFFSETS for c in (index - offset, index + offset) if 0 <= c < count]
        for start in range(0, len(candidates), REPLACEMENT_BATCH):
            # Nearest first; frames already found damaged are not read again.
            batch = [c for c in candidates[start : start + REPLACEMENT_BATCH] if c not in self._bad]
            if batch and batch[0] in known:
                return batch[0], known[batch[0]]
            clean, _ = self._read_clean([c for c in batch if c not in known], size, damage)
            clean.update((c, known[c]) for c in batch if c in known)
            if clean:
                nearest = min(clean, key=lambda c: (abs(c - index), c))
                return nearest, clean[nearest]
        # Damage, like the frame it replaces: never retried on another decoder.
        # `damage` holds the words of the read that found `index` damaged.
        raise DamagedFrames([index], f"frame {index} and every frame tried near it decoded with errors: {damage[0]}")


def _gray_size(source: FrameSource) -> tuple[int, int]:
    height = max(1, round(GRAY_WIDTH * source.height / max(source.width, 1)))
    return GRAY_WIDTH, height


def _to_upright_jpeg(frame: np.ndarray, rotation: int, quality: int) -> bytes:
    # Frames come scaled by the decoder itself (swscale, bicubic, while it converts to RGB anyway),
    # which costs a fraction of resizing full-size frames afterwards.
    return to_jpeg(Image.fromarray(np.ascontiguousarray(np.rot90(frame, k=-(rotation // 90)))), quality)


def to_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()

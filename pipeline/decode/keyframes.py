"""A video's sampled frames as upright, resized JPEGs: what the keyframes stage stores per video.

`extract_keyframes` opens the video with one decoder, chooses frames with a sampling strategy,
decodes just those (the sources seek), turns them upright, resizes and JPEG-encodes them. When
the decoder fails on the file it retries the whole video with the other one and says why in
`note`; when both fail it raises VideoError("decode_error") naming both errors.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from functools import partial

import numpy as np
from PIL import Image

from pipeline.decode.probe import VideoError
from pipeline.decode.sampling import Sampling, choose_frames
from pipeline.decode.sources import Backend, FrameSource, open_source, scaled_size

_OTHER_BACKEND: dict[str, Backend] = {"decord": "ffmpeg", "ffmpeg": "decord"}

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
    decoder: str  # backend that produced the frames: "decord" or "ffmpeg"
    note: str | None  # why the other backend was used, when it was


def extract_keyframes(
    path: str,
    sampling: Sampling,
    *,
    video_id: str,
    backend: Backend = "decord",
    fallback: bool = True,
    short_side: int = 224,
    jpeg_quality: int = 90,
    rotation: int = 0,
) -> Keyframes:
    """Sampled frames of one video. `rotation` is PROBE's (clockwise degrees to upright);
    `short_side` is the shorter side of the stored frames in pixels (0 keeps the decoded size)."""
    _check_arguments(backend, short_side, jpeg_quality, rotation)
    if not os.path.isfile(path):
        raise VideoError("missing", f"no such file: {path}")
    if os.path.getsize(path) == 0:
        raise VideoError("empty", f"file is 0 bytes: {path}")
    backends = [backend, _OTHER_BACKEND[backend]] if fallback else [backend]
    errors: list[str] = []
    for name in backends:
        try:
            keyframes = _extract_with(
                name, path, sampling, video_id, short_side, jpeg_quality, rotation
            )
        except Exception as error:  # noqa: BLE001 - any failure of one decoder: try the other
            errors.append(f"{name}: {_describe(error)}")
            continue
        if errors:
            keyframes.note = f"{backend} failed, used {name}. {errors[0]}"
        return keyframes
    raise VideoError("decode_error", "; ".join(errors))


def _check_arguments(backend: str, short_side: int, jpeg_quality: int, rotation: int) -> None:
    if backend not in _OTHER_BACKEND:
        raise ValueError(f"unknown decoder backend {backend!r}; use 'decord' or 'ffmpeg'")
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
) -> Keyframes:
    with open_source(path, backend, short_side) as source:
        read_gray = partial(source.read_gray, size=_gray_size(source))
        selection = choose_frames(sampling, source.timestamps, video_id, read_gray=read_gray)
        jpegs_by_index, (width, height) = _encode_frames(
            source, selection.indices, short_side, jpeg_quality, rotation
        )
        timestamps = [round(float(source.timestamps[i]), 6) for i in selection.indices]
    return Keyframes(
        indices=selection.indices,
        timestamps=timestamps,
        jpegs=[jpegs_by_index[i] for i in selection.indices],
        width=width,
        height=height,
        repeated=selection.repeated,
        decoder=source.name,
        note=None,
    )


def _gray_size(source: FrameSource) -> tuple[int, int]:
    height = max(1, round(GRAY_WIDTH * source.height / max(source.width, 1)))
    return GRAY_WIDTH, height


def _encode_frames(
    source: FrameSource, indices: list[int], short_side: int, quality: int, rotation: int
) -> tuple[dict[int, bytes], tuple[int, int]]:
    """JPEG of each distinct index, decoding a chunk of frames at a time; and their size.

    Frames are scaled by the decoder itself (swscale, bicubic, while it converts to RGB anyway),
    which costs a fraction of resizing full-size frames afterwards."""
    distinct = sorted(set(indices))
    decode_size = scaled_size(source.width, source.height, short_side)
    jpegs: dict[int, bytes] = {}
    size = (0, 0)
    for start in range(0, len(distinct), READ_CHUNK):
        chunk = distinct[start : start + READ_CHUNK]
        for index, frame in zip(chunk, source.read(chunk, size=decode_size), strict=True):
            image = Image.fromarray(np.ascontiguousarray(np.rot90(frame, k=-(rotation // 90))))
            jpegs[index], size = to_jpeg(image, quality), image.size
    return jpegs, size


def to_jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()

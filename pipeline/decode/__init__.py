"""Decoding videos: probing files, choosing frames, reading them with decord or ffmpeg.

    meta = probe_video(path)                      # PROBE row, or VideoError(reason)
    frames = extract_keyframes(path, Uniform(num_frames=12), video_id="v1",
                               rotation=meta.rotation)   # upright JPEGs + indices + timestamps
"""

from pipeline.decode.keyframes import Keyframes, extract_keyframes
from pipeline.decode.probe import VideoError, VideoMeta, probe_video
from pipeline.decode.sampling import (
    Disparity,
    Fps,
    MiddleSegment,
    Sampling,
    SegmentRandom,
    Selection,
    Uniform,
    Vlm,
    choose_frames,
)
from pipeline.decode.sources import Backend, FrameSource, backend_version, open_source

__all__ = [
    "Backend",
    "Disparity",
    "Fps",
    "FrameSource",
    "Keyframes",
    "MiddleSegment",
    "Sampling",
    "SegmentRandom",
    "Selection",
    "Uniform",
    "VideoError",
    "VideoMeta",
    "Vlm",
    "backend_version",
    "choose_frames",
    "extract_keyframes",
    "open_source",
    "probe_video",
]

"""keyframes: frames decoded from every probed video, as upright JPEG bytes with indices and times.

The sampling strategy (uniform, segment_random, fps, vlm, disparity, middle_segment) chooses
frame indices; the decoder seeks to them (PyAV by default; decord and ffmpeg are tried when the
chosen one fails on a video, never on damaged frames, docs/decoding.md). Frames are resized to a
shorter side and JPEG-encoded. A video with fewer frames than asked for repeats frames and says
so (`repeated_frames`). Videos probe
could not read become failures here too (`upstream_failed`, from the runner), so every video is
accounted for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa

from pipeline.config import bounds
from pipeline.decode.keyframes import extract_keyframes
from pipeline.decode.probe import DECODE_TIMEOUT_S, VideoError
from pipeline.decode.sampling import Sampling, Uniform
from pipeline.decode.sources import backend_version
from pipeline.run.stage import Failure, RunSettings, Stage, Step
from pipeline.store.schema import KEYFRAMES


@dataclass
class KeyframesConfig:
    sampling: Sampling = field(default_factory=Uniform)
    # PyAV seeks fastest and checks every frame it takes for decoding errors (BENCHMARKS.md).
    backend: Literal["pyav", "decord", "ffmpeg"] = "pyav"
    fallback: bool = True  # try the other backends on a video the chosen one cannot decode
    # A frame that decoded with errors is never stored: fail the video (`damaged_frames`), or take
    # the nearest frame that decodes clean and record the index actually used.
    damaged_frames: Literal["fail", "nearest_clean"] = "fail"
    # Resize so the shorter side has this many pixels; 0 keeps the size.
    short_side: int = field(default=224, metadata=bounds(min=0))
    # libjpeg's scale; PIL clamps anything outside it without a word, so a typo would go unnoticed.
    jpeg_quality: int = field(default=90, metadata=bounds(min=1, max=100))
    # All decoding of one video (every backend tried); past it the video fails as `timeout`, so a stuck
    # decoder cannot hold a worker.
    timeout_seconds: float = field(default=DECODE_TIMEOUT_S, metadata=bounds(above=0))
    run: RunSettings = field(default_factory=lambda: RunSettings(batch_size=4))


def keyframes_items(config: KeyframesConfig, inputs) -> pa.Table:
    # Every manifest video is an item; those probe could not read fail as upstream_failed (the runner).
    return inputs["videos"].video_table(columns=["video_id", "path"])


def _extract_one(item: dict, config: KeyframesConfig) -> dict | Failure:
    try:
        result = extract_keyframes(
            item["path"], config.sampling, video_id=item["video_id"], backend=config.backend,
            fallback=config.fallback, short_side=config.short_side,
            jpeg_quality=config.jpeg_quality, rotation=item["rotation"] or 0,
            video_root=item["video_root"], timeout_seconds=config.timeout_seconds,
            damaged=config.damaged_frames,
        )
    except VideoError as exc:
        return Failure(exc.reason, exc.message)
    return {
        "video_id": item["video_id"],
        "strategy": config.sampling.strategy,
        "frame_indices": result.indices,
        "timestamps": result.timestamps,
        "frames": result.jpegs,
        "width": result.width,
        "height": result.height,
        "repeated_frames": result.repeated,
        "decoder": result.decoder,
        "note": result.note,
    }


def keyframes_setup(config: KeyframesConfig):
    return lambda items: [_extract_one(item, config) for item in items]


def _decoder_versions(config: KeyframesConfig) -> dict[str, str]:
    return {"decoders": "; ".join(f"{b} {backend_version(b)}" for b in ("decord", "ffmpeg", "pyav"))}


STAGE = Stage(
    name="keyframes",
    description="sampled frames as upright JPEG bytes, with frame indices and timestamps",
    key="video_id",
    inputs=("videos", "probe"),
    config_type=KeyframesConfig,
    schema=KEYFRAMES,
    items=keyframes_items,
    steps=(Step("decode", keyframes_setup),),
    reads={"probe": ("rotation",)},
    provenance=_decoder_versions,
)

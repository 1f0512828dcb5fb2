"""probe: what each video is (duration, fps, frames, size, codec, rotation), or why it is unreadable.

Videos without a file (see the manifest's problems) and files ffprobe cannot read become failure
rows with a specific reason: missing, empty, truncated, no_video_stream, unsupported_codec,
corrupt. Later stages decode only what probe could read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pyarrow as pa

from pipeline.decode.probe import VideoError, probe_video
from pipeline.schema import PROBE
from pipeline.stage import Failure, Stage


@dataclass
class ProbeConfig:
    """probe has nothing to tune; the class exists so every stage reads config the same way."""


def probe_items(config: ProbeConfig, inputs) -> pa.Table:
    relative = inputs["videos"].table(columns=["video_id", "path"]).rename_columns(["video_id", "relative_path"])
    absolute = inputs["videos"].video_table(columns=["video_id", "path"])
    return absolute.append_column("relative_path", relative.column("relative_path"))


def _probe_one(item: dict) -> dict | Failure:
    if item["path"] is None:
        return Failure("missing", f"no video file for {item['video_id']} under the videos root "
                                  "(listed in the manifest's problems)")
    try:
        meta = probe_video(item["path"])
    except VideoError as exc:
        return Failure(exc.reason, exc.message)
    return {"video_id": item["video_id"], "path": item["relative_path"], **dataclasses.asdict(meta)}


def probe_setup(config: ProbeConfig):
    return lambda items: [_probe_one(item) for item in items]


STAGE = Stage(
    name="probe",
    description="video metadata (duration, fps, frames, size, codec, rotation) or why unreadable",
    key="video_id",
    inputs=("videos",),
    config_type=ProbeConfig,
    schema=PROBE,
    items=probe_items,
    setup=probe_setup,
    batch_size=16,
)

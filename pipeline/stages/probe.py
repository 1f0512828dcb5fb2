"""probe: what each video is (duration, fps, frames, size, codec, rotation), or why it is unreadable.

Videos without a file (see the manifest's problems) and files ffprobe cannot read become failure
rows with a specific reason: missing, empty, truncated, no_video_stream, unsupported_codec,
corrupt; and, checked before ffprobe opens the file, outside_root, not_a_file, unreadable and
unsupported_container (playlists, lists and anything but a self-contained video container); an
ffprobe that runs past `timeout_seconds` is stopped: timeout. Later stages decode only what probe
could read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.config import bounds
from pipeline.decode.probe import PROBE_TIMEOUT_S, VideoError, probe_video
from pipeline.run.stage import Failure, RunSettings, Stage, Step
from pipeline.store.schema import PROBE


@dataclass
class ProbeConfig:
    # ffprobe reads headers and the packet list, never decodes; one that takes longer is stuck (a hung
    # network mount) and fails as `timeout` instead of holding a worker.
    timeout_seconds: float = field(default=PROBE_TIMEOUT_S, metadata=bounds(above=0))
    run: RunSettings = field(default_factory=lambda: RunSettings(batch_size=16))


def probe_items(config: ProbeConfig, inputs) -> pa.Table:
    return inputs["videos"].video_table(columns=["video_id", "path"])


def _probe_one(item: dict, config: ProbeConfig) -> dict | Failure:
    if item["path"] is None:
        return Failure("missing", f"no video file for {item['video_id']} under the videos root "
                                  "(listed in the manifest's problems)")
    try:
        meta = probe_video(item["path"], video_root=item["video_root"], timeout_seconds=config.timeout_seconds)
    except VideoError as exc:
        return Failure(exc.reason, exc.message)
    return {"video_id": item["video_id"], "path": item["relative_path"], **dataclasses.asdict(meta)}


def probe_setup(config: ProbeConfig):
    return lambda items: [_probe_one(item, config) for item in items]


STAGE = Stage(
    name="probe",
    description="video metadata (duration, fps, frames, size, codec, rotation) or why unreadable",
    key="video_id",
    inputs=("videos",),
    config_type=ProbeConfig,
    schema=PROBE,
    items=probe_items,
    steps=(Step("probe", probe_setup),),
)

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
from pipeline.schema import PROBE
from pipeline.stage import Failure, Stage


@dataclass
class ProbeConfig:
    # ffprobe reads headers and the packet list, never decodes; one that takes longer is stuck (a hung
    # network mount) and fails as `timeout` instead of holding a worker.
    timeout_seconds: float = field(default=PROBE_TIMEOUT_S, metadata=bounds(above=0))


def probe_items(config: ProbeConfig, inputs) -> pa.Table:
    relative = inputs["videos"].table(columns=["video_id", "path"]).rename_columns(["video_id", "relative_path"])
    absolute = inputs["videos"].video_table(columns=["video_id", "path"])
    items = absolute.append_column("relative_path", relative.column("relative_path"))
    return with_video_root(items, inputs["videos"].output.root)


def with_video_root(items: pa.Table, root: str | None) -> pa.Table:
    """`items` with a `video_root` column: workers refuse files whose real path leaves it."""
    return items.append_column("video_root", pa.array([root] * items.num_rows, pa.string()))


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
    setup=probe_setup,
    batch_size=16,
)

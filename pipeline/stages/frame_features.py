"""frame_features: CLIP image embeddings of every video's keyframes.

Per video, the frame indices and timestamps keyframes stored and a float16 `[n_frames, dim]`
matrix of the vision tower's projected image embeddings, in frame order, not normalised (the
file metadata says so, with the model id, revision and dim). Frames go through the checkpoint's
own image processor: resize and centre crop in the decode step (CPU workers), rescale, normalise
and the model in the embed step (one worker per GPU, the model loaded once). A JPEG that does not
decode fails its video only (`corrupt_frame`); videos keyframes could not produce fail as
`upstream_failed`. Workers read the frames from the keyframes parts themselves.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipeline.models.identity import check_model, checkpoint_identity
from pipeline.run.stage import Failure, ModelRunSettings, Stage, Step
from pipeline.store.schema import frame_features_schema

# CLIP ViT-B/32, the paper configs' default; openai/clip-vit-base-patch16 and
# openai/clip-vit-large-patch14 (MMI) are the other usual choices.
DEFAULT_CLIP = "openai/clip-vit-base-patch32"


@dataclass
class FrameFeaturesConfig:
    model: str = DEFAULT_CLIP  # Hugging Face id or local folder of a CLIPModel checkpoint
    revision: str | None = None  # a commit to pin; recorded either way
    run: ModelRunSettings = field(default_factory=lambda: ModelRunSettings(batch_size=32, num_cpus=1))


def frame_features_items(config: FrameFeaturesConfig, inputs) -> pa.Table:
    # Every manifest video is an item; the runner fails those without keyframes as upstream_failed.
    return inputs["videos"].table(columns=["video_id"])


def _decode_setup(config: FrameFeaturesConfig):
    from pipeline.models.clip import FramePreparer, decode_jpeg

    preparer = FramePreparer.load(config.model, config.revision)

    def prepare(item: dict) -> dict | Failure:
        frames = []
        for k, data in enumerate(item["frames"]):
            try:
                frames.append(decode_jpeg(data))
            except ValueError as exc:
                return Failure("corrupt_frame", f"keyframes frame {k} (frame index {item['frame_indices'][k]}): {exc}")
        return {"video_id": item["video_id"], "frame_indices": item["frame_indices"],
                "timestamps": item["timestamps"], "pixels": preparer.prepare(frames)}

    return lambda items: [prepare(item) for item in items]


def _embed_setup(config: FrameFeaturesConfig):
    from pipeline.models.clip import ClipVision, use_cpu_threads

    run = config.run
    # One forward pass per call: `run.batch_size` videos, all their frames; halved on out-of-memory.
    model = ClipVision.load(config.model, config.revision, device=run.device, dtype=run.dtype,
                            batch_size=sys.maxsize)

    use_cpu_threads(model.device, run.num_cpus)
    def embed(items: list[dict]) -> list[dict]:
        counts = [len(item["pixels"]) for item in items]
        features = model.embed_prepared(np.concatenate([item["pixels"] for item in items]))
        rows, start = [], 0
        for item, n in zip(items, counts):
            rows.append({"video_id": item["video_id"], "frame_indices": item["frame_indices"],
                         "timestamps": item["timestamps"], "num_frames": n,
                         "features": list(features[start : start + n].astype(np.float16))})
            start += n
        return rows

    return embed


def _schema(config: FrameFeaturesConfig) -> pa.Schema:
    from pipeline.models.clip import embedding_dim

    return frame_features_schema(embedding_dim(config.model, config.revision))


def _identity(config: FrameFeaturesConfig) -> dict:
    return {"checkpoint": checkpoint_identity(config.model, config.revision)}


def _provenance(config: FrameFeaturesConfig) -> dict[str, str]:
    from pipeline.models.clip import embedding_dim

    dim = embedding_dim(config.model, config.revision)
    return {"model": config.model, "revision": config.revision or "", "dim": str(dim),
            "features": "projected image embeddings (image_embeds), not normalised, float16"}


STAGE = Stage(
    name="frame_features",
    description="CLIP image embeddings of each video's keyframes, float16 [n_frames, dim]",
    key="video_id",
    inputs=("videos", "keyframes"),
    config_type=FrameFeaturesConfig,
    schema=_schema,
    items=frame_features_items,
    steps=(Step("decode", _decode_setup, main=False), Step("embed", _embed_setup, stateful=True)),
    reads={"keyframes": ("frame_indices", "timestamps", "frames")},
    identity=_identity,
    provenance=_provenance,
    check=lambda config: check_model("frame_features.model", config.model),
)

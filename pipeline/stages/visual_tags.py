"""visual_tags: MAC-VR's visual tags, a VLM asked about each video's sparse frames at each temperature.

Per video and temperature, one request: the `macvr_visual_tags` prompt (the paper's, word for
word) with the video's `vlm_frames` (8 frames, first to last), answered by the configured engine;
the row keeps the raw output, why it ended, the token counts and the cleaned tags
(`pipeline.tags.parse_tags`). Videos without VLM frames fail as `upstream_failed`, an engine
error on one request fails that request only (`generation_error`). The paper's VLM, VideoLLaMA2,
loads only through its own code (a plugin engine, docs/engines.md); the default is a VLM that
transformers and vLLM run natively.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.engines import check_engine
from pipeline.engines.config import EngineConfig, TransformersEngineConfig
from pipeline.engines.prompts import load_prompt
from pipeline.run.stage import Failure, ModelRunSettings, Stage, Step
from pipeline.store.schema import TAGS
from pipeline.tags.asking import SamplingSettings, asker, fan_out, tag_stage_identity, vllm_transform

DEFAULT_VLM = "llava-hf/LLaVA-NeXT-Video-7B-hf"


@dataclass
class VisualTagsConfig:
    engine: EngineConfig = field(default_factory=lambda: TransformersEngineConfig(model=DEFAULT_VLM))
    prompt: str = "macvr_visual_tags"  # a template in the prompts folder
    prompts_folder: str | None = None  # None: the repository's prompts/
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    run: ModelRunSettings = field(default_factory=lambda: ModelRunSettings(batch_size=8, rows_per_shard=64))


def visual_tags_items(config: VisualTagsConfig, inputs) -> pa.Table:
    videos = inputs["videos"].table(columns=["video_id"])
    return fan_out(videos, "video_id", config.sampling.temperatures)


def frames_decoder(source: str):
    """The setup of a decode step: each item's JPEG `frames` (read from the `source` stage) to RGB
    arrays in `pixels`, in the worker; a corrupt JPEG fails its item (`corrupt_frame`)."""

    def setup(*_):  # (config) or (config, context)
        from pipeline.models.clip import decode_jpeg  # torch: in the worker, not on the driver

        def decode(item: dict) -> dict | Failure:
            try:
                frames = [decode_jpeg(data) for data in item.pop("frames")]
            except ValueError as exc:
                return Failure("corrupt_frame", f"{source}: {exc}")
            return {**item, "pixels": frames}

        return lambda items: [decode(item) for item in items]

    return setup


def _words(prompt, item: dict) -> dict:
    return {"messages": prompt.as_messages(), "frames": item["pixels"]}


def _ask_setup(config: VisualTagsConfig):
    return asker(config, _words)


def _ask_dataset(config: VisualTagsConfig):
    return vllm_transform(config, _words, chat=True, multimodal=True)


def _check(config) -> None:
    load_prompt(config.prompt, config.prompts_folder)
    check_engine("visual_tags.engine", config.engine, ray_data=True)  # a vllm engine runs through Ray Data LLM here


STAGE = Stage(
    name="visual_tags",
    description="MAC-VR visual tags: a VLM over each video's sparse frames, once per temperature",
    key="request_id",
    inputs=("videos", "vlm_frames"),
    config_type=VisualTagsConfig,
    schema=TAGS,
    items=visual_tags_items,
    steps=(Step("decode", frames_decoder("vlm_frames"), main=False),
           Step("ask", _ask_setup, stateful=True, dataset=_ask_dataset)),
    reads={"vlm_frames": ("frames",)},
    identity=tag_stage_identity,
    check=_check,
)

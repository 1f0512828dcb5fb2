"""video_skeletons: MMI-TVR's video skeleton (Sec. 4.2.2) of every video, by a VLM on its key images.

Per video and visual cluster, one request: the `mmi_visual_answer` prompt with the video's
`key_images` (8 frames chosen by disparity, first to last), the cluster's representative question
and its demonstration as a one-shot example (its question and answer; the example's own video is
not sent); each request has its own seed. Rows as in `text_skeletons`. Videos without key images
fail as `upstream_failed`; `splits` limits which videos get skeletons.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.engines import check_engine
from pipeline.engines.config import EngineConfig, TransformersEngineConfig
from pipeline.engines.prompts import load_prompt
from pipeline.mmi.asking import AnswerSampling, representative_questions, skeleton_asker, skeleton_vllm_transform
from pipeline.run.stage import ModelRunSettings, Stage, Step
from pipeline.stages.text_skeletons import in_splits
from pipeline.stages.visual_tags import DEFAULT_VLM, frames_decoder
from pipeline.store.schema import VIDEO_SKELETONS
from pipeline.tags.asking import tag_stage_identity


@dataclass
class VideoSkeletonsConfig:
    engine: EngineConfig = field(default_factory=lambda: TransformersEngineConfig(model=DEFAULT_VLM))
    prompt: str = "mmi_visual_answer"
    prompts_folder: str | None = None  # None: the repository's prompts/
    splits: list[str] | None = None  # videos of these splits only; None: every video
    sampling: AnswerSampling = field(default_factory=AnswerSampling)
    run: ModelRunSettings = field(default_factory=lambda: ModelRunSettings(batch_size=8, rows_per_shard=64))


def video_skeletons_items(config: VideoSkeletonsConfig, inputs) -> pa.Table:
    videos = inputs["videos"].table(columns=["video_id", "split"])
    return in_splits(videos, config.splits).select(["video_id"])


def _words(item: dict):
    return {"video_id": item["video_id"]}, {}, item["pixels"]


def _context(config: VideoSkeletonsConfig, inputs) -> list:
    return representative_questions(inputs["demonstrations"], "visual")


def _check(config: VideoSkeletonsConfig) -> None:
    load_prompt(config.prompt, config.prompts_folder)
    check_engine("video_skeletons.engine", config.engine, ray_data=True)


STAGE = Stage(
    name="video_skeletons",
    description="MMI video skeletons: each video's key images asked every visual cluster's question, one-shot",
    key="video_id",
    inputs=("videos", "key_images", "demonstrations"),
    config_type=VideoSkeletonsConfig,
    schema=VIDEO_SKELETONS,
    items=video_skeletons_items,
    steps=(Step("decode", frames_decoder("key_images"), main=False),
           Step("ask", lambda config, questions: skeleton_asker(config, questions, _words), stateful=True,
                dataset=lambda config, questions: skeleton_vllm_transform(config, questions, _words,
                                                                          multimodal=True))),
    reads={"key_images": ("frames",)},
    identity=tag_stage_identity,
    check=_check,
    context=_context,
)

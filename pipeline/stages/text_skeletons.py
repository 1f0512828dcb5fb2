"""text_skeletons: MMI-TVR's text skeleton (Sec. 4.2.2) of every caption, by an LLM.

Per caption and textual cluster, one request: the `mmi_text_answer` prompt with the caption, the
cluster's representative question and its demonstration as a one-shot example
(`demonstrations`); each request has its own seed. The row holds the answers in cluster order and
the skeleton, their concatenation (`pipeline.mmi.asking`). A caption whose request failed is a
`generation_error` failure; a cut-off answer keeps its row, with "length" as its finish reason.
`splits` limits which captions get skeletons: an MSR-VTT run asks 200k captions times the textual
clusters, and re-ranking needs only the test split's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.engines import check_engine
from pipeline.engines.config import EngineConfig, TransformersEngineConfig
from pipeline.engines.prompts import load_prompt
from pipeline.mmi.asking import AnswerSampling, representative_questions, skeleton_asker, skeleton_vllm_transform
from pipeline.run.stage import ModelRunSettings, Stage, Step
from pipeline.stages.textual_tags import DEFAULT_LLM
from pipeline.store.schema import TEXT_SKELETONS
from pipeline.tags.asking import tag_stage_identity


@dataclass
class TextSkeletonsConfig:
    engine: EngineConfig = field(default_factory=lambda: TransformersEngineConfig(model=DEFAULT_LLM))
    prompt: str = "mmi_text_answer"
    prompts_folder: str | None = None  # None: the repository's prompts/
    splits: list[str] | None = None  # captions of these splits only; None: every caption
    sampling: AnswerSampling = field(default_factory=AnswerSampling)
    run: ModelRunSettings = field(default_factory=lambda: ModelRunSettings(batch_size=32, rows_per_shard=256))


def in_splits(table: pa.Table, splits: list[str] | None) -> pa.Table:
    if splits is None:
        return table
    return table.filter(pa.compute.is_in(table.column("split"), pa.array(splits, pa.string())))


def text_skeletons_items(config: TextSkeletonsConfig, inputs) -> pa.Table:
    captions = inputs["captions"].table(columns=["caption_id", "video_id", "text", "split"])
    return in_splits(captions, config.splits).select(["caption_id", "video_id", "text"])


def _words(item: dict):
    return {"caption_id": item["caption_id"], "video_id": item["video_id"]}, {"caption": item["text"]}, None


def _context(config: TextSkeletonsConfig, inputs) -> list:
    return representative_questions(inputs["demonstrations"], "text")


def _check(config: TextSkeletonsConfig) -> None:
    load_prompt(config.prompt, config.prompts_folder)
    check_engine("text_skeletons.engine", config.engine, ray_data=True)


STAGE = Stage(
    name="text_skeletons",
    description="MMI text skeletons: each caption asked every textual cluster's question, one-shot",
    key="caption_id",
    inputs=("captions", "demonstrations"),
    config_type=TextSkeletonsConfig,
    schema=TEXT_SKELETONS,
    items=text_skeletons_items,
    steps=(Step("ask", lambda config, questions: skeleton_asker(config, questions, _words), stateful=True,
                dataset=lambda config, questions: skeleton_vllm_transform(config, questions, _words,
                                                                          multimodal=False)),),
    identity=tag_stage_identity,
    check=_check,
    context=_context,
)

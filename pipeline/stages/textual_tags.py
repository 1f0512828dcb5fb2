"""textual_tags: MAC-VR's textual tags, an LLM asked about each caption at each temperature.

Per caption and temperature, one request: by default the paper's raw Vicuna-style
`macvr_textual_tags` prompt ("A chat between ... USER: ... 1) <caption> ... ASSISTANT:"), sent as
text without a chat template, as the paper did; `chat_template: true` sends the same words as
chat messages through the model's own template instead. The caption is inserted as data, never as
template syntax. Rows as in visual_tags.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.engines import check_engine
from pipeline.engines.config import EngineConfig, TransformersEngineConfig
from pipeline.engines.prompts import load_prompt
from pipeline.run.stage import ModelRunSettings, Stage, Step
from pipeline.store.schema import TAGS
from pipeline.tags.asking import SamplingSettings, asker, fan_out, tag_stage_identity, vllm_transform

DEFAULT_LLM = "meta-llama/Llama-3.1-8B-Instruct"


@dataclass
class TextualTagsConfig:
    engine: EngineConfig = field(default_factory=lambda: TransformersEngineConfig(model=DEFAULT_LLM))
    prompt: str = "macvr_textual_tags"
    prompts_folder: str | None = None  # None: the repository's prompts/
    chat_template: bool = False  # False: the paper's raw prompt text
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    run: ModelRunSettings = field(default_factory=lambda: ModelRunSettings(batch_size=32, rows_per_shard=256))


def textual_tags_items(config: TextualTagsConfig, inputs) -> pa.Table:
    captions = inputs["captions"].table(columns=["caption_id", "video_id", "text"])
    return fan_out(captions, "caption_id", config.sampling.temperatures)


def _words_for(config: TextualTagsConfig):
    def words(prompt, item: dict) -> dict:
        if config.chat_template:
            return {"messages": prompt.as_messages(caption=item["text"])}
        return {"prompt": prompt.render(caption=item["text"])}

    return words


def _ask_setup(config: TextualTagsConfig):
    return asker(config, _words_for(config))


def _ask_dataset(config: TextualTagsConfig):
    return vllm_transform(config, _words_for(config), chat=config.chat_template, multimodal=False)


def _check(config) -> None:
    load_prompt(config.prompt, config.prompts_folder)
    check_engine("textual_tags.engine", config.engine, ray_data=True)  # a vllm engine runs through Ray Data LLM here


STAGE = Stage(
    name="textual_tags",
    description="MAC-VR textual tags: an LLM over each caption, once per temperature",
    key="request_id",
    inputs=("captions",),
    config_type=TextualTagsConfig,
    schema=TAGS,
    items=textual_tags_items,
    steps=(Step("ask", _ask_setup, stateful=True, dataset=_ask_dataset),),
    identity=tag_stage_identity,
    check=_check,
)

"""text_features: CLIP text embeddings of every caption.

Per caption, a float16 `[dim]` projected text embedding from the text tower of the same kind of
checkpoint as `frame_features` (not normalised; the metadata says so), and whether the caption
was longer than the model's context and was cut (`truncated`: the embedding saw only its start).
With `tokens: true`, also the last hidden state of every real token, float16 `[n_tokens, width]`,
for LSDO's text prototypes (large: about 77 x 512 values per caption).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipeline.models.identity import check_model, checkpoint_identity
from pipeline.run.stage import ModelRunSettings, Stage, Step
from pipeline.stages.frame_features import DEFAULT_CLIP
from pipeline.store.schema import text_features_schema


@dataclass
class TextFeaturesConfig:
    model: str = DEFAULT_CLIP  # Hugging Face id or local folder of a CLIPModel checkpoint
    revision: str | None = None
    tokens: bool = False  # also store per-token features (LSDO)
    run: ModelRunSettings = field(default_factory=lambda: ModelRunSettings(batch_size=256, rows_per_shard=1024))


def text_features_items(config: TextFeaturesConfig, inputs) -> pa.Table:
    return inputs["captions"].table(columns=["caption_id", "video_id", "text"])


def _embed_setup(config: TextFeaturesConfig):
    from pipeline.models.clip import ClipText, use_cpu_threads

    run = config.run
    # One forward pass per call of `run.batch_size` captions; halved on out-of-memory.
    model = ClipText.load(config.model, config.revision, device=run.device, dtype=run.dtype, batch_size=sys.maxsize)

    use_cpu_threads(model.device, run.num_cpus)
    def embed(items: list[dict]) -> list[dict]:
        out = model.encode([item["text"] for item in items], tokens=config.tokens)
        return [{"caption_id": item["caption_id"], "video_id": item["video_id"],
                 "features": out.embeds[i].astype(np.float16), "truncated": out.truncated[i],
                 "token_features": list(out.tokens[i].astype(np.float16)) if config.tokens else None}
                for i, item in enumerate(items)]

    return embed


def _schema(config: TextFeaturesConfig) -> pa.Schema:
    from pipeline.models.clip import embedding_dim, text_width

    return text_features_schema(embedding_dim(config.model, config.revision), text_width(config.model, config.revision))


def _identity(config: TextFeaturesConfig) -> dict:
    return {"checkpoint": checkpoint_identity(config.model, config.revision)}


def _provenance(config: TextFeaturesConfig) -> dict[str, str]:
    from pipeline.models.clip import embedding_dim, text_width

    return {"model": config.model, "revision": config.revision or "",
            "dim": str(embedding_dim(config.model, config.revision)),
            "token_width": str(text_width(config.model, config.revision)),
            "features": "projected text embeddings (text_embeds), not normalised, float16"}


STAGE = Stage(
    name="text_features",
    description="CLIP text embeddings of each caption, float16 [dim] (per-token features optional)",
    key="caption_id",
    inputs=("captions",),
    config_type=TextFeaturesConfig,
    schema=_schema,
    items=text_features_items,
    steps=(Step("embed", _embed_setup, stateful=True),),
    identity=_identity,
    provenance=_provenance,
    check=lambda config: check_model("text_features.model", config.model),
)

"""skeleton_scores: MMI-TVR's Eq. 9, how well a text skeleton and a video skeleton describe one scene.

For each caption of `split` and each of its K candidate videos, one request: the paper's prompt
word for word ("Given a probability value of [0,1], evaluate the probability that the Textual
Skeleton and Video Skeleton are describing a scene.", `prompts/mmi_skeleton_score.j2`) with the
caption's text skeleton and the video's video skeleton. The answer is read by
`pipeline.mmi.parse_probability`: the row keeps the raw answer and the score, null when the answer
names no probability. `tvr eval --rerank OUT` combines the scores with a checkpoint's similarity
by Eq. 10.

Candidates: `clip`, the top K videos of the split by the cosine similarity of the caption's
`text_features` and the video's mean-pooled `frame_features` (computed on the driver, one part
at a time, for the split only); or the path of a top-K file written by
`tvr eval CHECKPOINT --write-topk K` (its sha256 is part of the version). A pair whose caption or
video has no skeleton fails as `upstream_failed`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import ConfigError, bounds
from pipeline.engines import check_engine, load_engine
from pipeline.engines.base import GenerationResult
from pipeline.engines.config import EngineConfig, TransformersEngineConfig, VllmEngineConfig
from pipeline.engines.prompts import load_prompt
from pipeline.mmi.asking import AnswerSampling, answer_request
from pipeline.mmi.probability import parse_probability
from pipeline.run.stage import Failure, ModelRunSettings, Stage, Step
from pipeline.run.workers import answered, item_of
from pipeline.stages.textual_tags import DEFAULT_LLM
from pipeline.store.schema import SKELETON_SCORES, TOPK
from pipeline.tags.asking import request_seed, tag_stage_identity

CLIP = "clip"


@dataclass
class SkeletonScoresConfig:
    # The paper scores with its fine-tuned LVLM; the prompt holds no image, so any LLM can answer it.
    engine: EngineConfig = field(default_factory=lambda: TransformersEngineConfig(model=DEFAULT_LLM))
    prompt: str = "mmi_skeleton_score"
    prompts_folder: str | None = None  # None: the repository's prompts/
    split: str = "test"  # the captions (and candidate videos) scored
    k: int = field(default=10, metadata=bounds(min=1))  # candidate videos per caption
    # "clip", or the path of a top-K file (`tvr eval CHECKPOINT --write-topk K`)
    candidates: str = CLIP
    sampling: AnswerSampling = field(default_factory=lambda: AnswerSampling(max_tokens=16))
    run: ModelRunSettings = field(default_factory=lambda: ModelRunSettings(batch_size=32, rows_per_shard=256))


def pair_id(caption_id: str, video_id: str) -> str:
    return f"{caption_id}|{video_id}"


_ITEMS = pa.schema([("pair_id", pa.string()), ("caption_id", pa.string()), ("video_id", pa.string()),
                    ("candidate_rank", pa.int32()), ("similarity", pa.float64()), ("candidates", pa.string())])


def skeleton_scores_items(config: SkeletonScoresConfig, inputs) -> pa.Table:
    captions = inputs["captions"].table(columns=["caption_id", "split"])
    caption_ids = [c for c, s in zip(*(captions.column(n).to_pylist() for n in ("caption_id", "split")))
                   if s == config.split]
    videos = inputs["videos"].table(columns=["video_id", "split"])
    video_ids = [v for v, s in zip(*(videos.column(n).to_pylist() for n in ("video_id", "split")))
                 if s == config.split]
    if config.candidates == CLIP:
        pairs, source = clip_candidates(inputs, caption_ids, video_ids, config.k), CLIP
    else:
        source = f"topk:{_sha256(config.candidates)}"
        pairs = file_candidates(config.candidates, set(caption_ids), config.k)
    rows = [{"pair_id": pair_id(c, v), "caption_id": c, "video_id": v, "candidate_rank": rank,
             "similarity": similarity, "candidates": source} for c, v, rank, similarity in pairs]
    return pa.Table.from_pylist(rows, schema=_ITEMS)


def _rows_by_key(version, key: str, wanted: set[str]) -> dict[str, np.ndarray]:
    """`features` of the rows whose `key` is wanted, one part at a time (never the whole output)."""
    found: dict[str, np.ndarray] = {}
    for path in version.committed_paths():
        part = version.read_part(path, columns=[key, "features"])
        keep = pa.compute.is_in(part.column(key), pa.array(sorted(wanted), pa.string()))
        part = part.filter(keep)
        for name, features in zip(part.column(key).to_pylist(), part.column("features").to_pylist()):
            found[name] = np.asarray(features, dtype=np.float32)
    return found


def _normalised(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def clip_candidates(inputs, caption_ids: list[str], video_ids: list[str], k: int) -> list[tuple]:
    """Each caption's top K videos of the split by cosine similarity of its CLIP text embedding and
    the video's mean-pooled CLIP frame embeddings (ties to the lower video id). Captions or videos
    without features are left out (their pairs could not be scored anyway)."""
    texts = _rows_by_key(inputs["text_features"], "caption_id", set(caption_ids))
    frames = _rows_by_key(inputs["frame_features"], "video_id", set(video_ids))
    captions = [c for c in sorted(caption_ids) if c in texts]
    videos = [v for v in sorted(video_ids) if v in frames]
    if not captions or not videos:
        return []
    t = _normalised(np.stack([texts[c] for c in captions]))
    v = _normalised(np.stack([frames[v].mean(axis=0) for v in videos]))
    sim = t @ v.T
    pairs = []
    for row, caption in enumerate(captions):
        order = np.argsort(-sim[row], kind="stable")[:k]
        pairs += [(caption, videos[j], rank, float(sim[row, j])) for rank, j in enumerate(order)]
    return pairs


def file_candidates(path: str, caption_ids: set[str], k: int) -> list[tuple]:
    """The first K candidates of each caption of the split in a top-K file (`TOPK` schema)."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ConfigError(f"config value skeleton_scores.candidates={path!r}: cannot read it as Parquet: "
                          f"{exc}") from None
    missing = [name for name in TOPK.names if name not in table.column_names]
    if missing:
        raise ConfigError(f"config value skeleton_scores.candidates={path!r}: not a top-K file (no "
                          f"{', '.join(missing)} column); write one with `tvr eval CHECKPOINT --write-topk K`")
    rows = sorted((r for r in table.select(TOPK.names).to_pylist() if r["caption_id"] in caption_ids),
                  key=lambda r: (r["caption_id"], r["rank"]))
    pairs, taken = [], {}
    for r in rows:
        n = taken.get(r["caption_id"], 0)
        if n < k:
            pairs.append((r["caption_id"], r["video_id"], n, float(r["similarity"])))
            taken[r["caption_id"]] = n + 1
    return pairs


def _sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _request(config: SkeletonScoresConfig, prompt, item: dict):
    text = prompt.render(text_skeleton=item["text_skeleton"], video_skeleton=item["video_skeleton"])
    return answer_request(item["pair_id"], config.sampling, text)


def _row(config: SkeletonScoresConfig, prompt, item: dict, result: GenerationResult) -> dict | Failure:
    if result.error is not None or result.finish_reason == "error":
        return Failure("generation_error", result.error or "the engine returned no text")
    return {**{name: item[name] for name in _ITEMS.names}, "score": parse_probability(result.text),
            "raw_output": result.text, "finish_reason": result.finish_reason,
            "seed": request_seed(config.sampling.seed, item["pair_id"]),  # answer_request's seed
            "model": config.engine.model, "revision": config.engine.revision, "prompt": prompt.name,
            "prompt_sha256": prompt.sha256, "prompt_tokens": result.prompt_tokens,
            "output_tokens": result.output_tokens}


def _score_setup(config: SkeletonScoresConfig):
    prompt = load_prompt(config.prompt, config.prompts_folder)
    engine = load_engine(config.engine, device=config.run.device, dtype=config.run.dtype)

    def score(items: list[dict]) -> list:
        requests = [_request(config, prompt, item) for item in items]
        results = engine.generate(requests)
        return [_row(config, prompt, item, result) for item, result in zip(items, results)]

    return score


def _score_dataset(config: SkeletonScoresConfig):
    if not isinstance(config.engine, VllmEngineConfig):
        return None

    def transform(dataset, keep: tuple[str, ...]):
        from pipeline.engines.vllm_engine import RESULT_COLUMNS, VllmEngine

        prompt = load_prompt(config.prompt, config.prompts_folder)
        processor = VllmEngine.processor(config.engine, lambda row: _request(config, prompt, item_of(row)),
                                         keep=keep, chat=True, concurrency=config.run.workers or 1)

        def to_row(row: dict) -> dict:
            result = GenerationResult(**{name: row[name] for name in RESULT_COLUMNS})
            return answered(row, _row(config, prompt, item_of(row), result))

        return processor(dataset).map(to_row)

    return transform


def _identity(config: SkeletonScoresConfig) -> dict:
    identity = tag_stage_identity(config)
    if config.candidates != CLIP:
        identity["candidates_sha256"] = _sha256(config.candidates)
    return identity


def _check(config: SkeletonScoresConfig) -> None:
    load_prompt(config.prompt, config.prompts_folder)
    check_engine("skeleton_scores.engine", config.engine, ray_data=True)
    if config.candidates != CLIP and not Path(config.candidates).is_file():
        raise ConfigError(f"config value skeleton_scores.candidates={config.candidates!r}: no such file (give "
                          "'clip', or a top-K file from `tvr eval CHECKPOINT --write-topk K`)")


STAGE = Stage(
    name="skeleton_scores",
    description="MMI Eq. 9: the probability that a caption's text skeleton and a candidate video's describe one scene",
    key="pair_id",
    inputs=("captions", "videos", "text_features", "frame_features", "text_skeletons", "video_skeletons"),
    config_type=SkeletonScoresConfig,
    schema=SKELETON_SCORES,
    items=skeleton_scores_items,
    steps=(Step("score", _score_setup, stateful=True, dataset=_score_dataset),),
    reads={"text_skeletons": {"skeleton": "text_skeleton"}, "video_skeletons": {"skeleton": "video_skeleton"}},
    identity=_identity,
    check=_check,
)

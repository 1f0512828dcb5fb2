"""demonstrations: MMI-TVR's demonstration sampling (Sec. 4.2.2, Eq. 6-7), one per pool and cluster.

Per cluster of `question_clusters`, its questions from the nearest the centre outwards (at most
`max_candidates`) are each answered on a small seeded sample of items: captions for the textual
pool (by the LLM of `text_engine`), key images for the visual pool (by the VLM of `visual_engine`).
Every (question, item) answer is a candidate demonstration d = [Q: q, A: a] (Eq. 6); the chosen one
minimises (question length, answer length, count of answer terms), Eq. 7, in whitespace words,
ties to the candidate nearer the centre (`pipeline.mmi.select_demonstration`). Its question is the
cluster's representative question: the skeleton stages ask it, with the demonstration as a
one-shot example. The row records every candidate and which one was chosen.

The paper's candidate also holds a "retrieval result" r; offline there is none to give, so the
row records the item the answer was made on (`item_id`, and the caption itself for the textual
pool) in its place (docs/mmi.md).

Use the same engines here as in `text_skeletons` and `video_skeletons` (the demonstrations are
that model's answers). A cluster whose every candidate failed is a `generation_error` failure; a
pool with no item to answer on (no caption in `sample_split`, no video with key images) fails its
clusters as `no_sample_items`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipeline.config import bounds
from pipeline.engines import check_engine, engine_identity, load_engine
from pipeline.engines.config import EngineConfig, TransformersEngineConfig
from pipeline.engines.prompts import load_prompt
from pipeline.mmi.asking import AnswerSampling, answer_request
from pipeline.mmi.demonstrations import DEFAULT_ANSWER_TERMS, count_answer_terms, select_demonstration, words
from pipeline.run.stage import Failure, ModelRunSettings, Stage, Step
from pipeline.stages.textual_tags import DEFAULT_LLM
from pipeline.stages.visual_tags import DEFAULT_VLM
from pipeline.store.schema import DEMONSTRATIONS


@dataclass
class DemonstrationsConfig:
    text_engine: EngineConfig = field(default_factory=lambda: TransformersEngineConfig(model=DEFAULT_LLM))
    visual_engine: EngineConfig = field(default_factory=lambda: TransformersEngineConfig(model=DEFAULT_VLM))
    text_prompt: str = "mmi_text_answer"
    visual_prompt: str = "mmi_visual_answer"
    prompts_folder: str | None = None  # None: the repository's prompts/
    sample_size: int = field(default=3, metadata=bounds(min=1))  # items each candidate question is answered on
    sample_split: str | None = None  # draw the sample from this split only; None: every split
    max_candidates: int | None = field(default=None, metadata=bounds(min=1))  # per cluster, nearest first
    answer_terms: list[str] = field(default_factory=lambda: list(DEFAULT_ANSWER_TERMS))  # Eq. 7's set
    sampling: AnswerSampling = field(default_factory=AnswerSampling)
    run: ModelRunSettings = field(default_factory=lambda: ModelRunSettings(batch_size=4, rows_per_shard=4))


def demonstration_id(pool: str, cluster: int) -> str:
    return f"{pool}/c{cluster:02d}"


def demonstrations_items(config: DemonstrationsConfig, inputs) -> pa.Table:
    """One item per pool and cluster, with its questions nearest the centre first."""
    table = inputs["question_clusters"].table(columns=["question_id", "pool", "question", "cluster", "rank"])
    clusters: dict[tuple[str, int], list[dict]] = {}
    for row in table.to_pylist():
        clusters.setdefault((row["pool"], row["cluster"]), []).append(row)
    items = []
    for (pool, cluster), rows in sorted(clusters.items()):
        rows = sorted(rows, key=lambda r: r["rank"])[: config.max_candidates]
        items.append({"demonstration_id": demonstration_id(pool, cluster), "pool": pool, "cluster": cluster,
                      "question_ids": [r["question_id"] for r in rows], "questions": [r["question"] for r in rows],
                      "ranks": [r["rank"] for r in rows]})
    return pa.Table.from_pylist(items, schema=pa.schema([
        ("demonstration_id", pa.string()), ("pool", pa.string()), ("cluster", pa.int32()),
        ("question_ids", pa.list_(pa.string())), ("questions", pa.list_(pa.string())),
        ("ranks", pa.list_(pa.int32()))]))


def _seeded_sample(ids: list[str], size: int, seed: int) -> list[str]:
    """`size` of the ids (all when fewer), drawn with `seed` from their sorted order, in that order."""
    ids = sorted(ids)
    if len(ids) <= size:
        return ids
    picks = np.random.default_rng(seed).choice(len(ids), size=size, replace=False)
    return [ids[i] for i in sorted(picks)]


def sample_context(config: DemonstrationsConfig, inputs) -> dict:
    """The seeded sample each pool's candidates are answered on: captions (id and text) for the
    textual pool; for the visual pool, videos with key images, and where their frames lie."""
    captions = inputs["captions"].table(columns=["caption_id", "text", "split"]).to_pylist()
    if config.sample_split is not None:
        captions = [c for c in captions if c["split"] == config.sample_split]
    text = {c["caption_id"]: c["text"] for c in captions}
    text_ids = _seeded_sample(list(text), config.sample_size, config.sampling.seed)

    videos = inputs["videos"].table(columns=["video_id", "split"]).to_pylist()
    in_split = {v["video_id"] for v in videos if config.sample_split is None or v["split"] == config.sample_split}
    located, parts = inputs["key_images"].locations("video_id")
    where = {v: (p, r) for v, p, r in zip(*(located.column(n).to_pylist() for n in ("video_id", "part", "row")))}
    video_ids = _seeded_sample([v for v in where if v in in_split], config.sample_size, config.sampling.seed)
    return {"text": [(i, text[i]) for i in text_ids],
            "visual": [(v, parts[where[v][0]], where[v][1]) for v in video_ids],
            "key_images": inputs["key_images"]}


def _read_sample_frames(context: dict) -> list[tuple[str, list]]:
    """The visual sample's key images, decoded (in the worker: pixels never pass the driver)."""
    from pipeline.models.clip import decode_jpeg

    version = context["key_images"]
    sample = []
    for video_id, part, row in context["visual"]:
        frames = version.read_part(part, columns=["frames"]).column("frames")[row].as_py()
        sample.append((video_id, [decode_jpeg(data) for data in frames]))
    return sample


class _Answerer:
    """Per worker: each pool's prompt, engine and sample, loaded the first time the pool is asked."""

    def __init__(self, config: DemonstrationsConfig, context: dict):
        self.config, self.context = config, context
        self.loaded: dict[str, tuple] = {}

    def pool(self, pool: str):
        if pool not in self.loaded:
            config = self.config
            text = pool == "text"
            prompt = load_prompt(config.text_prompt if text else config.visual_prompt, config.prompts_folder)
            engine_config = config.text_engine if text else config.visual_engine
            engine = load_engine(engine_config, device=config.run.device, dtype=config.run.dtype)
            sample = ([(i, None, caption) for i, caption in self.context["text"]] if text
                      else [(v, frames, None) for v, frames in _read_sample_frames(self.context)])
            self.loaded[pool] = (prompt, engine_config, engine, sample)
        return self.loaded[pool]

    def __call__(self, items: list[dict]) -> list:
        return [self.answer(item) for item in items]

    def answer(self, item: dict) -> dict | Failure:
        prompt, engine_config, engine, sample = self.pool(item["pool"])
        if not sample:
            return Failure("no_sample_items", f"no {'caption' if item['pool'] == 'text' else 'video with key images'}"
                                              f" to answer the {item['pool']} questions on"
                                              + (f" in split {self.config.sample_split!r}"
                                                 if self.config.sample_split is not None else ""))
        asked = [(qid, question, rank, item_id, frames, caption)
                 for qid, question, rank in zip(item["question_ids"], item["questions"], item["ranks"])
                 for item_id, frames, caption in sample]
        requests = [answer_request(f"{item['demonstration_id']}/{qid}@{item_id}", self.config.sampling,
                                   prompt.render(question=question, caption=caption, demonstration=None), frames)
                    for qid, question, rank, item_id, frames, caption in asked]
        results = engine.generate(requests)
        candidates = [self.candidate(a, request, result) for a, request, result in zip(asked, requests, results)]
        try:
            chosen = select_demonstration(candidates, self.config.answer_terms)
        except ValueError as exc:
            errors = sorted({c["error"] for c in candidates if c["error"]})
            return Failure("generation_error", f"no candidate answer to choose from ({exc}): {'; '.join(errors)}")
        best = candidates[chosen]
        captions = {item_id: caption for item_id, _, caption in sample}
        return {"demonstration_id": item["demonstration_id"], "pool": item["pool"], "cluster": item["cluster"],
                "candidates": candidates, "chosen": chosen, "question_id": best["question_id"],
                "question": best["question"], "answer": best["answer"], "item_id": best["item_id"],
                "item_text": captions[best["item_id"]], "model": engine_config.model,
                "revision": engine_config.revision, "prompt": prompt.name, "prompt_sha256": prompt.sha256}

    def candidate(self, asked: tuple, request, result) -> dict:
        qid, question, rank, item_id, _, _ = asked
        failed = result.error is not None or result.finish_reason == "error"
        answer = "" if failed else result.text.strip()
        return {"question_id": qid, "question": question, "rank": rank, "item_id": item_id, "answer": answer,
                "finish_reason": "error" if failed else result.finish_reason,
                "error": (result.error or "the engine returned no text") if failed else None,
                "seed": request.seed, "question_words": words(question), "answer_words": words(answer),
                "answer_terms": count_answer_terms(answer, self.config.answer_terms)}


def _identity(config: DemonstrationsConfig) -> dict:
    return {"prompt_sha256": {name: load_prompt(name, config.prompts_folder).sha256
                              for name in (config.text_prompt, config.visual_prompt)},
            "text_engine": engine_identity(config.text_engine), "visual_engine": engine_identity(config.visual_engine)}


def _check(config: DemonstrationsConfig) -> None:
    load_prompt(config.text_prompt, config.prompts_folder)
    load_prompt(config.visual_prompt, config.prompts_folder)
    check_engine("demonstrations.text_engine", config.text_engine)
    check_engine("demonstrations.visual_engine", config.visual_engine)


STAGE = Stage(
    name="demonstrations",
    description="MMI demonstrations: each cluster's questions answered on a seeded sample, one chosen by Eq. 7",
    key="demonstration_id",
    inputs=("question_clusters", "captions", "videos", "key_images"),
    config_type=DemonstrationsConfig,
    schema=DEMONSTRATIONS,
    items=demonstrations_items,
    steps=(Step("answer", lambda config, context: _Answerer(config, context), stateful=True),),
    identity=_identity,
    check=_check,
    context=sample_context,
)

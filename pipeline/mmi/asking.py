"""Asking an engine for MMI knowledge: the sampling settings of the answer stages, the one-shot
questions a skeleton stage asks, and turning an item's answers into its skeleton row.

A skeleton stage asks every item (a caption, a video) each cluster's representative question,
with the cluster's demonstration as a one-shot example: one request per item and cluster, keyed
`<item id>#c<cluster>`, each with its own seed (`request_seed`), so a rerun draws the same samples
and two requests never share a random stream. The item's row holds the answers in cluster order;
if any of its requests fails, the item is a `generation_error` failure (a skeleton missing a
cluster's answer is not a skeleton), and a cut-off answer keeps its row, its finish reason saying
"length".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import bounds
from pipeline.engines import load_engine
from pipeline.engines.base import GenerationRequest, GenerationResult
from pipeline.engines.config import VllmEngineConfig
from pipeline.engines.prompts import Prompt, load_prompt
from pipeline.run.stage import Failure
from pipeline.run.workers import answered, item_of
from pipeline.store.version import Version
from pipeline.tags.asking import request_seed

POOLS = ("text", "visual")


@dataclass
class AnswerSampling:
    """How an MMI answer is drawn. The paper names no decoding settings: greedy by default (a
    skeleton is the model's most likely answer); each request still has its own seed, so a
    config with a temperature draws the same samples on a rerun."""

    temperature: float = field(default=0.0, metadata=bounds(min=0))
    top_p: float = field(default=1.0, metadata=bounds(above=0, max=1))
    max_tokens: int = field(default=64, metadata=bounds(min=1))  # one short sentence, with room
    seed: int = 0


def answer_request(request_id: str, sampling: AnswerSampling, text: str, frames: list | None = None
                   ) -> GenerationRequest:
    """One question as one user message (the model's chat template around it), with frames for a VLM."""
    return GenerationRequest(id=request_id, messages=[{"role": "user", "content": text}], frames=list(frames or []),
                             temperature=sampling.temperature, top_p=sampling.top_p, max_tokens=sampling.max_tokens,
                             seed=request_seed(sampling.seed, request_id))


@dataclass(frozen=True)
class ClusterQuestion:
    """What a skeleton stage asks for one cluster: the representative question (the question of
    the demonstration Eq. 7 chose) and that demonstration as the one-shot example."""

    cluster: int
    question_id: str
    question: str
    demonstration: dict[str, Any]  # question, answer, and text (the caption it was made on; None for a video)


def representative_questions(demonstrations: Version, pool: str) -> list[ClusterQuestion]:
    """The pool's clusters in order, each with its representative question and demonstration."""
    table = demonstrations.table(columns=["pool", "cluster", "question_id", "question", "answer", "item_text"])
    rows = sorted((r for r in table.to_pylist() if r["pool"] == pool), key=lambda r: r["cluster"])
    return [ClusterQuestion(cluster=r["cluster"], question_id=r["question_id"], question=r["question"],
                            demonstration={"question": r["question"], "answer": r["answer"], "text": r["item_text"]})
            for r in rows]


def skeleton_request_id(item_id: str, cluster: int) -> str:
    return f"{item_id}#c{cluster:02d}"


def skeleton_requests(item_id: str, questions: list[ClusterQuestion], sampling: AnswerSampling, prompt: Prompt,
                      values: dict[str, Any], frames: list | None = None) -> list[GenerationRequest]:
    """The item's requests, one per cluster in cluster order: the prompt with `values` (the caption)
    and the cluster's question and demonstration."""
    return [answer_request(skeleton_request_id(item_id, q.cluster), sampling,
                           prompt.render(**values, question=q.question, demonstration=q.demonstration), frames)
            for q in questions]


def skeleton_text(answers: list[str]) -> str:
    """The skeleton: the answers in cluster order, each stripped, joined by a space."""
    return " ".join(a.strip() for a in answers if a.strip())


def skeleton_row(key_fields: dict[str, Any], questions: list[ClusterQuestion], results: list[GenerationResult],
                 sampling: AnswerSampling, engine_config, prompt: Prompt) -> dict | Failure:
    """The row of one item from its results (one per cluster, in order), or a Failure naming the
    first cluster whose request failed."""
    for question, result in zip(questions, results):
        if result.error is not None or result.finish_reason == "error":
            why = result.error or "the engine returned no text"
            return Failure("generation_error", f"cluster {question.cluster} ({question.question_id}): {why}")
    answers = [r.text.strip() for r in results]
    return {
        **key_fields,
        "clusters": [q.cluster for q in questions],
        "question_ids": [q.question_id for q in questions],
        "answers": answers,
        "finish_reasons": [r.finish_reason for r in results],
        "seeds": [request_seed(sampling.seed, r.id) for r in results],
        "skeleton": skeleton_text(answers),
        "model": engine_config.model, "revision": engine_config.revision,
        "prompt": prompt.name, "prompt_sha256": prompt.sha256,
        "prompt_tokens": sum(r.prompt_tokens for r in results),
        "output_tokens": sum(r.output_tokens for r in results),
    }


# Per item: (its key fields for the row, the prompt's values, its frames or None).
ItemWords = Callable[[dict], tuple[dict[str, Any], dict[str, Any], list | None]]


def skeleton_asker(config, questions: list[ClusterQuestion], words: ItemWords):
    """The batch function of a skeleton stage's model step: the prompt and engine loaded once per
    worker; per batch, every item's requests in one `generate` call, regrouped into one row (or
    Failure) per item. `config` has engine, prompt, prompts_folder, sampling and run."""
    prompt = load_prompt(config.prompt, config.prompts_folder)
    engine = load_engine(config.engine, device=config.run.device, dtype=config.run.dtype)

    def ask(items: list[dict]) -> list:
        if not questions:
            return [Failure("no_clusters", "the demonstrations version has no cluster for this pool")] * len(items)
        asked = [words(item) for item in items]
        requests = [r for (key, values, frames), item in zip(asked, items)
                    for r in skeleton_requests(_item_id(key), questions, config.sampling, prompt, values, frames)]
        results = engine.generate(requests)
        k = len(questions)
        return [skeleton_row(key, questions, results[i * k:(i + 1) * k], config.sampling, config.engine, prompt)
                for i, (key, _, _) in enumerate(asked)]

    return ask


def _item_id(key_fields: dict[str, Any]) -> str:
    return key_fields.get("caption_id") or key_fields["video_id"]


def skeleton_vllm_transform(config, questions: list[ClusterQuestion], words: ItemWords, *, multimodal: bool):
    """For a skeleton stage whose engine is vLLM: the model step as a Ray Data transform through
    Ray Data LLM (`Step.dataset`). Each item's row is spread into one row per cluster for the
    processor, and the answers are gathered again by item into its row. None for other engines."""
    if not isinstance(config.engine, VllmEngineConfig):
        return None

    def transform(dataset, keep: tuple[str, ...]):
        from pipeline.engines.vllm_engine import RESULT_COLUMNS, VllmEngine

        prompt = load_prompt(config.prompt, config.prompts_folder)

        def to_request(row: dict) -> GenerationRequest:
            key, values, frames = words(item_of(row))
            question = questions[row["_cluster"]]
            return skeleton_requests(_item_id(key), [question], config.sampling, prompt, values, frames)[0]

        processor = VllmEngine.processor(config.engine, to_request, keep=(*keep, "_cluster"), chat=True,
                                         multimodal=multimodal, concurrency=config.run.workers or 1)

        def per_cluster(row: dict) -> list[dict]:
            return [{**row, "_cluster": c} for c in range(len(questions))]

        def gather(group) -> Any:
            import pyarrow as pa

            rows = sorted(group.to_pylist(), key=lambda r: r["_cluster"])
            results = [GenerationResult(**{name: r[name] for name in RESULT_COLUMNS}) for r in rows]
            key, _, _ = words(item_of(rows[0]))
            if len(rows) != len(questions):  # a row lost on the way: never a skeleton short of an answer
                row = Failure("generation_error", f"{len(rows)} of {len(questions)} answers came back")
            else:
                row = skeleton_row(key, questions, results, config.sampling, config.engine, prompt)
            return pa.Table.from_pylist([answered(rows[0], row)])

        return processor(dataset.flat_map(per_cluster)).groupby("_key").map_groups(gather, batch_format="pyarrow")

    return transform

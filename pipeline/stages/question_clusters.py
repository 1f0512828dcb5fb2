"""question_clusters: MMI-TVR's knowledge clustering (Sec. 4.2.2, Eq. 4-5) of both question pools.

Each question of the textual and the visual instruction pool (`prompts/mmi_text_questions.txt`,
`prompts/mmi_visual_questions.txt`) is embedded as the paper does, the mean of its words' input
embeddings in the configured LLM/VLM (no forward pass), or by a sentence-transformers model;
each pool is clustered with k-means (seeded, `n_init` starts), k fixed by config or chosen by the
silhouette over [k_min, k_max] (the paper leaves k open); every question's row says its cluster,
its Euclidean distance to the centre and its rank there (0 = nearest: the cluster's most typical
question, tried first by `demonstrations`).

The pools are files, not outputs: their sha256 is part of the version, so editing one question
gives new versions of this stage and of every stage after it, and of nothing before. The pools are
small (50 questions each), so every worker embeds and clusters both whole (deterministically:
the same embeddings and seed give the same clusters) and writes the rows of the questions it was
given; a worker that finds a pool file changed since the run planned it fails those questions
(`pool_changed`) instead of writing rows of another pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa

from pipeline.config import bounds
from pipeline.mmi.clusters import Clustering, fit_clusters
from pipeline.mmi.pools import QuestionPool, load_pool
from pipeline.models.identity import check_model, checkpoint_identity
from pipeline.run.stage import Failure, ModelRunSettings, Stage, Step
from pipeline.stages.visual_tags import DEFAULT_VLM
from pipeline.store.schema import QUESTION_CLUSTERS


@dataclass
class QuestionClustersConfig:
    text_pool: str = "mmi_text_questions"  # <name>.txt in the pools folder
    visual_pool: str = "mmi_visual_questions"
    pools_folder: str | None = None  # None: the repository's prompts/
    # input_embeddings: the paper's mean of word embeddings in `model` (an LLM or a VLM);
    # sentence_transformers: a sentence-transformers model by id or folder.
    embedding: Literal["input_embeddings", "sentence_transformers"] = "input_embeddings"
    model: str = DEFAULT_VLM  # the paper embeds with its LVLM (Sec. 4.2.2)
    revision: str | None = None
    k: int | None = field(default=None, metadata=bounds(min=1))  # None: by the silhouette over [k_min, k_max]
    k_min: int = field(default=2, metadata=bounds(min=2))
    k_max: int = field(default=10, metadata=bounds(min=2))
    seed: int = 0
    n_init: int = field(default=10, metadata=bounds(min=1))  # k-means starts; the best inertia is kept
    run: ModelRunSettings = field(default_factory=lambda: ModelRunSettings(batch_size=128, rows_per_shard=128))

    def __post_init__(self):
        if self.k_min > self.k_max:
            raise ValueError(f"k_min ({self.k_min}) is above k_max ({self.k_max})")


def pools(config: QuestionClustersConfig) -> dict[str, QuestionPool]:
    return {"text": load_pool(config.text_pool, config.pools_folder),
            "visual": load_pool(config.visual_pool, config.pools_folder)}


def question_id(pool: str, index: int) -> str:
    return f"{pool}/q{index:03d}"


def question_clusters_items(config: QuestionClustersConfig, inputs) -> pa.Table:
    rows = [{"question_id": question_id(name, i), "pool": name, "question_index": i, "line": line,
             "question": question, "pool_sha256": pool.sha256}
            for name, pool in pools(config).items()
            for i, (question, line) in enumerate(zip(pool.questions, pool.lines))]
    return pa.Table.from_pylist(rows, schema=pa.schema([
        ("question_id", pa.string()), ("pool", pa.string()), ("question_index", pa.int32()), ("line", pa.int32()),
        ("question", pa.string()), ("pool_sha256", pa.string())]))


def embed_questions(config: QuestionClustersConfig, questions: list[str], device: str = "cpu") -> np.ndarray:
    from pipeline.models.question_embeddings import mean_word_embeddings, sentence_embeddings

    if config.embedding == "sentence_transformers":
        return sentence_embeddings(questions, config.model, config.revision, device=device)
    return mean_word_embeddings(questions, config.model, config.revision)


def cluster_pool(config: QuestionClustersConfig, pool: QuestionPool, device: str = "cpu") -> Clustering:
    embeddings = embed_questions(config, list(pool.questions), device)
    return fit_clusters(embeddings, k=config.k, seed=config.seed, k_min=config.k_min, k_max=config.k_max,
                        n_init=config.n_init)


def _cluster_setup(config: QuestionClustersConfig):
    device = "cpu" if config.run.device == "auto" else config.run.device
    loaded = pools(config)
    clusterings = {name: cluster_pool(config, pool, device) for name, pool in loaded.items()}

    def row(item: dict) -> dict | Failure:
        name, index = item["pool"], item["question_index"]
        pool = loaded[name]
        if pool.sha256 != item["pool_sha256"]:
            return Failure("pool_changed", f"{pool.path} changed after this run planned it; rerun to plan "
                                           "a new version from the file as it is now")
        clustering = clusterings[name]
        cluster = int(clustering.labels[index])
        silhouette = clustering.silhouette
        return {"question_id": item["question_id"], "pool": name, "question_index": index, "line": item["line"],
                "question": item["question"], "cluster": cluster, "distance": float(clustering.distances[index]),
                "rank": int(clustering.ranks[index]), "cluster_size": len(clustering.clusters[cluster]),
                "k": clustering.k, "silhouette": None if silhouette is None else float(silhouette),
                "k_chosen_by": clustering.chosen_by}

    return lambda items: [row(item) for item in items]


def _identity(config: QuestionClustersConfig) -> dict:
    return {"pools_sha256": {name: pool.sha256 for name, pool in pools(config).items()},
            "checkpoint": checkpoint_identity(config.model, config.revision)}


def _check(config: QuestionClustersConfig) -> None:
    pools(config)  # a missing, empty or duplicate-laden pool: one line naming the file and line
    check_model("question_clusters.model", config.model)


STAGE = Stage(
    name="question_clusters",
    description="MMI question pools embedded and clustered with k-means, ranked by distance to their centres",
    key="question_id",
    inputs=(),
    config_type=QuestionClustersConfig,
    schema=QUESTION_CLUSTERS,
    items=question_clusters_items,
    steps=(Step("cluster", _cluster_setup, stateful=True),),
    identity=_identity,
    provenance=lambda config: {"embedding": config.embedding, "model": config.model,
                               "revision": config.revision or ""},
    check=_check,
)

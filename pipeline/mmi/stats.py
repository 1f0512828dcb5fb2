"""MMI statistics for `tvr stats OUT`: per question pool its k, silhouette, each cluster's size,
representative question and chosen demonstration; and the distribution of the skeleton scores.
Read from the LATEST versions of question_clusters and skeleton_scores, and of demonstrations
when it was made from that question_clusters version (else each cluster shows its nearest
question, marked so)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pipeline.store.storage import Store
from pipeline.store.version import Version, latest_pointer


@dataclass
class ClusterSummary:
    cluster: int
    size: int
    nearest_question: str  # rank 0: the most typical question
    representative: str | None = None  # the chosen demonstration's question (None before demonstrations)
    answer: str | None = None  # the chosen demonstration's answer
    item_id: str | None = None  # the item it was answered on
    candidates: int = 0


@dataclass
class PoolSummary:
    pool: str
    questions: int
    k: int
    silhouette: float | None
    k_chosen_by: str
    clusters: list[ClusterSummary] = field(default_factory=list)


@dataclass
class ScoreSummary:
    pairs: int
    scored: int  # pairs whose answer named a probability
    quantiles: dict[str, float]  # min, 25%, median, 75%, max of the scores
    mean: float | None
    histogram: list[int]  # scores in ten bins [0, 0.1), ..., [0.9, 1.0]


def _latest(store: Store, stage: str) -> Version | None:
    pointed = latest_pointer(store, stage)
    return None if pointed is None else Version(store, stage, pointed)


def _input_version(version: Version, name: str) -> str | None:
    manifest = version.manifest() or {}
    return manifest.get("identity", {}).get("inputs", {}).get(name)


def pool_summaries(store: Store) -> list[PoolSummary]:
    clusters = _latest(store, "question_clusters")
    if clusters is None:
        return []
    rows = clusters.table().to_pylist()
    demonstrations = _latest(store, "demonstrations")
    if demonstrations is not None and _input_version(demonstrations, "question_clusters") != clusters.version:
        demonstrations = None  # made from other clusters (LATEST moved since): their choices do not apply
    chosen = {} if demonstrations is None else {
        (r["pool"], r["cluster"]): r for r in demonstrations.table(
            columns=["pool", "cluster", "question", "answer", "item_id", "candidates"]).to_pylist()}
    pools = []
    for pool in sorted({r["pool"] for r in rows}):
        mine = [r for r in rows if r["pool"] == pool]
        first = mine[0]
        summary = PoolSummary(pool, len(mine), first["k"], first["silhouette"], first["k_chosen_by"])
        for cluster in sorted({r["cluster"] for r in mine}):
            members = sorted((r for r in mine if r["cluster"] == cluster), key=lambda r: r["rank"])
            demo = chosen.get((pool, cluster))
            summary.clusters.append(ClusterSummary(
                cluster, len(members), members[0]["question"],
                *((demo["question"], demo["answer"], demo["item_id"], len(demo["candidates"])) if demo else ())))
        pools.append(summary)
    return pools


def score_summary(store: Store) -> ScoreSummary | None:
    scores = _latest(store, "skeleton_scores")
    if scores is None:
        return None
    values = scores.table(columns=["score"]).column("score").to_pylist()
    scored = np.array([v for v in values if v is not None], dtype=np.float64)
    if len(scored) == 0:
        return ScoreSummary(len(values), 0, {}, None, [0] * 10)
    names = ("min", "25%", "median", "75%", "max")
    quantiles = dict(zip(names, np.quantile(scored, [0, 0.25, 0.5, 0.75, 1]).tolist()))
    histogram = np.histogram(scored, bins=10, range=(0.0, 1.0))[0].tolist()
    return ScoreSummary(len(values), len(scored), quantiles, float(scored.mean()), histogram)


def mmi_statistics(out: str) -> tuple[list[PoolSummary], ScoreSummary | None]:
    store = Store.open(out)
    return pool_summaries(store), score_summary(store)


def _clip(text: str | None, width: int = 70) -> str:
    if text is None:
        return "-"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def format_mmi_statistics(pools: list[PoolSummary], scores: ScoreSummary | None) -> str:
    """Markdown, like the tag statistics: per pool its clustering and one line per cluster; then the
    skeleton scores. Empty when the run has no MMI output."""
    lines: list[str] = []
    for pool in pools:
        silhouette = "n/a" if pool.silhouette is None else f"{pool.silhouette:.3f}"
        lines += ["", f"{pool.pool} question pool: {pool.questions} questions, k = {pool.k} "
                      f"(chosen by {pool.k_chosen_by}), silhouette {silhouette}",
                  "| cluster | size | representative question (Eq. 7) | demonstration answer | item |",
                  "|---|---|---|---|---|"]
        for c in pool.clusters:
            question = c.representative if c.representative is not None else f"(nearest) {c.nearest_question}"
            lines.append(f"| {c.cluster} | {c.size} | {_clip(question)} | {_clip(c.answer, 50)} | {c.item_id or '-'} |")
    if scores is not None:
        lines += ["", f"skeleton scores: {scores.pairs} pairs, {scores.scored} with a probability, "
                      f"{scores.pairs - scores.scored} without"]
        if scores.scored:
            lines.append("  " + ", ".join(f"{name} {value:.2f}" for name, value in scores.quantiles.items())
                         + f", mean {scores.mean:.2f}")
            lines.append("  histogram [0, 0.1) ... [0.9, 1]: " + " ".join(str(n) for n in scores.histogram))
    return "\n".join(lines).strip("\n")

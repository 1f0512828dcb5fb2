"""MMI-TVR's joint objective (Sec. 4.3, Eq. 8-10) applied at evaluation: re-rank each caption's
scored candidate videos by lambda_r * sim + lambda_s * p.

The paper combines the two terms as a training objective, L = lambda_r L_r + lambda_s L_s (Eq. 10),
with L_r the text-video cosine similarity (Eq. 8) and L_s the LVLM's probability that the text and
video skeletons describe one scene (Eq. 9), and fine-tunes its LVLM on it. That LVLM is not ours to
fine-tune, so offline we apply the same combination to the scores themselves, with the paper's
best weights (Sec. 5.3: lambda_r = 0.6, lambda_s = 0.3). Only text-to-video is re-ranked: the
skeleton scores are asked per caption, for that caption's candidate videos.

The re-ranking never moves a video into or out of the candidates' places: a caption's scored
candidates are re-ordered among the positions they held in its ranking by sim, and every other
video keeps its position. It is returned as a copy of sim whose candidates' values are permuted,
so any metric over sim (R@K, MdR, MnR) works unchanged.

Pure NumPy and pyarrow: no model, no store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline.store.schema import TOPK

# One caption's candidates: (video column, p), p None when the answer named no probability.
Candidates = dict[int, list[tuple[int, float | None]]]

LAMBDA_R, LAMBDA_S = 0.6, 0.3  # MMI-TVR Sec. 5.3


@dataclass(frozen=True)
class RerankStats:
    """What a re-ranking had to work with."""

    captions: int  # captions with at least one candidate pair
    pairs: int  # candidate pairs inside the split
    scored: int  # pairs with a probability: re-ordered by Eq. 10
    unscored: int  # pairs whose answer named no probability: left where they are
    outside: int = 0  # pairs whose caption or video is not in the split: ignored


def rerank(sim: np.ndarray, candidates: Candidates, lambda_r: float = LAMBDA_R,
           lambda_s: float = LAMBDA_S) -> np.ndarray:
    """A copy of `sim` ([captions, videos]) in which each caption row's scored candidates hold the
    similarity values of the places they would take if re-ordered by Eq. 10.

    For a row, the scored candidates C (p not None) take, best first, the places C held in the
    row's ranking by sim (sim descending, ties by column: a stable sort); the order they take them
    in is lambda_r * sim + lambda_s * p descending, ties by their place in that ranking. The
    values in those places are sim's own, so a row's multiset of values never changes; videos
    outside C (unscored candidates included) keep their values. With lambda_s = 0 nothing moves.
    """
    _check_weights(lambda_r, lambda_s)
    original = np.asarray(sim)
    if original.ndim != 2:
        raise ValueError(f"sim must be a [captions, videos] matrix, got shape {original.shape}")
    out = original.copy()
    for row, pairs in candidates.items():
        if not 0 <= row < original.shape[0]:
            raise ValueError(f"candidate row {row} is outside sim's {original.shape[0]} caption rows")
        columns, p = _scored_columns(row, pairs, original.shape[1])
        if len(columns) < 2:
            continue  # one candidate has only its own place
        values = original[row, columns].astype(np.float64)
        by_sim = np.lexsort((columns, -values))  # candidates in the order the row's ranking holds them
        place = np.empty(len(columns), np.int64)
        place[by_sim] = np.arange(len(columns))
        by_joint = np.lexsort((place, -(lambda_r * values + lambda_s * p)))  # Eq. 10; ties keep their place
        out[row, columns[by_joint]] = original[row, columns[by_sim]]  # the k-th by Eq. 10 takes the k-th place
    return out


def _check_weights(lambda_r: float, lambda_s: float) -> None:
    for name, value in (("lambda_r", lambda_r), ("lambda_s", lambda_s)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _scored_columns(row: int, pairs: list[tuple[int, float | None]], n_videos: int) -> tuple[np.ndarray, np.ndarray]:
    """The row's candidate columns that have a probability, and those probabilities; every
    column checked to be in range and listed once."""
    seen: set[int] = set()
    columns, probabilities = [], []
    for column, p in pairs:
        if not 0 <= column < n_videos:
            raise ValueError(f"caption row {row}: candidate column {column} is outside sim's {n_videos} videos")
        if column in seen:
            raise ValueError(f"caption row {row} lists candidate column {column} twice")
        seen.add(column)
        if p is None:
            continue
        if not math.isfinite(p):
            raise ValueError(f"caption row {row}, column {column}: the probability {p!r} is not a number")
        columns.append(column)
        probabilities.append(float(p))
    return np.array(columns, np.int64), np.array(probabilities, np.float64)


def candidates_from_pairs(pairs: pa.Table, caption_ids: list[str], video_ids: list[str]
                          ) -> tuple[Candidates, RerankStats]:
    """Rows of skeleton_scores (`caption_id`, `video_id`, `score`) as candidates by caption row and
    video column of a split whose rows are `caption_ids` and columns `video_ids`, and their counts.
    A pair whose caption or video is not in the split is counted in `outside` and left out."""
    row_of = {c: i for i, c in enumerate(caption_ids)}
    column_of = {v: j for j, v in enumerate(video_ids)}
    columns = pairs.select(["caption_id", "video_id", "score"]).to_pydict()
    candidates: Candidates = {}
    outside = 0
    for caption, video, p in zip(columns["caption_id"], columns["video_id"], columns["score"]):
        row, column = row_of.get(caption), column_of.get(video)
        if row is None or column is None:
            outside += 1
            continue
        candidates.setdefault(row, []).append((column, p))
    return candidates, count_pairs(candidates, outside)


def count_pairs(candidates: Candidates, outside: int = 0) -> RerankStats:
    """How many captions and pairs `candidates` holds, with and without a probability."""
    pairs = sum(len(listed) for listed in candidates.values())
    unscored = sum(p is None for listed in candidates.values() for _, p in listed)
    return RerankStats(captions=sum(bool(listed) for listed in candidates.values()), pairs=pairs,
                       scored=pairs - unscored, unscored=unscored, outside=outside)


def skeleton_rerank(sim, pairs: pa.Table, caption_ids: list[str], video_ids: list[str], lambda_r: float,
                    lambda_s: float) -> tuple[np.ndarray, RerankStats]:
    """`sim` (the split's texts x videos, a NumPy array) re-ranked by Eq. 10 with the skeleton_scores rows
    `pairs` (`pipeline.mmi.rerank`), and what they held: pairs whose caption or video is not among
    `caption_ids` / `video_ids` (the split's rows and columns) are counted and ignored."""
    candidates, stats = candidates_from_pairs(pairs, caption_ids, video_ids)
    return rerank(np.array(sim, dtype=np.float64), candidates, lambda_r, lambda_s), stats


def top_k_table(sim, caption_ids: list[str], video_ids: list[str], k: int) -> pa.Table:
    """Each text row's k most similar videos (all of them when there are fewer), best first, ties
    by column, as `pipeline.store.schema.TOPK` rows: caption_id, video_id, rank (0-based),
    similarity; captions in row order."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    s = np.array(sim, dtype=np.float64)
    if s.shape != (len(caption_ids), len(video_ids)):
        raise ValueError(f"sim is {s.shape}, but there are {len(caption_ids)} captions and {len(video_ids)} videos")
    k = min(k, s.shape[1])
    best = np.argsort(-s, axis=1, kind="stable")[:, :k]  # stable: equal similarities keep column order
    rows = np.repeat(np.arange(len(s)), k)
    return pa.table({
        "caption_id": pa.array(np.asarray(caption_ids, dtype=object)[rows], pa.string()),
        "video_id": pa.array(np.asarray(video_ids, dtype=object)[best.ravel()], pa.string()),
        "rank": pa.array(np.tile(np.arange(k, dtype=np.int32), len(s)), pa.int32()),
        "similarity": pa.array(s[rows, best.ravel()], pa.float64()),
    }, schema=TOPK)

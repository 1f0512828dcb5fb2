"""MMI-TVR's knowledge clustering (Sec. 4.2.2, Eq. 4-5): k-means over question vectors, each
cluster's questions in ascending order of distance to its centre.

    clustering = fit_clusters(mean_word_embeddings(questions, model))
    clustering.clusters[0]   # question indices of cluster 0, the most typical first

The paper says only that "the number of clusters k is calculated by the knowledge clustering"
(Sec. 5.3). Our choice, when no k is configured: the k in [k_min, k_max] with the highest
silhouette score, the smaller k on a tie.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np


@dataclass
class Clustering:
    """One clustering of a question pool. Clusters are numbered in the pool order of their first
    question (cluster 0 holds question 0), whatever labels k-means drew."""

    labels: np.ndarray  # [n] the cluster of each question
    distances: np.ndarray  # [n] Euclidean distance to its cluster's centre (Eq. 5)
    ranks: np.ndarray  # [n] place in its cluster, 0 = nearest the centre
    clusters: list[list[int]]  # per cluster, question indices by ascending distance (ties: smaller index)
    k: int
    silhouette: float | None  # of this clustering; None when k == 1 or k == n (undefined)
    chosen_by: str  # "config", "silhouette" or "pool_size"


def fit_clusters(embeddings, k: int | None = None, seed: int = 0, k_min: int = 2, k_max: int = 10,
                 n_init: int = 10) -> Clustering:
    """Cluster the rows of `embeddings` [n, dim] with k-means (scikit-learn, k-means++, `n_init`
    starts, `random_state=seed`, in float64): the same input and seed give the same clustering.

    k: as given (`chosen_by` "config"); None picks the k in [k_min, min(k_max, n - 1)] with the
    highest silhouette score (Euclidean), the smaller k on a tie ("silhouette") - our choice, as
    the paper does not say how k is found. A pool too small for that range (one question, two,
    or k_min above n - 1) takes the largest k the pool allows up to k_max ("pool_size"); so does
    a configured k above the number of questions. k never exceeds the number of distinct points:
    identical questions cannot be told apart, and k-means would leave clusters empty.

    Distances are to each cluster's centroid, the mean of its members (Eq. 5's c_i)."""
    points = _points(embeddings)
    _check_range(k, k_min, k_max)
    labels, chosen_by = _choose_labels(points, k, seed, k_min, k_max, n_init)
    return _describe(points, labels, chosen_by)


def cluster_questions(embeddings, k: int | None = None, seed: int = 0) -> list[list[int]]:
    """Per cluster, the question indices nearest the centre first (`fit_clusters(...).clusters`)."""
    return fit_clusters(embeddings, k=k, seed=seed).clusters


def _points(embeddings) -> np.ndarray:
    points = np.asarray(embeddings, dtype=np.float64)
    if points.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array [questions, dim], got shape {points.shape}")
    if len(points) == 0:
        raise ValueError("no questions to cluster: the embeddings have no rows")
    if not np.isfinite(points).all():
        raise ValueError("embeddings hold NaN or infinite values; cannot cluster them")
    return points


def _check_range(k: int | None, k_min: int, k_max: int) -> None:
    if k is not None and k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k_min < 1 or k_max < k_min:
        raise ValueError(f"the range of k to search must have 1 <= k_min <= k_max, got [{k_min}, {k_max}]")


def _choose_labels(points: np.ndarray, k: int | None, seed: int, k_min: int, k_max: int,
                   n_init: int) -> tuple[np.ndarray, str]:
    """The labels of the chosen k and why it was chosen (see `fit_clusters`)."""
    n, distinct = len(points), len(np.unique(points, axis=0))
    if k is not None:
        if k > distinct:
            return _kmeans_labels(points, distinct, seed, n_init), "pool_size"
        return _kmeans_labels(points, k, seed, n_init), "config"
    # A silhouette needs 2 <= k <= n - 1; k above the distinct points would leave clusters empty.
    low, high = max(k_min, 2), min(k_max, n - 1, distinct)
    if low > high:
        return _kmeans_labels(points, min(k_max, n, distinct), seed, n_init), "pool_size"
    best_labels, best_score = None, -np.inf
    for candidate in range(low, high + 1):
        labels = _kmeans_labels(points, candidate, seed, n_init)
        score = _silhouette(points, labels)
        if score is not None and score > best_score:  # strictly: a tie keeps the smaller k
            best_labels, best_score = labels, score
    if best_labels is None:  # k-means merged clusters at every k: no silhouette to compare
        return _kmeans_labels(points, low, seed, n_init), "silhouette"
    return best_labels, "silhouette"


def _kmeans_labels(points: np.ndarray, k: int, seed: int, n_init: int) -> np.ndarray:
    """k-means labels renumbered in order of first appearance in the pool (0, 1, ... with no gaps)."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    if k == 1:
        return np.zeros(len(points), dtype=np.int64)
    # A pool is tens of questions: one thread is faster than starting OpenMP's, and as deterministic.
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        # Near-duplicate points can still leave fewer distinct clusters; the renumbering absorbs it.
        warnings.filterwarnings("ignore", message="Number of distinct clusters")
        raw = KMeans(n_clusters=k, init="k-means++", n_init=n_init, random_state=seed).fit_predict(points)
    _, first_seen = np.unique(raw, return_index=True)
    order = np.unique(raw)[np.argsort(first_seen)]
    renumber = {int(label): number for number, label in enumerate(order)}
    return np.array([renumber[int(label)] for label in raw], dtype=np.int64)


def _silhouette(points: np.ndarray, labels: np.ndarray) -> float | None:
    """The mean silhouette (Euclidean), or None where it is undefined (one cluster, or one per point)."""
    from sklearn.metrics import silhouette_score

    used = len(np.unique(labels))
    if used < 2 or used >= len(points):
        return None
    return float(silhouette_score(points, labels, metric="euclidean"))


def _describe(points: np.ndarray, labels: np.ndarray, chosen_by: str) -> Clustering:
    """Distances to each cluster's centroid, the order inside each cluster, the silhouette."""
    k = int(labels.max()) + 1
    distances = np.zeros(len(points))
    ranks = np.zeros(len(points), dtype=np.int64)
    clusters = []
    for cluster in range(k):
        members = np.flatnonzero(labels == cluster)
        centre = points[members].mean(axis=0)
        distances[members] = np.linalg.norm(points[members] - centre, axis=1)
        ordered = members[np.lexsort((members, distances[members]))]  # by distance, then index
        ranks[ordered] = np.arange(len(ordered))
        clusters.append([int(i) for i in ordered])
    return Clustering(labels=labels, distances=distances, ranks=ranks, clusters=clusters, k=k,
                      silhouette=_silhouette(points, labels), chosen_by=chosen_by)

"""Retrieval metrics, both directions: R@1/5/10, median and mean rank.

Conventions (REFERENCE.md, "Retrieval metrics"): ranks are 1-based with ties averaged, so a
constant matrix scores R@1 = 0; several captions per video go through `text_to_video`; NumPy
arrays and torch tensors are accepted, never modified, and results are plain floats.
"""

from __future__ import annotations

import numpy as np

KEYS = ("R1", "R5", "R10", "MdR", "MnR")


def as_float64(x) -> np.ndarray:
    """A float64 NumPy copy of an array, torch tensor (any device or dtype) or nested list."""
    if hasattr(x, "detach"):  # a torch tensor; duck-typed so that this module never imports torch
        x = x.detach().double().cpu().numpy()
    return np.array(x, dtype=np.float64)  # np.array copies: the caller's input is never touched


def _matrix(sim) -> np.ndarray:
    s = as_float64(sim)
    if s.ndim != 2 or s.size == 0:
        raise ValueError(f"sim must be a non-empty 2-D matrix, got shape {s.shape}")
    if np.isnan(s).any():
        raise ValueError("sim contains NaN, which has no rank")
    return s


def _targets(s: np.ndarray, text_to_video) -> np.ndarray:
    """g(i) for each text row: the diagonal without a mapping, else the mapping, checked."""
    if text_to_video is None:
        if s.shape[0] != s.shape[1]:
            raise ValueError(f"sim is {s.shape[0]} x {s.shape[1]}; a non-square matrix needs text_to_video")
        return np.arange(s.shape[0])
    if hasattr(text_to_video, "detach"):
        text_to_video = text_to_video.detach().cpu().numpy()
    t = np.asarray(text_to_video)
    if t.shape != (s.shape[0],) or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"text_to_video must be {s.shape[0]} integers (one per text row), got {t.dtype} {t.shape}")
    if t.min() < 0 or t.max() >= s.shape[1]:
        raise ValueError(f"text_to_video has video indices outside [0, {s.shape[1]})")
    return t.astype(np.int64)


def ranks(scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    """REFERENCE.md "Rank of a query": rank_i = 1 + #{j : S[i,j] > S[i,g(i)]}
    + #{j != g(i) : S[i,j] == S[i,g(i)]} / 2, i.e. a tie with k others costs k/2 places."""
    true = scores[np.arange(len(scores)), target][:, None]
    above = (scores > true).sum(axis=1)
    tied = (scores == true).sum(axis=1) - 1  # minus g(i) itself
    return 1.0 + above + tied / 2.0


def summarize(r: np.ndarray) -> dict[str, float]:
    """REFERENCE.md: R@K = 100 * mean(rank <= K); MdR = NumPy's median; MnR = mean rank."""
    out = {f"R{k}": float(100.0 * np.mean(r <= k)) for k in (1, 5, 10)}
    return out | {"MdR": float(np.median(r)), "MnR": float(np.mean(r))}


def retrieval_metrics(sim, text_to_video=None) -> dict[str, float]:
    """Text-to-video: rows of `sim` are texts, columns videos; `text_to_video[i]` is the column
    of text i's video (None: square, g(i) = i). Every column is a candidate, captioned or not."""
    s = _matrix(sim)
    return summarize(ranks(s, _targets(s, text_to_video)))


def video_to_text_metrics(sim, text_to_video=None) -> dict[str, float]:
    """Video-to-text on the same texts x videos matrix (REFERENCE.md, CLIP4Clip / X-Pool / T-MASS
    convention): video v ranks the caption groups, group u scored by its best caption,
    M[v,u] = max over texts i of video u of S[i,v], then the rank rule with g(v) = v.
    Videos with no caption are left out, as queries and as groups. Square and unmapped, M = S.T."""
    s = _matrix(sim)
    t = _targets(s, text_to_video)
    videos = np.unique(t)  # the captioned videos, sorted
    group = np.searchsorted(videos, t)  # each text's group, 0 .. len(videos)-1
    order = np.argsort(group, kind="stable")
    starts = np.searchsorted(group[order], np.arange(len(videos)))  # every group is non-empty
    best = np.maximum.reduceat(s[order][:, videos], starts, axis=0)  # best[u, v] = M[v, u]
    return summarize(ranks(best.T, np.arange(len(videos))))

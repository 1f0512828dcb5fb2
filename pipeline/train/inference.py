"""Inference-time re-scoring of a similarity matrix: dual softmax (DSL) and QB-Norm. (MMI-TVR's
skeleton re-ranking, Eq. 10, and the top-K candidates are in `pipeline.mmi.rerank`.)

Both take NumPy arrays or torch tensors, never modify them, compute in float64 and return the
input's kind: a NumPy array, or a torch tensor on the input's device (dtype float64 either way).
"""

from __future__ import annotations

import numpy as np

from pipeline.train.metrics import as_float64


def _like(result: np.ndarray, like):
    """`result` as a torch tensor on `like`'s device when `like` is a tensor, else as NumPy."""
    if not hasattr(like, "detach"):
        return result
    import torch  # already imported by whoever made `like`

    return torch.from_numpy(result).to(like.device)


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)  # an all -inf slice gives -inf, not NaN
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def dual_softmax(sim, temperature: float = 0.01, dim: int = 0):
    """REFERENCE.md "Dual softmax, DSL": sim * softmax(sim / temperature, dim), softmax stable.

    On a texts x videos matrix, dim=0 normalises each video's column over the texts, for
    text-to-video (rows then ranked); dim=1 normalises each text's row, for video-to-text
    (columns then ranked). temperature 0.01 on cosine similarities is the common `sim * 100`.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    s = as_float64(sim)
    z = s / temperature  # the temperature divides
    e = np.exp(z - np.max(z, axis=dim, keepdims=True))  # max subtracted: no overflow
    return _like(s * (e / np.sum(e, axis=dim, keepdims=True)), sim)


# The querybank is read in blocks of this many rows: a 180,000 x 1,000 float32 bank (MSR-VTT's
# training captions against the 1k-A videos) is never copied whole, to float64 or otherwise.
BANK_ROWS = 4096


def _bank_blocks(querybank_sim):
    for start in range(0, querybank_sim.shape[0], BANK_ROWS):
        yield as_float64(querybank_sim[start : start + BANK_ROWS])


def activation_set(querybank_sim, k: int, theta: int) -> np.ndarray:
    """REFERENCE.md "QB-Norm": A = {j : j is among the top-k of at least theta querybank rows},
    as a boolean mask over the gallery. Ties go to the lower gallery index (stable sort)."""
    counts = np.zeros(querybank_sim.shape[1], np.int64)
    for block in _bank_blocks(querybank_sim):
        counts += np.bincount(np.argsort(-block, axis=1, kind="stable")[:, :k].ravel(), minlength=len(counts))
    return counts >= theta


def qb_norm(sim, querybank_sim, k: int = 1, beta: float = 20.0, theta: int = 1):
    """QB-Norm with the dynamic inverted softmax (Bogolin et al., CVPR 2022; theta from DiCoSA),
    as REFERENCE.md "QB-Norm with dynamic inverted softmax" fixes it.

    `sim` is Q x G (test queries x gallery), `querybank_sim` P x G (e.g. training captions x the
    same gallery). A row whose top-1 gallery item (ties: lowest index) is in the activation set
    becomes exp(beta * sim[i,j]) / Z_j with Z_j = sum_p exp(beta * querybank_sim[p,j]); every other
    row keeps its raw similarities. Video-to-text: pass the transposes. The querybank is read in
    blocks of `BANK_ROWS` rows, so its memory is never doubled.
    """
    s = as_float64(sim)
    if not hasattr(querybank_sim, "shape"):  # a nested list
        querybank_sim = as_float64(querybank_sim)
    if s.ndim != 2 or len(querybank_sim.shape) != 2 or s.shape[1] != querybank_sim.shape[1] \
            or querybank_sim.shape[0] == 0:
        raise ValueError(f"sim (Q x G) and querybank_sim (P x G, P >= 1) disagree: "
                         f"{s.shape} vs {tuple(querybank_sim.shape)}")
    if not 1 <= k <= s.shape[1]:
        raise ValueError(f"k must be between 1 and the gallery size {s.shape[1]}, got {k}")
    if theta < 1:
        raise ValueError(f"theta must be at least 1, got {theta}")
    rows = activation_set(querybank_sim, k, theta)[np.argmax(s, axis=1)]  # argmax: first of tied maxima
    log_z = np.full(s.shape[1], -np.inf)  # log Z_j, accumulated block by block, stable for any beta
    for block in _bank_blocks(querybank_sim):
        log_z = np.logaddexp(log_z, _logsumexp(beta * block, axis=0))
    s[rows] = np.exp(beta * s[rows] - log_z)  # = exp(beta*s_ij) / Z_j wherever that is finite; s is our copy
    return _like(s, sim)


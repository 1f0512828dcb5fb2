"""Retrieval heads: how a text embedding and a video's frame embeddings become one similarity.

Every head has the same two methods, so that MAC-VR, T-MASS and LSDO heads can join later:

    head.similarity(text [T, d], frames [V, F, d]) -> [T, V]    cosine similarities, every pair
    head.loss(text [B, d], frames [B, F, d]) -> scalar           symmetric InfoNCE, pair i = (text i, video i)

`text` is the CLIP text tower's projected embedding, `frames` the stored CLIP image embeddings
(neither normalised). A head owns the learnable logit scale of its contrastive loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.train.config import ModelConfig


class Head(nn.Module):
    """The shared contrastive loss; subclasses define `similarity`."""

    def __init__(self, temperature: float):
        super().__init__()
        # CLIP (Sec. 2.5): a learnable temperature, parametrised as a log-scale, initialised to 1/0.07.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def similarity(self, text: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, text: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE (CLIP; T-MASS Eq. 1-2), with lambda = exp(logit_scale) clipped at 100 as CLIP:
        L_t2v = -1/N sum_i log( e^{lambda s(t_i, v_i)} / sum_j e^{lambda s(t_i, v_j)} ),
        L_v2t = -1/N sum_i log( e^{lambda s(t_i, v_i)} / sum_j e^{lambda s(t_j, v_i)} ),
        L = (L_t2v + L_v2t) / 2."""
        logits = self.logit_scale.exp().clamp(max=100.0) * self.similarity(text, frames)
        target = torch.arange(len(logits), device=logits.device)
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class MeanPool(Head):
    """CLIP4Clip's meanP: the video is the mean of its frames; cosine similarity. No parameters
    but the logit scale: it learns only through a trained text encoder."""

    def similarity(self, text, frames):
        video = F.normalize(frames.mean(dim=1), dim=-1)
        return F.normalize(text, dim=-1) @ video.T


class XPool(Head):
    """X-Pool's text-conditioned pooling (Gorti et al., CVPR 2022; MAC-VR Eq. 1; T-MASS Eq. 4):
    each text attends over each video's frames and the video is the attention-weighted frames,
        a_{t,f} = softmax_f( (W_q LN(t)) . (W_k LN(f_f)) / tau_a ),   z = LN(W_o sum_f a_{t,f} W_v LN(f_f)),
        v_t = LN(z + dropout(W z))                                 (X-Pool's residual block),
    then s(t, v) = cos(t, v_t). tau_a = sqrt(d) in X-Pool; MAC-VR names it tau_a (= 3 there, Sec. 4.1).
    Projections start at the identity (X-Pool's released code), so training starts from plain
    similarity-weighted pooling of the CLIP frames."""

    def __init__(self, dim: int, config: ModelConfig):
        super().__init__(config.temperature)
        self.tau = config.tau_a or math.sqrt(dim)
        self.norm_in = nn.LayerNorm(dim)
        self.q, self.k, self.v, self.o, self.linear = (nn.Linear(dim, dim) for _ in range(5))
        self.norm_attn, self.norm_out = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout = nn.Dropout(config.dropout)
        for layer in (self.q, self.k, self.v, self.o, self.linear):
            nn.init.eye_(layer.weight)
            nn.init.zeros_(layer.bias)

    def pool(self, text: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """[T, V, d]: every video pooled for every text."""
        q = self.q(self.norm_in(text))  # [T, d]
        f = self.norm_in(frames)  # [V, F, d]
        k, v = self.k(f), self.v(f)
        attention = torch.einsum("td,vfd->tvf", q, k).div(self.tau).softmax(dim=-1)  # Eq. 1, over frames
        z = self.norm_attn(self.o(torch.einsum("tvf,vfd->tvd", attention, v)))
        return self.norm_out(z + self.dropout(self.linear(z)))

    def similarity(self, text, frames):
        video = F.normalize(self.pool(text, frames), dim=-1)  # [T, V, d]
        return torch.einsum("td,tvd->tv", F.normalize(text, dim=-1), video)


def build_head(config: ModelConfig, dim: int) -> Head:
    """The head `model.head` names, for embeddings of width `dim`."""
    if config.head == "meanpool":
        return MeanPool(config.temperature)
    if config.head == "xpool":
        return XPool(dim, config)
    raise ValueError(f"unknown head {config.head!r}")  # the config's Literal already rejects it

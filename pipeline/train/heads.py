"""Retrieval heads: how a caption and a video become one similarity score, and the loss that trains it.

Every head has the same two methods, so the loop treats them alike:

    head.similarity(texts [T], videos [V]) -> [T, V]   a score for every pair (evaluation)
    head.loss(texts [B], videos [B]) -> scalar          pair i = (caption i, video i) (training)

`Texts.embeds` is the CLIP text tower's projected embedding, `Videos.frames` the stored CLIP image
embeddings (neither normalised). `Texts.words` (the tower's projected token features) are filled
for heads with `reads_words` (LSDO); `Texts.tags` / `Videos.tags` (the embeddings of MAC-VR's
"a video of t1, t2, ..." sentences, textual and visual) for heads with `reads_tags`. A pair's score
never depends on which other texts and videos share its batch at evaluation, so the loop may
score in chunks. A head owns the learnable logit scale of its contrastive loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import ConfigError
from pipeline.train.config import ModelConfig


@dataclass
class Texts:
    embeds: torch.Tensor  # [T, d]
    words: torch.Tensor | None = None  # [T, L, d] token features (LSDO)
    word_mask: torch.Tensor | None = None  # [T, L] bool, True on the caption's words
    tags: torch.Tensor | None = None  # [T, d] the caption's textual-tag sentence (MAC-VR)

    def __len__(self) -> int:
        return len(self.embeds)

    def __getitem__(self, index) -> Texts:
        return replace(self, **{f.name: getattr(self, f.name)[index] for f in fields(self)
                                if getattr(self, f.name) is not None})


@dataclass
class Videos:
    frames: torch.Tensor  # [V, F, d]
    tags: torch.Tensor | None = None  # [V, d] the video's visual-tag sentence (MAC-VR)

    __getitem__ = Texts.__getitem__

    def __len__(self) -> int:
        return len(self.frames)


def identity_(*layers: nn.Linear) -> None:
    """Square projections start as the identity, biases at zero (X-Pool's released code; LSDO
    Sec. IV-B.1 "initialized as identity and zeros"), so training starts from plain CLIP geometry."""
    for layer in layers:
        nn.init.eye_(layer.weight)
        nn.init.zeros_(layer.bias)


def infonce(logits: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over a [B, B] matrix whose diagonal holds the positive pairs (T-MASS Eq. 1-2):
    L = (L_t2v + L_v2t) / 2 with L_t2v = -1/B sum_i log softmax_j(logits[i, j])[i], L_v2t on the columns."""
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class Head(nn.Module):
    """The shared contrastive loss over `similarity`; subclasses define `similarity`."""

    reads_words = False
    reads_tags = False

    def __init__(self, temperature: float):
        super().__init__()
        # CLIP (Sec. 2.5): a learnable temperature, parametrised as a log-scale; lambda = exp(.) <= 100.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def scale(self, sim: torch.Tensor) -> torch.Tensor:
        return self.logit_scale.exp().clamp(max=100.0) * sim

    def similarity(self, texts: Texts, videos: Videos) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, texts: Texts, videos: Videos) -> torch.Tensor:
        return infonce(self.scale(self.similarity(texts, videos)))


def cosine_pairs(text: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """cos(text[t], video[t, v]) for text [T, d] and per-text videos [T, V, d] -> [T, V]."""
    return torch.einsum("td,tvd->tv", F.normalize(text, dim=-1), F.normalize(video, dim=-1))


# ---- meanpool: CLIP4Clip's meanP -------------------------------------------------------------------


class MeanPool(Head):
    """The video is the mean of its frames; cosine similarity. No parameters but the logit scale:
    it learns only through a trained text encoder."""

    def similarity(self, texts, videos):
        return F.normalize(texts.embeds, dim=-1) @ F.normalize(videos.frames.mean(dim=1), dim=-1).T


# ---- xpool: text-conditioned attention pooling ------------------------------------------------------


class TextConditionedPool(nn.Module):
    """Scaled dot-product attention from a text query to a video's frames (X-Pool; MAC-VR Eq. 1;
    T-MASS Eq. 4; LSDO Eq. 16-20):
        a_{t,f} = softmax_f( (W_q LN(t)) . (W_k LN(f_f)) / tau ),   z = LN(W_o sum_f a_{t,f} W_v LN(f_f)),
    and with `residual` X-Pool's block v_t = LN(z + dropout(W z)). Every text pools every video:
    [T, d] x [V, F, d] -> [T, V, d]."""

    def __init__(self, dim: int, tau: float, dropout: float, residual: bool):
        super().__init__()
        self.tau = tau
        self.norm_text, self.norm_frames, self.norm_attn = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        identity_(self.q, self.k, self.v, self.o)
        self.residual = residual
        if residual:
            self.linear, self.norm_out, self.dropout = nn.Linear(dim, dim), nn.LayerNorm(dim), nn.Dropout(dropout)
            identity_(self.linear)

    def forward(self, text: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        q = self.q(self.norm_text(text))  # [T, d]
        f = self.norm_frames(frames)  # [V, F, d]
        attention = torch.einsum("td,vfd->tvf", q, self.k(f)).div(self.tau).softmax(dim=-1)
        z = self.norm_attn(self.o(torch.einsum("tvf,vfd->tvd", attention, self.v(f))))
        return self.norm_out(z + self.dropout(self.linear(z))) if self.residual else z

    def per_video(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """The same attention within each video: queries [V, F, d] over that video's keys [V, r, d]."""
        q = self.q(self.norm_text(queries))
        f = self.norm_frames(keys)
        attention = torch.einsum("vfd,vrd->vfr", q, self.k(f)).div(self.tau).softmax(dim=-1)
        return self.norm_attn(self.o(torch.einsum("vfr,vrd->vfd", attention, self.v(f))))


class XPool(Head):
    """X-Pool (Gorti et al., CVPR 2022): s(t, v) = cos(t, pool(t, frames of v)); tau = sqrt(d) as
    X-Pool, or `model.tau_a` (MAC-VR's tau_a)."""

    def __init__(self, dim: int, config: ModelConfig):
        super().__init__(config.temperature)
        self.pool = TextConditionedPool(dim, config.tau_a or math.sqrt(dim), config.dropout, residual=True)

    def similarity(self, texts, videos):
        return cosine_pairs(texts.embeds, self.pool(texts.embeds, videos.frames))


# ---- macvr: latent concepts, auxiliary tag concepts, weighted similarity ------------------------------


def concept_loss(a: torch.Tensor, b: torch.Tensor, decoupling: float, alignment: float) -> torch.Tensor:
    """DiCoSA's L_C as MAC-VR Appx. D restates it (Eq. 7-9), for matched concept sets a, b [B, K, d/K]:
    C_{k,l} is the covariance of the normalised factors, each feature standardised over the batch
    (zero mean, unit variance), averaged over the d/K features: a correlation in [-1, 1]. Then
    L1 = sum_{k != l} C_kl^2 (inter-concept decoupling), L2 = sum_k (1 - C_kk)^2 (intra-concept
    alignment), L_C = gamma L1 + delta L2. Standardising over the batch is what keeps L2 from being
    met by constant concepts: they must vary together across videos."""
    za = (a - a.mean(dim=0)) / (a.std(dim=0, unbiased=False) + 1e-5)
    zb = (b - b.mean(dim=0)) / (b.std(dim=0, unbiased=False) + 1e-5)
    c = torch.einsum("bkd,bld->kl", za, zb) / (a.shape[0] * a.shape[2])
    diagonal = torch.diagonal(c)
    return decoupling * (c.pow(2).sum() - diagonal.pow(2).sum()) + alignment * (1 - diagonal).pow(2).sum()


class FrameTransformer(nn.Module):
    """MAC-VR Sec. 4.1: "a 4-layer transformer to aggregate the embedding of all the frames"
    (CLIP4Clip's seqTransf: positions, transformer, residual). Its output layer starts near zero,
    so the block starts as about the identity on the CLIP frames."""

    def __init__(self, dim: int, num_frames: int, layers: int):
        super().__init__()
        self.position = nn.Parameter(torch.zeros(num_frames, dim))
        layer = nn.TransformerEncoderLayer(dim, nhead=max(1, dim // 64), dim_feedforward=4 * dim, dropout=0.0,
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.out = nn.Linear(dim, dim)
        nn.init.normal_(self.out.weight, std=1e-3)  # not zero: the layers below learn from step 1
        nn.init.zeros_(self.out.bias)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return frames + self.out(self.encoder(frames + self.position[: frames.shape[1]]))


class MacVR(Head):
    """MAC-VR (Sec. 3.3). The T-CVE (Eq. 1) pools each video for each caption:
        a_{i,j} = softmax_j(T_i . F_j / tau_a),  V_i = sum_j a_{i,j} F_j   (F: frames after the frame transformer).
    Each of the video V, caption T, visual-tag sentence A^v and textual-tag sentence A^t is split
    into K latent concepts of d/K by its own projection (Eq. 2: e_k = W_k X). A two-layer MLP (256,
    ReLU; Sec. 4.1) gives a confidence per concept from the pair's four concepts (Eq. 3), and
        S(v, t) = sum_k c_k cos(e^t_k, e^v_k)                                     (Eq. 4).
    Eq. 3 puts no normalisation on c: the MLP's output is used as it is, starting at 1/K per
    concept (about a mean of the concept cosines). Loss (Eq. 5): L = L_S + L_C(E^v, E^t) + alpha L_A with
    L_S InfoNCE over S, L_A = L_C(E^v, E^av) + L_C(E^t, E^at) (Appx. D). Without tags (`tags`
    false) it is the DiCoSA baseline: the MLP reads [e^v, e^t] and there is no L_A."""

    def __init__(self, dim: int, num_frames: int, config: ModelConfig, tags: bool):
        super().__init__(config.temperature)
        if dim % config.concepts:
            raise ConfigError(f"model.concepts={config.concepts} does not divide the embedding width {dim} "
                              f"of the features' checkpoint")
        self.reads_tags, self.config, self.k = tags, config, config.concepts
        self.tau = config.tau_a or 3.0  # MAC-VR Sec. 4.1: tau_a = 3
        self.frames = FrameTransformer(dim, num_frames, config.frame_layers) if config.frame_layers else nn.Identity()
        sides = ("video", "text", "visual_tags", "textual_tags") if tags else ("video", "text")
        self.concepts = nn.ModuleDict({side: nn.Linear(dim, dim) for side in sides})  # W_1..W_K, stacked
        self.hidden = nn.ModuleDict({side: nn.Linear(dim // self.k, config.confidence_hidden, bias=False)
                                     for side in sides})  # the MLP's first layer, one block per input
        self.hidden_bias = nn.Parameter(torch.zeros(config.confidence_hidden))
        self.confidence = nn.Linear(config.confidence_hidden, 1)
        nn.init.normal_(self.confidence.weight, std=1e-3)  # small, not zero: the first layer learns from step 1
        nn.init.constant_(self.confidence.bias, 1.0 / self.k)

    def split(self, side: str, x: torch.Tensor) -> torch.Tensor:
        """Eq. 2: [..., d] -> [..., K, d/K]."""
        return self.concepts[side](x).unflatten(-1, (self.k, -1))

    def video(self, text: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """Eq. 1, every video for every text: [T, d] x [V, F, d] -> [T, V, d]."""
        frames = self.frames(frames)
        attention = torch.einsum("td,vfd->tvf", text, frames).div(self.tau).softmax(dim=-1)
        return torch.einsum("tvf,vfd->tvd", attention, frames)

    def concept_sets(self, texts: Texts, videos: Videos) -> dict[str, torch.Tensor]:
        """E^v [T, V, K, d/K], and E^t, E^at [T, 1, K, d/K], E^av [1, V, K, d/K] (broadcastable)."""
        sets = {"video": self.split("video", self.video(texts.embeds, videos.frames)),
                "text": self.split("text", texts.embeds)[:, None]}
        if self.reads_tags:
            sets["visual_tags"] = self.split("visual_tags", videos.tags)[None]
            sets["textual_tags"] = self.split("textual_tags", texts.tags)[:, None]
        return sets

    def weighted(self, sets: dict[str, torch.Tensor]) -> torch.Tensor:
        """Eq. 3-4. The MLP's first layer on the concatenation [e^v, e^t, e^av, e^at] is the sum of
        one block per input, so no [T, V, K, 4d/K] concatenation is built."""
        hidden = sum(self.hidden[side](e) for side, e in sets.items()) + self.hidden_bias
        c = self.confidence(F.relu(hidden)).squeeze(-1)  # [T, V, K]
        cosines = (F.normalize(sets["text"], dim=-1) * F.normalize(sets["video"], dim=-1)).sum(-1)
        return (c * cosines).sum(-1)

    def similarity(self, texts, videos):
        return self.weighted(self.concept_sets(texts, videos))

    def loss(self, texts, videos):
        sets = self.concept_sets(texts, videos)
        loss = infonce(self.scale(self.weighted(sets)))  # L_S
        own = {"video": torch.diagonal(sets["video"]).permute(2, 0, 1)}  # each caption's own video: [B, K, d/K]
        own |= {side: e.flatten(0, 1) for side, e in sets.items() if side != "video"}
        cfg = self.config
        loss = loss + concept_loss(own["video"], own["text"], cfg.decoupling_weight, cfg.concept_alignment_weight)
        if self.reads_tags:  # Eq. 5's alpha L_A: each modality's concepts against its tags' concepts
            loss = loss + cfg.alignment_weight * (
                concept_loss(own["video"], own["visual_tags"], cfg.decoupling_weight, cfg.concept_alignment_weight)
                + concept_loss(own["text"], own["textual_tags"], cfg.decoupling_weight, cfg.concept_alignment_weight))
        return loss


# ---- tmass: the caption as a stochastic "text mass" --------------------------------------------------


class TMass(XPool):
    """T-MASS (Sec. 3.3) over X-Pool's video embedding v = pool(t, frames) (its baseline, Eq. 4).
    The radius depends on the pair: S = [cos(t, f_1), ..., cos(t, f_F)] (Eq. 6), R = exp(S W) with
    W a linear layer F -> d (Eq. 7); a stochastic text t_s = t + R * eps, eps ~ N(0, I) (Eq. 5); the
    support text t_sup = t + (v - t) / |v - t| * R (Eq. 8). Training: L = L_s + alpha L_sup (Eq. 9),
    both symmetric InfoNCE, L_s over cos(t_s, v), L_sup over cos(t_sup, v). Inference: M draws of
    t_s per pair, and the pair's score is the best one (Eq. 10)."""

    def __init__(self, dim: int, num_frames: int, config: ModelConfig):
        super().__init__(dim, config)
        self.radius = nn.Linear(num_frames, dim)
        self.trials, self.support_weight = config.trials, config.support_weight

    def mass(self, text: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(v [T, V, d], R [T, V, d]) for every text and video."""
        s = torch.einsum("td,vfd->tvf", F.normalize(text, dim=-1), F.normalize(frames, dim=-1))  # Eq. 6
        return self.pool(text, frames), self.radius(s).exp()  # Eq. 7

    def similarity(self, texts, videos):
        t = texts.embeds[:, None]  # [T, 1, d]
        v, r = self.mass(texts.embeds, videos.frames)
        best = None
        for _ in range(self.trials):  # Eq. 10, one draw at a time: [T, V, d] at most, never [M, T, V, d]
            eps = torch.randn(len(t), 1, t.shape[-1], device=t.device, dtype=t.dtype)
            score = F.cosine_similarity(t + r * eps, v, dim=-1)
            best = score if best is None else torch.maximum(best, score)
        return best

    def loss(self, texts, videos):
        t = texts.embeds[:, None]
        v, r = self.mass(texts.embeds, videos.frames)
        stochastic = t + r * torch.randn_like(r)  # Eq. 5, a fresh draw per pair
        support = t + F.normalize(v - t, dim=-1) * r  # Eq. 8
        return (infonce(self.scale(F.cosine_similarity(stochastic, v, dim=-1)))
                + self.support_weight * infonce(self.scale(F.cosine_similarity(support, v, dim=-1))))


# ---- lsdo: low-salient but discriminative objects ------------------------------------------------------


class Lsdo(Head):
    """LSDO (Sec. III), over precomputed CLIP frames and the text tower's word features:
      f'_v = FC(f_v)                                                              (Eq. 2)
      video-level features f_s [r, d], one of (`model.lsdo_features`):
        average  mean_i LN(FC_s(f_v^i))                                           (Eq. 5)
        single   LN(FC_s(f_v^mid)) - average, entries above theta set to 0        (Eq. 6-7)
        shared   phi(v_1), ..., phi(v_m): m reference training videos through a transformer layer,
                 mean-pooled (Eq. 4; the loop sets them, `set_reference`)
      f_p = LN(softmax(LN(f_v) W'_q (LN(f_s) W'_k)^T / sqrt(d)) LN(f_s) W'_v W'_o)   (Eq. 8-12)
      f_m = alpha f'_v + (1 - alpha) f_p                                          (Eq. 15)
      f_o = W_p f_w, W_p [K, L] from two FC layers over the words f_w             (Eq. 13)
      f_r = gamma f_t + (1 - gamma) maxpool_K(f_o)                                (Eq. 14)
      f_a = text-conditioned pooling of f_m with f_r as the query (Eq. 16-20);  s = cos(f_r, f_a).
    The "single" frame is the middle one of the stored frames (the paper draws one from segment 6 of
    12). A hard threshold passes no gradient to theta, so theta stays at its initial 0.9 here. Eq. 23
    sums the two directions where the other heads average them; AdamW does not see the factor 2."""

    reads_words = True

    def __init__(self, dim: int, num_frames: int, config: ModelConfig):
        super().__init__(config.temperature)
        self.features, self.threshold = config.lsdo_features, config.lsdo_threshold
        self.alpha, self.gamma = config.lsdo_frame_mix, config.lsdo_text_mix
        self.frame_fc = nn.Linear(dim, dim)
        self.objects = TextConditionedPool(dim, math.sqrt(dim), 0.0, residual=False)  # Eq. 8-12: frames query f_s
        self.prototypes = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, config.prototypes))
        self.fusion = TextConditionedPool(dim, math.sqrt(dim), 0.0, residual=False)  # Eq. 16-20
        identity_(self.frame_fc)
        if self.features == "shared":
            self.phi = nn.TransformerEncoderLayer(dim, nhead=max(1, dim // 64), dim_feedforward=4 * dim,
                                                  dropout=0.0, batch_first=True, norm_first=True)
            self.register_buffer("reference", torch.zeros(config.shared_videos, num_frames, dim))
        else:
            self.scene_fc, self.scene_norm = nn.Linear(dim, dim), nn.LayerNorm(dim)
            identity_(self.scene_fc)

    def set_reference(self, frames: torch.Tensor) -> None:
        """The shared features' m reference videos' frames [m, F, d] (kept in the checkpoint)."""
        self.reference.copy_(frames)

    def video_level(self, frames: torch.Tensor) -> torch.Tensor:
        """f_s: [V, r, d] (r = 1, or m shared)."""
        if self.features == "shared":
            shared = self.phi(self.reference).mean(dim=1)  # [m, d]
            return shared.expand(len(frames), *shared.shape)
        per_frame = self.scene_norm(self.scene_fc(frames))  # [V, F, d]
        average = per_frame.mean(dim=1, keepdim=True)
        if self.features == "average":
            return average
        difference = per_frame[:, (frames.shape[1] - 1) // 2 : (frames.shape[1] + 1) // 2] - average
        return difference.masked_fill(difference > self.threshold, 0.0)

    def text(self, texts: Texts) -> torch.Tensor:
        """f_r [T, d]."""
        weights = self.prototypes(texts.words).masked_fill(~texts.word_mask[..., None], float("-inf"))
        f_o = torch.einsum("tlk,tld->tkd", weights.softmax(dim=1), texts.words)  # W_p over each caption's words
        return self.gamma * texts.embeds + (1 - self.gamma) * f_o.max(dim=1).values

    def frames_with_objects(self, frames: torch.Tensor) -> torch.Tensor:
        """f_m [V, F, d]: each frame queries its video's f_s (the object attention, pooled per frame)."""
        f_p = self.objects.per_video(frames, self.video_level(frames))
        return self.alpha * self.frame_fc(frames) + (1 - self.alpha) * f_p

    def similarity(self, texts, videos):
        f_r = self.text(texts)
        return cosine_pairs(f_r, self.fusion(f_r, self.frames_with_objects(videos.frames)))


def build_head(config: ModelConfig, dim: int, num_frames: int, tags: bool = False) -> Head:
    """The head `model.head` names, for embeddings of width `dim` and `num_frames` frames a video;
    `tags`: whether the data gives MAC-VR its tag sentences."""
    if config.head == "meanpool":
        return MeanPool(config.temperature)
    if config.head == "xpool":
        return XPool(dim, config)
    if config.head == "macvr":
        return MacVR(dim, num_frames, config, tags)
    if config.head == "tmass":
        return TMass(dim, num_frames, config)
    if config.head == "lsdo":
        return Lsdo(dim, num_frames, config)
    raise ValueError(f"unknown head {config.head!r}")  # the config's Literal already rejects it

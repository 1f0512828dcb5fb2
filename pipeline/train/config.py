"""The training config: one tree of dataclasses, defaults <- YAML <- `--set` (Meta Lingua style).

    cfg = config.load(TrainConfig, "jobs/configs/train/msrvtt_xpool.yaml", ["optim.epochs=1"])

`pipeline.config.build` rejects unknown keys and values out of range in one line; the resolved
tree is saved beside each checkpoint as `config.yaml`, so `tvr eval` rebuilds exactly this run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from pipeline.config import ConfigError, bounds, check_bounds

# The stage outputs a run reads; `data.versions` may pin any of them (else each one's LATEST).
INPUT_STAGES = ("frame_features", "videos", "captions", "text_features", "visual_tags", "textual_tags",
                "text_skeletons", "video_skeletons")


@dataclass
class DataConfig:
    out: str  # the pipeline's output folder (or pyarrow.fs URI)
    versions: dict[str, str] = field(default_factory=dict)  # stage -> version; unnamed stages: LATEST
    train_split: str = "train"
    test_split: str = "test"
    num_frames: int = field(default=12, metadata=bounds(min=1))  # per video, uniformly from the stored frames
    # With the text tower frozen, read the caption embeddings text_features stored (same checkpoint
    # as frame_features) instead of running the tower: it is most of a CPU training step. Heads that
    # read word features (lsdo) always run the tower.
    text_features: bool = True
    # MAC-VR tag sentences "a video of t1, t2, ..." (REFERENCE.md "Tags"): N random tags per step in
    # training, the first M at test (MAC-VR Appx. B: 12 and 12; 6 and 8 for DSL). Read by macvr only.
    tags: bool = False
    visual_tags_train: int = field(default=8, metadata=bounds(min=1))
    visual_tags_test: int = field(default=10, metadata=bounds(min=1))
    textual_tags_train: int = field(default=10, metadata=bounds(min=1))
    textual_tags_test: int = field(default=8, metadata=bounds(min=1))
    # What the macvr head reads as auxiliary text when `tags` is on: MAC-VR's tag sentences, or
    # MMI-TVR's skeletons (the video's from video_skeletons, the caption's from text_skeletons), each
    # read whole, as the stage wrote it (the tower truncates past its context).
    aux: Literal["tags", "skeletons"] = "tags"
    # Training frame features are read part by part and kept in an LRU cache of this many part files
    # (a 32-video part of 12 x 512 float16 frames is about 0.4 MB).
    cache_parts: int = field(default=256, metadata=bounds(min=1))

    def __post_init__(self):
        unknown = sorted(set(self.versions) - set(INPUT_STAGES))
        if unknown:
            raise ValueError(f"versions names {', '.join(unknown)}; known stages: {', '.join(INPUT_STAGES)}")
        if not self.out:
            raise ValueError("out is empty: name the pipeline's output folder")
        if self.aux == "skeletons" and not self.tags:  # better refused than ignored
            raise ValueError("aux is skeletons, but tags is false: set data.tags=true to give macvr the skeletons")


@dataclass
class ModelConfig:
    head: Literal["meanpool", "xpool", "macvr", "tmass", "lsdo"] = "meanpool"
    # The contrastive temperature's start: CLIP initialises its logit scale to 1 / 0.07 (CLIP Sec. 2.5).
    temperature: float = field(default=0.07, metadata=bounds(above=0))
    # xpool/tmass attention temperature; macvr's tau_a in its Eq. 1. None: sqrt(d) (X-Pool), 3 for macvr.
    tau_a: float | None = field(default=None, metadata=bounds(above=0))
    dropout: float = field(default=0.3, metadata=bounds(min=0, below=1))  # xpool/tmass (X-Pool: 0.3)
    # macvr (MAC-VR Sec. 4.1 and Appx. D): K concepts, the confidence MLP's width, alpha of Eq. 5, the
    # frame transformer's depth (0: none), and L_C's gamma/delta (Appx. D defers them to DiCoSA, whose
    # values are not in the project's papers: 1 and 1 here).
    concepts: int = field(default=8, metadata=bounds(min=1))
    confidence_hidden: int = field(default=256, metadata=bounds(min=1))
    alignment_weight: float = field(default=1.0, metadata=bounds(min=0))
    frame_layers: int = field(default=4, metadata=bounds(min=0))
    decoupling_weight: float = field(default=1.0, metadata=bounds(min=0))
    concept_alignment_weight: float = field(default=1.0, metadata=bounds(min=0))
    # tmass (T-MASS Sec. 4.1, 4.3): M draws at inference (Eq. 10), alpha of Eq. 9 (best at 1.2, Fig. 6).
    trials: int = field(default=20, metadata=bounds(min=1))
    support_weight: float = field(default=1.2, metadata=bounds(min=0))
    # lsdo (LSDO Sec. IV-B.1): video-level features, K prototypes, alpha (Eq. 15) and gamma (Eq. 14),
    # the single features' threshold theta (Eq. 7), m reference videos for the shared features (Eq. 4,
    # one per category where the manifest names them).
    lsdo_features: Literal["average", "single", "shared"] = "average"
    prototypes: int = field(default=20, metadata=bounds(min=1))
    lsdo_frame_mix: float = field(default=0.8, metadata=bounds(min=0, max=1))
    lsdo_text_mix: float = field(default=0.8, metadata=bounds(min=0, max=1))
    lsdo_threshold: float = 0.9
    shared_videos: int = field(default=20, metadata=bounds(min=1))


@dataclass
class OptimConfig:
    epochs: int = field(default=5, metadata=bounds(min=1))
    batch_size: int = field(default=32, metadata=bounds(min=2))
    lr: float = field(default=1e-5, metadata=bounds(above=0))  # the head (and the logit scale)
    text_lr: float = field(default=0.0, metadata=bounds(min=0))  # the CLIP text encoder; 0 keeps it frozen
    weight_decay: float = field(default=0.2, metadata=bounds(min=0))
    warmup_fraction: float = field(default=0.1, metadata=bounds(min=0, below=1))  # of all steps
    grad_clip: float | None = field(default=None, metadata=bounds(above=0))


@dataclass
class EvalConfig:
    dsl_temperature: float = field(default=0.01, metadata=bounds(above=0))  # REFERENCE.md "Dual softmax"
    # QB-Norm (REFERENCE.md): k, beta, theta; the querybank is this many training captions (t2v) and
    # training videos (v2t), drawn with the run's seed. Bounded so that evaluation cost stays bounded.
    qb_k: int = field(default=1, metadata=bounds(min=1))
    qb_beta: float = field(default=20.0, metadata=bounds(above=0))
    qb_theta: int = field(default=1, metadata=bounds(min=1))
    querybank_size: int = field(default=5000, metadata=bounds(min=1))
    chunk: int = field(default=256, metadata=bounds(min=1))  # texts scored against all videos at once


@dataclass
class RerankOptions:
    """`tvr eval --rerank OUT`: MMI-TVR's Eq. 10 over the skeleton_scores in `out` (a pipeline
    output folder; `version` names one, else LATEST), with its weights (Sec. 5.3)."""

    out: str
    version: str | None = None
    lambda_r: float = field(default=0.6, metadata=bounds(min=0))
    lambda_s: float = field(default=0.3, metadata=bounds(min=0))

    def __post_init__(self):
        try:
            check_bounds(self)
        except ValueError as exc:  # typed on the command line: the user's to fix
            raise ConfigError(str(exc)) from exc
        for name in ("lambda_r", "lambda_s"):
            if not math.isfinite(getattr(self, name)):
                raise ConfigError(f"{name}={getattr(self, name)!r} is not a finite number")
        if not self.out:
            raise ConfigError("the skeleton_scores folder is empty: name the pipeline's output folder")


@dataclass
class TrainConfig:
    data: DataConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    device: str = "auto"  # auto (cuda when there is one), cpu, cuda, cuda:N
    output_dir: str = "runs/train"  # checkpoint.pt, config.yaml, metrics.json
    progress: bool = True

    def __post_init__(self):
        if self.data.tags and self.model.head != "macvr":  # better refused than ignored
            raise ValueError(f"data.tags is true, but the {self.model.head} head reads no tags (macvr does)")

"""The training loop, in labelled sections: setup, optimiser and schedule, train, evaluate, save.

    metrics = run_training(config.load(TrainConfig, "jobs/configs/train/msrvtt_xpool.yaml"))
    again = evaluate_checkpoint("runs/train/checkpoint.pt")     # the same numbers

Video features come precomputed from `frame_features`; text goes through the CLIP text tower of
the same checkpoint (frozen when `optim.text_lr` is 0). After every epoch the test split is scored
with each inference strategy (none, DSL, QB-Norm) in both directions, appended to
`OUTPUT_DIR/metrics.json`, and `checkpoint.pt` (head, and the text encoder when trained) is saved
with the resolved `config.yaml` beside it. Seeded (python, numpy, torch); CPU or one GPU (bf16
autocast on CUDA).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn
from tqdm.auto import tqdm

from pipeline import config as config_lib
from pipeline.train.config import TrainConfig
from pipeline.train.data import Split, load_splits
from pipeline.train.heads import Head, build_head
from pipeline.train.inference import dual_softmax, qb_norm
from pipeline.train.metrics import retrieval_metrics, video_to_text_metrics

STRATEGIES = ("none", "dsl", "qbnorm")

# ---- schedule -------------------------------------------------------------------------------------


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """The learning rate multiplier at `step` (0-based): linear warm-up to 1 over `warmup_steps`,
    then cosine decay to 0 at `total_steps` (SGDR without restarts; "a cosine schedule with a
    warm-up proportion of 0.1", T-MASS Sec. 4.1, following CLIP and X-Pool)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every device's generator


# ---- the text encoder -------------------------------------------------------------------------------


class TextEncoder(nn.Module):
    """The CLIP text tower (with its projection) of the checkpoint frame_features used, and its
    tokenizer; frozen (eval mode, no gradients) unless `trainable`."""

    def __init__(self, checkpoint: dict, device: str, trainable: bool):
        from pipeline.models.clip import ClipText

        super().__init__()
        clip = ClipText.load(checkpoint["model"], checkpoint["revision"], device=device, dtype="float32")
        self.model, self.tokenizer, self.max_length, self.dim = clip.model, clip.tokenizer, clip.max_length, clip.dim
        self.device, self.trainable = device, trainable
        self.model.requires_grad_(trainable)
        self.train(trainable)

    def train(self, mode: bool = True):
        return super().train(mode and self.trainable)  # a frozen tower stays in eval mode

    def forward(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            return self.model(**tokens.to(self.device)).text_embeds

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        return torch.cat([self(texts[i : i + batch_size]).float() for i in range(0, len(texts), batch_size)])


# ---- evaluation -------------------------------------------------------------------------------------


@torch.no_grad()
def similarity_matrix(head: Head, text: torch.Tensor, frames: torch.Tensor, chunk: int) -> torch.Tensor:
    """[T, V] float32 on the CPU, in blocks of `chunk` texts x `chunk` videos (X-Pool pools every
    video for every text: a block holds chunk^2 pooled embeddings)."""
    rows = []
    for i in range(0, len(text), chunk):
        rows.append(torch.cat([head.similarity(text[i : i + chunk], frames[j : j + chunk]).float().cpu()
                               for j in range(0, len(frames), chunk)], dim=1))
    return torch.cat(rows)


@torch.no_grad()
def evaluate(head: Head, encoder: TextEncoder, train: Split, test: Split, config: TrainConfig) -> dict:
    """Test metrics per direction and inference strategy: {"t2v": {"none": {R1, ...}, "dsl": ...}, "v2t": ...}.

    DSL and QB-Norm as REFERENCE.md fixes them. QB-Norm's querybanks come from the training split
    (never the test): `eval.querybank_size` training captions against the test videos (t2v), and as
    many training videos against the test captions (v2t), both drawn with the run's seed."""
    head.eval()
    encoder.eval()
    device, ev = encoder.device, config.eval
    text = encoder.encode(test.captions)
    frames = test.video_frames().to(device)
    sim = similarity_matrix(head, text, frames, ev.chunk)

    rng = np.random.default_rng(config.seed)
    bank_texts = np.sort(rng.choice(len(train), min(ev.querybank_size, len(train)), replace=False))
    bank_videos = np.sort(rng.choice(len(train.video_ids), min(ev.querybank_size, len(train.video_ids)),
                                     replace=False))
    bank_t2v = similarity_matrix(head, encoder.encode(train.texts(bank_texts)), frames, ev.chunk)  # P x V
    bank_v2t = similarity_matrix(head, text, train.video_frames(bank_videos).to(device), ev.chunk).T  # P x T

    qb = dict(k=min(ev.qb_k, sim.shape[1]), beta=ev.qb_beta, theta=ev.qb_theta)
    scored = {  # strategy -> (texts x videos for t2v, texts x videos for v2t)
        "none": (sim, sim),
        "dsl": (dual_softmax(sim, ev.dsl_temperature, dim=0), dual_softmax(sim, ev.dsl_temperature, dim=1)),
        "qbnorm": (qb_norm(sim, bank_t2v, **qb), qb_norm(sim.T, bank_v2t, **{**qb, "k": min(ev.qb_k, len(sim))}).T),
    }
    t2v = test.text_to_video
    return {"t2v": {name: retrieval_metrics(s, t2v) for name, (s, _) in scored.items()},
            "v2t": {name: video_to_text_metrics(s, t2v) for name, (_, s) in scored.items()}}


def format_metrics(metrics: dict) -> str:
    """One line per direction and strategy: R@1/5/10, MdR, MnR."""
    lines = []
    for direction in ("t2v", "v2t"):
        for name, m in metrics[direction].items():
            lines.append(f"{direction} {name:<7} R@1 {m['R1']:5.1f}  R@5 {m['R5']:5.1f}  R@10 {m['R10']:5.1f}  "
                         f"MdR {m['MdR']:6.1f}  MnR {m['MnR']:7.1f}")
    return "\n".join(lines)


# ---- training ---------------------------------------------------------------------------------------


def _param_groups(module: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; biases, norms and the logit scale are not decayed (nanoGPT)."""
    params = [p for p in module.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "lr": lr, "base_lr": lr, "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "lr": lr, "base_lr": lr, "weight_decay": 0.0}]


def run_training(config: TrainConfig) -> dict:
    """Train, evaluating and checkpointing every epoch; returns the last epoch's metrics."""
    from pipeline.models.clip import resolve_device

    # -- setup: seed, device, data, models
    seed_everything(config.seed)
    device = resolve_device(config.device)
    train, test, checkpoint = load_splits(config.data)
    opt = config.optim
    encoder = TextEncoder(checkpoint, device, trainable=opt.text_lr > 0)
    head = build_head(config.model, encoder.dim).to(device)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config_lib.to_dict(config), sort_keys=False))

    # -- optimiser and schedule: AdamW (T-MASS Sec. 4.1), one learning rate for the head, one for CLIP
    groups = _param_groups(head, opt.lr, opt.weight_decay)
    if encoder.trainable:
        groups += _param_groups(encoder, opt.text_lr, opt.weight_decay)
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]])
    steps_per_epoch = math.ceil(len(train) / opt.batch_size)
    total_steps = opt.epochs * steps_per_epoch
    warmup_steps = round(opt.warmup_fraction * total_steps)
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=device.startswith("cuda"))

    step, metrics = 0, {}
    for epoch in range(opt.epochs):
        # -- train one epoch: every training caption once, with its video, in seeded random batches
        head.train()
        encoder.train()
        losses = []
        bar = tqdm(train.batches(opt.batch_size, epoch, config.seed), desc=f"epoch {epoch + 1}/{opt.epochs}",
                   unit="batch", disable=not config.progress)
        for rows in bar:
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * lr_factor(step, total_steps, warmup_steps)
            frames = train.frames(rows).to(device, non_blocking=True)
            with autocast:
                loss = head.loss(encoder(train.texts(rows)), frames)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if opt.grad_clip:
                nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], opt.grad_clip)
            optimizer.step()
            step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")

        # -- evaluate, record, save
        metrics = {"epoch": epoch + 1, "step": step, "loss": float(np.mean(losses)),
                   **evaluate(head, encoder, train, test, config)}
        history = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").exists() else []
        (out / "metrics.json").write_text(json.dumps([*history, metrics], indent=1))
        torch.save({"head": head.state_dict(), "epoch": epoch + 1, "metrics": metrics,
                    "text_encoder": encoder.model.state_dict() if encoder.trainable else None},
                   out / "checkpoint.pt")
    return metrics


def evaluate_checkpoint(path: str | Path) -> dict:
    """The test metrics of a saved checkpoint (a `checkpoint.pt` or its folder), rebuilt from the
    `config.yaml` beside it; equal to the metrics its epoch recorded."""
    from pipeline.models.clip import resolve_device

    path = Path(path)
    file = path / "checkpoint.pt" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no checkpoint at {file}")
    config = config_lib.load(TrainConfig, file.parent / "config.yaml")
    state = torch.load(file, map_location="cpu", weights_only=True)
    seed_everything(config.seed)
    train, test, checkpoint = load_splits(config.data)
    encoder = TextEncoder(checkpoint, resolve_device(config.device), trainable=False)
    if state["text_encoder"] is not None:
        encoder.model.load_state_dict(state["text_encoder"])
    head = build_head(config.model, encoder.dim).to(encoder.device)
    head.load_state_dict(state["head"])
    return {"epoch": state["epoch"], **evaluate(head, encoder, train, test, config)}

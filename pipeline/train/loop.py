"""The training loop, in labelled sections: setup, optimiser and schedule, train, evaluate, save.

    metrics = run_training(config.load(TrainConfig, "jobs/configs/train/msrvtt_xpool.yaml"))
    again = evaluate_checkpoint("runs/train/checkpoint.pt")     # the same numbers
    reranked = evaluate_checkpoint("runs/train", rerank=RerankOptions("runs/msrvtt"))  # + MMI-TVR Eq. 10

Video features come precomputed from `frame_features`; text goes through the CLIP text tower of
the same checkpoint (frozen when `optim.text_lr` is 0). After every epoch the test split is scored
with each inference strategy (none, DSL, QB-Norm) in both directions, appended to
`OUTPUT_DIR/metrics.json`, and `checkpoint.pt` (head, and the text encoder when trained) is saved
with the resolved `config.yaml` beside it, with the optimiser and random state: a run cut off
goes on from its last epoch when started again with the same config (and gives the same numbers),
and an OUTPUT_DIR that holds another run is refused. `evaluate_checkpoint` also re-ranks the plain
similarity by MMI-TVR's skeleton scores (Eq. 10, text-to-video) and writes each test caption's top-K
videos, the candidates the skeleton_scores stage scores. Seeded (python, numpy, torch); CPU or one GPU
(bf16 autocast on CUDA).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from tqdm.auto import tqdm

from pipeline import config as config_lib
from pipeline.config import ConfigError
from pipeline.mmi.rerank import skeleton_rerank, top_k_table
from pipeline.store.storage import parquet_bytes
from pipeline.store.version import DamagedOutputError
from pipeline.train.config import RerankOptions, TrainConfig
from pipeline.train.data import Split, load_splits, skeleton_scores
from pipeline.train.heads import Head, Lsdo, Texts, Videos, build_head
from pipeline.train.inference import dual_softmax, qb_norm
from pipeline.train.metrics import as_float64, retrieval_metrics, video_to_text_metrics

STRATEGIES = ("none", "dsl", "qbnorm")
log = logging.getLogger(__name__)

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

    def forward(self, texts: list[str], words: bool = False) -> Texts:
        """The projected embeddings, and with `words` the projected token features of each caption's
        words (LSDO Eq. 3: BOS, EOS and padding masked out; EOS kept for a caption with no words)."""
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            out = self.model(**tokens)
            if not words:
                return Texts(out.text_embeds)
            mask = tokens["attention_mask"].bool()
            last = mask.sum(dim=1) - 1
            mask[:, 0] = False
            mask[torch.arange(len(mask)), last] = last <= 1  # a caption with no words keeps its EOS
            return Texts(out.text_embeds, self.model.text_projection(out.last_hidden_state), mask)

    @torch.no_grad()
    def encode(self, texts: list[str], words: bool = False, tags: list[str] | None = None,
               batch_size: int = 256) -> Texts:
        """`forward` in batches, without gradients, float32; `tags`: the textual-tag sentences."""
        parts = [self(texts[i : i + batch_size], words) for i in range(0, len(texts), batch_size)]
        out = Texts(torch.cat([p.embeds.float() for p in parts]))
        if words:
            width = max(p.words.shape[1] for p in parts)
            out.words = torch.cat([F.pad(p.words.float(), (0, 0, 0, width - p.words.shape[1])) for p in parts])
            out.word_mask = torch.cat([F.pad(p.word_mask, (0, width - p.word_mask.shape[1])) for p in parts])
        if tags is not None:
            out.tags = self.encode(tags, batch_size=batch_size).embeds
        return out


def training_batch(encoder: TextEncoder, head: Head, split: Split, rows, epoch: int, seed: int) -> tuple[Texts, Videos]:
    """Pair i = (caption rows[i], its video), with auxiliary text a side (N sampled tags, or the
    skeletons) when the head reads it."""
    texts = Texts(split.text_embeds(rows).to(encoder.device)) if reads_stored_text(encoder, head, split) else \
        encoder(split.texts(rows), words=head.reads_words)
    videos = Videos(split.frames(rows).to(encoder.device, non_blocking=True))
    if head.reads_tags:
        sentences = split.aux_texts(rows, epoch, seed)
        texts.tags, videos.tags = encoder(sentences["textual"]).embeds, encoder(sentences["visual"]).embeds
    return texts, videos


def eval_texts(encoder: TextEncoder, head: Head, split: Split, rows=None) -> Texts:
    """The split's captions (all, or these rows), with their auxiliary text (the first M tags, or
    the skeleton) when the head reads it."""
    rows = range(len(split)) if rows is None else rows
    tags = split.aux_texts(rows, epoch=None)["textual"] if head.reads_tags else None
    if not reads_stored_text(encoder, head, split):
        return encoder.encode(split.texts(rows), words=head.reads_words, tags=tags)
    texts = Texts(split.text_embeds(rows).to(encoder.device))
    if tags is not None:
        texts.tags = encoder.encode(tags).embeds
    return texts


def reads_stored_text(encoder: TextEncoder, head: Head, split: Split) -> bool:
    """Whether the captions' embeddings come from text_features rather than the tower."""
    return split.stored_text is not None and not encoder.trainable and not head.reads_words


def eval_videos(encoder: TextEncoder, head: Head, split: Split, videos=None) -> Videos:
    """The split's videos (all, or these indices), with their auxiliary text (the first M visual
    tags, or the skeleton) when the head reads it."""
    tags = split.video_aux_texts(videos) if head.reads_tags else None
    return Videos(split.video_frames(videos).to(encoder.device),
                  None if tags is None else encoder.encode(tags).embeds)


# ---- evaluation -------------------------------------------------------------------------------------


@torch.no_grad()
def similarity_matrix(head: Head, texts: Texts, videos: Videos, chunk: int, desc: str | None = None) -> torch.Tensor:
    """[T, V] float32 on the CPU, filled in blocks of `chunk` texts x `chunk` videos (X-Pool pools
    every video for every text: a block holds chunk^2 pooled embeddings), the matrix allocated once
    (a 180,000-caption querybank against 1,000 videos is 720 MB); a progress bar when `desc`."""
    out = torch.empty(len(texts), len(videos), dtype=torch.float32)
    for i in tqdm(range(0, len(texts), chunk), desc=desc, unit="block", disable=desc is None, leave=False):
        for j in range(0, len(videos), chunk):
            out[i : i + chunk, j : j + chunk] = head.similarity(texts[i : i + chunk], videos[j : j + chunk]).float()
    return out


@torch.no_grad()
def evaluate(head: Head, encoder: TextEncoder, train: Split, test: Split, config: TrainConfig) -> dict:
    """Test metrics per direction and inference strategy: {"t2v": {"none": {R1, ...}, "dsl": ...}, "v2t": ...}.

    DSL and QB-Norm as REFERENCE.md fixes them. QB-Norm's querybanks come from the training split
    (never the test): `eval.querybank_size` training captions against the test videos (t2v), and as
    many training videos against the test captions (v2t), both drawn with the run's seed."""
    return evaluate_with_similarity(head, encoder, train, test, config)[0]


@torch.no_grad()
def evaluate_with_similarity(head: Head, encoder: TextEncoder, train: Split, test: Split, config: TrainConfig
                             ) -> tuple[dict, torch.Tensor]:
    """`evaluate`'s metrics, and the plain test similarity [texts, videos] they were computed from."""
    with torch.random.fork_rng():  # T-MASS draws its M samples from the seed, and training's stream goes on
        torch.manual_seed(config.seed)
        return _evaluate(head, encoder, train, test, config)


def _evaluate(head: Head, encoder: TextEncoder, train: Split, test: Split, config: TrainConfig
              ) -> tuple[dict, torch.Tensor]:
    head.eval()
    encoder.eval()
    ev = config.eval
    texts, videos = eval_texts(encoder, head, test), eval_videos(encoder, head, test)
    desc = (lambda what: what) if config.progress else (lambda what: None)
    sim = similarity_matrix(head, texts, videos, ev.chunk, desc("test"))

    rng = np.random.default_rng(config.seed)
    bank_texts = np.sort(rng.choice(len(train), min(ev.querybank_size, len(train)), replace=False))
    bank_videos = np.sort(rng.choice(len(train.video_ids), min(ev.querybank_size, len(train.video_ids)),
                                     replace=False))
    bank_t2v = similarity_matrix(head, eval_texts(encoder, head, train, bank_texts), videos, ev.chunk,
                                 desc("querybank t2v"))  # P x V
    bank_v2t = similarity_matrix(head, texts, eval_videos(encoder, head, train, bank_videos), ev.chunk,
                                 desc("querybank v2t")).T  # P x T

    qb = dict(k=min(ev.qb_k, sim.shape[1]), beta=ev.qb_beta, theta=ev.qb_theta)
    scored = {  # strategy -> (texts x videos for t2v, texts x videos for v2t)
        "none": (sim, sim),
        "dsl": (dual_softmax(sim, ev.dsl_temperature, dim=0), dual_softmax(sim, ev.dsl_temperature, dim=1)),
        "qbnorm": (qb_norm(sim, bank_t2v, **qb), qb_norm(sim.T, bank_v2t, **{**qb, "k": min(ev.qb_k, len(sim))}).T),
    }
    t2v = test.text_to_video
    return ({"t2v": {name: retrieval_metrics(s, t2v) for name, (s, _) in scored.items()},
             "v2t": {name: video_to_text_metrics(s, t2v) for name, (_, s) in scored.items()}}, sim)


RERANKED = "none+rerank"  # the metrics' name for the plain similarity re-ranked by Eq. 10


def format_metrics(metrics: dict) -> str:
    """One line per direction and strategy: R@1/5/10, MdR, MnR; then, when the metrics hold a
    re-ranking, what it read (`rerank_note`)."""
    width = max([7, *(len(name) for direction in ("t2v", "v2t") for name in metrics[direction])])
    lines = []
    for direction in ("t2v", "v2t"):
        for name, m in metrics[direction].items():
            lines.append(f"{direction} {name:<{width}} R@1 {m['R1']:5.1f}  R@5 {m['R5']:5.1f}  R@10 {m['R10']:5.1f}  "
                         f"MdR {m['MdR']:6.1f}  MnR {m['MnR']:7.1f}")
    if "rerank" in metrics:
        lines.append(rerank_note(metrics["rerank"]))
    return "\n".join(lines)


def rerank_note(info: dict) -> str:
    """One line: which skeleton_scores the re-ranked row read, with what weights, and its pairs."""
    return (f"{RERANKED}: t2v only, the plain similarity re-ranked by MMI-TVR Eq. 10 (lambda_r {info['lambda_r']}, "
            f"lambda_s {info['lambda_s']}) with skeleton_scores {info['version']} (candidates: "
            f"{', '.join(info['candidates']) or 'none'}): {info['pairs']} pairs of {info['captions']} test captions, "
            f"{info['scored']} scored, {info['unscored']} without a score (left in place), "
            f"{info['outside']} outside the test split (ignored)")


# ---- training ---------------------------------------------------------------------------------------


def _param_groups(module: nn.Module, lr: float, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; biases, norms and the logit scale are not decayed (nanoGPT)."""
    params = [p for p in module.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim >= 2], "lr": lr, "base_lr": lr, "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "lr": lr, "base_lr": lr, "weight_decay": 0.0}]


def run_training(config: TrainConfig) -> dict:
    """Train, evaluating and checkpointing every epoch (resuming this run's checkpoint when there is
    one); returns the last epoch's metrics."""
    from pipeline.models.clip import resolve_device

    # -- setup: the output folder (this run's, to resume, or a new one), seed, device, data, models
    out = Path(config.output_dir)
    saved = _saved_run(out, config)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    train, test, checkpoint = load_splits(config.data)
    opt = config.optim
    encoder = TextEncoder(checkpoint, device, trainable=opt.text_lr > 0)
    head = build_head(config.model, encoder.dim, config.data.num_frames, config.data.tags).to(device)
    if isinstance(head, Lsdo) and head.features == "shared":  # Eq. 4: m training videos, one per category
        references = train.reference_videos(config.model.shared_videos, config.seed)
        head.set_reference(train.video_frames(references).to(device))
    out.mkdir(parents=True, exist_ok=True)
    _write_atomically(out / "config.yaml", lambda f: f.write(yaml.safe_dump(config_lib.to_dict(config),
                                                                            sort_keys=False).encode()))

    # -- optimiser and schedule: AdamW (T-MASS Sec. 4.1), one learning rate for the head, one for CLIP
    groups = _param_groups(head, opt.lr, opt.weight_decay)
    if encoder.trainable:
        groups += _param_groups(encoder, opt.text_lr, opt.weight_decay)
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]])
    steps_per_epoch = math.ceil(len(train) / opt.batch_size)
    total_steps = opt.epochs * steps_per_epoch
    warmup_steps = round(opt.warmup_fraction * total_steps)
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=device.startswith("cuda"))

    # -- resume: OUTPUT_DIR holds this very run, cut off after an epoch: go on from its checkpoint
    step, metrics, first_epoch = 0, {}, 0
    if saved is not None:
        if saved["versions"] != checkpoint["versions"]:
            changed = sorted(k for k in {**saved["versions"], **checkpoint["versions"]}
                             if saved["versions"].get(k) != checkpoint["versions"].get(k))
            raise ConfigError(f"{out} holds this config's run over other data ({', '.join(changed)} changed since): "
                              f"set another output_dir, pin data.versions, or remove that one")
        with _restoring(out / "checkpoint.pt"):
            head.load_state_dict(saved["head"])
            if saved["text_encoder"] is not None:
                encoder.model.load_state_dict(saved["text_encoder"])
            optimizer.load_state_dict(saved["optimizer"])
            torch.set_rng_state(saved["rng"])
            if saved["cuda_rng"] is not None:
                torch.cuda.set_rng_state_all(saved["cuda_rng"])
        step, metrics, first_epoch = saved["step"], saved["metrics"], saved["epoch"]
        log.warning("%s: resuming after epoch %d of %d", out, first_epoch, opt.epochs)
    for epoch in range(first_epoch, opt.epochs):
        # -- train one epoch: every training caption once, with its video, in seeded random batches
        head.train()
        encoder.train()
        losses = []
        bar = tqdm(train.batches(opt.batch_size, epoch, config.seed), desc=f"epoch {epoch + 1}/{opt.epochs}",
                   unit="batch", disable=not config.progress)
        for rows in bar:
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * lr_factor(step, total_steps, warmup_steps)
            with autocast:
                loss = head.loss(*training_batch(encoder, head, train, rows, epoch, config.seed))
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
        state = {"head": head.state_dict(), "epoch": epoch + 1, "step": step, "metrics": metrics,
                 "versions": checkpoint["versions"],
                 "text_encoder": encoder.model.state_dict() if encoder.trainable else None,
                 "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if device.startswith("cuda") else None}
        _write_atomically(out / "checkpoint.pt", lambda f: torch.save(state, f))  # the checkpoint is the commit
        # A cut-off epoch's line is replaced.
        history = [m for m in _read_history(out / "metrics.json") if m["epoch"] <= epoch] + [metrics]
        _write_atomically(out / "metrics.json", lambda f: f.write(json.dumps(history, indent=1).encode()))
    return metrics


def _write_atomically(path: Path, write) -> None:
    """`write(file)` to a temporary file beside `path`, then renamed over it: a run killed while
    saving leaves the previous file whole."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "wb") as file:
        write(file)
    os.replace(temporary, path)


def _differences(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for key in sorted(set(a) | set(b))
                for d in _differences(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def _with_defaults(saved, defaults):
    """`saved` with the keys it lacks taken from `defaults`, at every level where both are mappings."""
    if not isinstance(saved, dict) or not isinstance(defaults, dict):
        return saved
    return {**{key: value for key, value in defaults.items() if key not in saved},
            **{key: _with_defaults(value, defaults.get(key)) for key, value in saved.items()}}


def _saved_run(out: Path, config: TrainConfig) -> dict | None:
    """The checkpoint to resume from when OUTPUT_DIR holds this run (the same resolved config, the
    progress bar aside); None when it holds no checkpoint; an error when it holds another run, and
    a `DamagedOutputError` naming the file when its config.yaml or checkpoint.pt cannot be read."""
    file = out / "checkpoint.pt"
    if not file.is_file():
        return None
    saved = _read_saved_config(out / "config.yaml") if (out / "config.yaml").is_file() else {}
    if saved:  # a key added to the config since the run was saved (data.aux, say) reads as its default, as it trained
        defaults = config_lib.to_dict(config_lib.build(TrainConfig, {"data": {"out": config.data.out}}))
        saved = _with_defaults(saved, defaults)
    differ = [d for d in _differences(saved, config_lib.to_dict(config)) if d != "progress"]
    if differ:
        raise ConfigError(f"{out} holds another run (its config differs in {', '.join(differ[:4])}"
                          f"{', ...' if len(differ) > 4 else ''}): set another output_dir, or remove that one")
    return read_checkpoint(file, resume=True)


# What a checkpoint holds (`run_training` saves it): for `tvr eval`, and also to resume a run.
_EVAL_KEYS = {"head": dict, "epoch": int, "versions": dict, "text_encoder": (dict, type(None))}
_RESUME_KEYS = {"step": int, "metrics": dict, "optimizer": dict, "rng": torch.Tensor, "cuda_rng": (list, type(None))}
_REMEDY = "restore it, or remove it and train again"


def read_checkpoint(file: Path, resume: bool = False) -> dict:
    """A saved checkpoint, checked to hold what evaluating it (and with `resume`, going on from
    it) reads, with the types it reads them as; a `DamagedOutputError` naming the file if not."""
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a zip, a pickle weights_only refuses: all a damaged file
        raise DamagedOutputError(f"{file} is not a readable checkpoint ({_first_line(exc)}): {_REMEDY}") from exc
    if not isinstance(state, dict):
        raise DamagedOutputError(f"{file} is damaged: it holds a {type(state).__name__}, not a checkpoint: {_REMEDY}")
    for key, kind in {**_EVAL_KEYS, **(_RESUME_KEYS if resume else {})}.items():
        if key not in state:
            raise DamagedOutputError(f"{file} is damaged: it has no {key!r}: {_REMEDY}")
        value = state[key]
        if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 0)):
            raise DamagedOutputError(f"{file} is damaged: its {key!r} is {value!r:.60}: {_REMEDY}")
    if resume and state["epoch"] > 0:
        try:  # a finished run's resume returns these metrics as they are: they must print
            float(state["metrics"]["loss"]), format_metrics(state["metrics"])
        except Exception as exc:
            raise DamagedOutputError(f"{file} is damaged: its metrics are not an epoch's ({_first_line(exc)}): "
                                     f"{_REMEDY}") from exc
    return state


@contextlib.contextmanager
def _restoring(file: Path):
    """Loading a checkpoint's state into the model, optimiser and random generators: a state that
    does not fit them (other shapes, other parameter groups, a bad generator state) is a damaged
    checkpoint, reported in one line naming it."""
    try:
        yield
    except (RuntimeError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise DamagedOutputError(f"{file} does not fit this config's model ({_first_line(exc)}): {_REMEDY}") from exc


def _read_saved_config(path: Path) -> dict:
    """A training output's config.yaml as a mapping; a `DamagedOutputError` when it is not one."""
    try:
        saved = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DamagedOutputError(f"{path} is not valid YAML ({_first_line(exc)}): {_REMEDY}") from exc
    if not isinstance(saved, dict):
        raise DamagedOutputError(f"{path} is damaged: it holds a {type(saved).__name__}, not a config: {_REMEDY}")
    return saved


def _read_history(path: Path) -> list[dict]:
    """metrics.json's epochs (none if there is no file); a `DamagedOutputError` if it is not a list of them."""
    if not path.exists():
        return []
    try:
        history = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DamagedOutputError(f"{path} is not valid JSON ({_first_line(exc)}): {_REMEDY}") from exc
    if not isinstance(history, list) or not all(isinstance(m, dict) and isinstance(m.get("epoch"), int)
                                                for m in history):
        raise DamagedOutputError(f"{path} is damaged: not a list of epochs' metrics: {_REMEDY}")
    return history


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def evaluate_checkpoint(path: str | Path, rerank: RerankOptions | None = None, topk: int | None = None,
                        topk_out: str | Path | None = None) -> dict:
    """The test metrics of a saved checkpoint (a `checkpoint.pt` or its folder), rebuilt from the
    `config.yaml` beside it; equal to the metrics its epoch recorded.

    With `rerank`, also the plain similarity re-ranked by the skeleton scores (MMI-TVR Eq. 10,
    text-to-video only), as t2v's "none+rerank", and under "rerank" what it read. With `topk`, each
    test caption's `topk` most similar test videos by the plain similarity are written to `topk_out`
    (default: `topk.parquet` beside the checkpoint) and "topk" says where. K and the skeleton_scores
    output are checked before the model is evaluated: a missing one is an `InputNotReadyError`
    naming the command that makes it."""
    from pipeline.models.clip import resolve_device

    path = Path(path)
    file = path / "checkpoint.pt" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no checkpoint at {file}")
    if topk is not None and topk < 1:
        raise ConfigError(f"top-K needs K >= 1, got {topk}")
    scores = skeleton_scores(rerank.out, rerank.version) if rerank is not None else None  # before the work
    saved_config = file.parent / "config.yaml"
    if not saved_config.is_file():
        raise DamagedOutputError(f"{saved_config} is missing: {file.name} is evaluated with the config saved beside it")
    try:
        config = config_lib.build(TrainConfig, _read_saved_config(saved_config))
    except ConfigError as exc:  # saved by the run: not the user's typing, but a damaged or foreign file
        raise DamagedOutputError(f"{saved_config} is not a training config ({exc}): {_REMEDY}") from exc
    state = read_checkpoint(file)
    seed_everything(config.seed)
    train, test, checkpoint = load_splits(config.data)
    if state["versions"] != checkpoint["versions"]:
        log.warning("%s was trained on %s; the data now reads %s: the metrics will differ from the ones recorded",
                    file, state["versions"], checkpoint["versions"])
    encoder = TextEncoder(checkpoint, resolve_device(config.device), trainable=False)
    head = build_head(config.model, encoder.dim, config.data.num_frames, config.data.tags).to(encoder.device)
    with _restoring(file):
        if state["text_encoder"] is not None:
            encoder.model.load_state_dict(state["text_encoder"])
        head.load_state_dict(state["head"])
    metrics, sim = evaluate_with_similarity(head, encoder, train, test, config)
    result = {"epoch": state["epoch"], **metrics}
    if rerank is not None:
        pairs = scores.table(columns=["caption_id", "video_id", "score", "candidates"])
        reranked, stats = skeleton_rerank(as_float64(sim), pairs, test.caption_ids, test.video_ids, rerank.lambda_r,
                                          rerank.lambda_s)
        result["t2v"][RERANKED] = retrieval_metrics(reranked, test.text_to_video)
        result["rerank"] = {"version": scores.version, "lambda_r": rerank.lambda_r, "lambda_s": rerank.lambda_s,
                            "candidates": sorted(set(pairs.column("candidates").to_pylist())), **asdict(stats)}
    if topk is not None:
        # No path in the provenance: the file's bytes (which name the candidates) stay the same if the run moves.
        provenance = {"head": config.model.head, "epoch": state["epoch"], "versions": checkpoint["versions"]}
        result["topk"] = write_topk(sim, test, topk, Path(topk_out) if topk_out else file.parent / "topk.parquet",
                                    provenance)
    return result


def write_topk(sim: torch.Tensor, test: Split, k: int, path: Path, provenance: dict) -> dict:
    """Each test caption's k most similar test videos (`pipeline.store.schema.TOPK`) written
    atomically to `path`, with `provenance` (and k) as the file's "tvr.topk" metadata; returns
    {"path", "k", "rows"}. A k larger than the test videos gives every video (and k is their number)."""
    k = min(k, len(test.video_ids))
    table = top_k_table(as_float64(sim), test.caption_ids, test.video_ids, k)
    data = parquet_bytes(table, {"tvr.topk": json.dumps({**provenance, "k": k}, sort_keys=True)})
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(path, lambda f: f.write(data))
    return {"path": str(path), "k": k, "rows": table.num_rows}

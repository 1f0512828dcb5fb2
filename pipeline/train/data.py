"""The training data: captions with their videos' frame features, read from a pipeline OUT folder.

    train, test, model = load_splits(cfg.data)   # model: the CLIP checkpoint frame_features used
    for rows in train.batches(32, epoch=0, seed=0):
        texts = train.texts(rows)                   # caption texts (or train.text_embeds(rows), stored)
        frames = train.frames(rows)                 # float32 [B, num_frames, dim]
        aux = train.aux_texts(rows, epoch=0, seed=0)  # {"visual": [...], "textual": [...]} with data.tags

Promises: a split is one row per caption whose video has frame features (MSR-VTT style: several
captions per video in training, `text_to_video` mapping each test caption to its column among the
test videos, for the metrics). With `data.tags`, the macvr head's auxiliary text is MAC-VR's tag
sentences, or with `data.aux: skeletons` MMI-TVR's skeletons; an item with none gets an empty one.
Versions are the ones `data.versions` names, else each stage's LATEST; a missing stage output is an
`InputNotReadyError` that says which command makes it.
Frame features are read per part file through an LRU cache of `data.cache_parts` parts, never the
whole dataset at once; the test split's videos are read once and held (small, scored every epoch).
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.store.storage import Store
from pipeline.store.version import InputNotReadyError, Version, complete_version, latest
from pipeline.tags.parse import first_tags, sample_tags, tag_sentence
from pipeline.tags.stats import merged_tags
from pipeline.train.config import DataConfig

log = logging.getLogger(__name__)

_HOW = {
    "frame_features": "run `tvr run CONFIG --stages frame_features`",
    "captions": "run `tvr manifest FORMAT ...` or `tvr run CONFIG`",
    "videos": "run `tvr manifest FORMAT ...` or `tvr run CONFIG`",
    "text_features": "run `tvr run CONFIG --stages text_features`, or set data.text_features=false",
    "visual_tags": "run `tvr run CONFIG --stages visual_tags`, or set data.tags=false",
    "textual_tags": "run `tvr run CONFIG --stages textual_tags`, or set data.tags=false",
    "text_skeletons": "run `tvr run CONFIG --stages text_skeletons`, or set data.aux=tags",
    "video_skeletons": "run `tvr run CONFIG --stages video_skeletons`, or set data.aux=tags",
    "skeleton_scores": "run `tvr run CONFIG --stages skeleton_scores` (its candidates: `tvr eval CHECKPOINT "
                       "--write-topk K`, or CLIP's)",
}


def _output(store: Store, data: DataConfig, stage: str) -> Version:
    """The version of `stage` the config names, else LATEST; a clear error when there is none."""
    return _complete(store, data.out, stage, data.versions.get(stage))


def _complete(store: Store, out: str, stage: str, version: str | None) -> Version:
    found = complete_version(store, stage, version)
    if found is None:
        named = f"complete {stage} version {version}" if version else stage
        raise InputNotReadyError(f"no {named} in {out}: {_HOW[stage]}")
    return found


def skeleton_scores(out: str, version: str | None = None) -> Version:
    """The skeleton_scores version named (else LATEST) in the pipeline output folder `out`; an
    `InputNotReadyError` naming the command that makes it when there is none."""
    return _complete(Store.open(out), out, "skeleton_scores", version)


def frames_of(features: np.ndarray, num_frames: int) -> np.ndarray:
    """`num_frames` rows picked uniformly (first to last) from a [n, dim] matrix; repeats when n is
    smaller, as keyframes repeats frames of a short video."""
    picks = np.linspace(0, len(features) - 1, num_frames).round().astype(int)
    return features[picks]


class FrameStore:
    """Frame features by video id, read from the committed part files one part at a time, with an
    LRU cache of `cache_parts` parts (float16, as stored)."""

    def __init__(self, features: Version, num_frames: int, cache_parts: int):
        locations, self.paths = features.locations("video_id")
        loc = locations.to_pydict()
        self.where = {v: (p, r) for v, p, r in zip(loc["video_id"], loc["part"], loc["row"])}
        self.features, self.num_frames, self.cache_parts = features, num_frames, cache_parts
        self.cache: OrderedDict[int, list[np.ndarray]] = OrderedDict()

    def _part(self, part: int) -> list[np.ndarray]:
        if part in self.cache:
            self.cache.move_to_end(part)
            return self.cache[part]
        column = self.features.read_part(self.paths[part], columns=["features"]).column("features").combine_chunks()
        # list<fixed_size_list<float16, dim>>: flatten twice to one [total_frames, dim] block.
        block = column.flatten().flatten().to_numpy(zero_copy_only=False).reshape(-1, column.type.value_type.list_size)
        ends = np.cumsum(column.value_lengths().to_numpy())
        videos = [frames_of(m, self.num_frames) for m in np.split(block, ends[:-1])]
        self.cache[part] = videos
        if len(self.cache) > self.cache_parts:
            self.cache.popitem(last=False)
        return videos

    def get(self, video_ids: list[str]) -> torch.Tensor:
        """float32 [len(video_ids), num_frames, dim]."""
        out = []
        for video_id in video_ids:
            part, row = self.where[video_id]
            out.append(self._part(part)[row])
        return torch.from_numpy(np.stack(out).astype(np.float32))


@dataclass
class Split:
    """One row per caption: its text, its video (an index into `video_ids`), optional tags."""

    name: str
    caption_ids: list[str]
    captions: list[str]
    video_ids: list[str]  # the split's videos with features and at least one caption, sorted
    text_to_video: np.ndarray  # int64, one per caption
    frame_store: FrameStore
    visual_tags: list[list[str]] | None  # per video
    textual_tags: list[list[str]] | None  # per caption
    visual_n: tuple[int, int] = (8, 10)  # (N tags sampled per training step, the first M at test)
    textual_n: tuple[int, int] = (10, 8)
    held: torch.Tensor | None = None  # every video's frames, float16, once `hold()` read them
    stored_text: np.ndarray | None = None  # float16 [captions, d] from text_features, when read
    categories: list[str | None] | None = None  # per video, the manifest's `extra.category` (MSR-VTT)
    visual_skeletons: list[str] | None = None  # per video, with data.aux=skeletons ("" for a video without one)
    textual_skeletons: list[str] | None = None  # per caption, likewise

    def reference_videos(self, m: int, seed: int) -> np.ndarray:
        """m video indices for LSDO's shared features (Eq. 4): one video from each category, in
        category order, when the manifest names categories (MSR-VTT's 20: "we extract one video from
        each category"); the rest, or all when there are none, drawn at random. Seeded."""
        rng = np.random.default_rng(seed)
        by_category: dict[str, list[int]] = {}
        for index, category in enumerate(self.categories or []):
            if category is not None:
                by_category.setdefault(category, []).append(index)
        picks = [int(rng.choice(by_category[c])) for c in sorted(by_category)[:m]]
        rest = np.setdiff1d(np.arange(len(self.video_ids)), picks)
        if m > len(picks):
            picks += rng.choice(rest, m - len(picks), replace=len(rest) < m - len(picks)).tolist()
        return np.array(picks, np.int64)

    def text_embeds(self, rows) -> torch.Tensor:
        """float32 [len(rows), d]: the stored caption embeddings (`stored_text` must be set)."""
        return torch.from_numpy(self.stored_text[np.asarray(rows, np.int64)].astype(np.float32))

    def __len__(self) -> int:
        return len(self.captions)

    def batches(self, batch_size: int, epoch: int, seed: int, shuffle: bool = True) -> list[np.ndarray]:
        """Caption rows in batches: a seeded permutation per epoch (training) or in order."""
        order = np.random.default_rng([seed, epoch]).permutation(len(self)) if shuffle else np.arange(len(self))
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]

    def texts(self, rows) -> list[str]:
        return [self.captions[i] for i in rows]

    def frames(self, rows) -> torch.Tensor:
        """float32 [len(rows), num_frames, dim]: each caption's video's frames."""
        return self.frame_store.get([self.video_ids[self.text_to_video[i]] for i in rows])

    def hold(self) -> None:
        """Read every video's frames once and keep them (the test split: small, scored every epoch)."""
        self.held = self.video_frames().half()

    def video_frames(self, videos=None) -> torch.Tensor:
        """float32 [V, num_frames, dim] of the split's videos (all of them, or these indices)."""
        if videos is None and self.held is not None:
            return self.held.float()  # float16 as stored, so the round trip is exact
        indices = range(len(self.video_ids)) if videos is None else videos
        return self.frame_store.get([self.video_ids[v] for v in indices])

    def tag_sentences(self, rows, epoch: int | None, seed: int = 0) -> dict[str, list[str]]:
        """MAC-VR's "a video of ..." sentences per caption row, for it and for its video: in training
        (an epoch given) N tags sampled with a seed per (seed, epoch, row), at test the first M.
        Empty when tags are off."""
        out = {}
        for name, tags, (n, m) in (("visual", self.visual_tags, self.visual_n),
                                   ("textual", self.textual_tags, self.textual_n)):
            if tags is None:
                continue
            if name == "visual":
                per_row = [tags[self.text_to_video[i]] for i in rows]
            else:
                per_row = [tags[i] for i in rows]
            out[name] = [tag_sentence(first_tags(t, m) if epoch is None else
                                      sample_tags(t, n, (seed * 1_000_003 + epoch) * 1_000_003 + int(i)))
                         for t, i in zip(per_row, rows)]
        return out

    def aux_texts(self, rows, epoch: int | None, seed: int = 0) -> dict[str, list[str]]:
        """The auxiliary text the macvr head reads per caption row, for it ("textual") and for its
        video ("visual"): the skeletons when the split holds them, else `tag_sentences`."""
        if self.visual_skeletons is None or self.textual_skeletons is None:
            return self.tag_sentences(rows, epoch, seed)
        return {"visual": [self.visual_skeletons[self.text_to_video[i]] for i in rows],
                "textual": [self.textual_skeletons[i] for i in rows]}

    def video_aux_texts(self, videos=None) -> list[str] | None:
        """Each of the split's videos' auxiliary text (all, or these indices): its skeleton when
        the split holds them, else `video_tag_sentences`; None when there is none."""
        if self.visual_skeletons is None:
            return self.video_tag_sentences(videos)
        indices = range(len(self.video_ids)) if videos is None else videos
        return [self.visual_skeletons[v] for v in indices]

    def video_tag_sentences(self, videos=None) -> list[str] | None:
        """The first M visual tags of each of the split's videos (all, or these indices), as
        sentences; None when tags are off."""
        if self.visual_tags is None:
            return None
        indices = range(len(self.video_ids)) if videos is None else videos
        return [tag_sentence(first_tags(self.visual_tags[v], self.visual_n[1])) for v in indices]


def _split(name: str, captions: dict, features: FrameStore, aux: dict[str, dict | None], data: DataConfig,
           categories: dict[str, str]) -> Split:
    """The split's rows; `aux`: "visual"/"textual" tags by item id, or with "skeletons" the
    skeletons by video and caption id (None: not read). Items without any get an empty one."""
    rows = [i for i, s in enumerate(captions["split"]) if s == name]
    kept = [i for i in rows if captions["video_id"][i] in features.where]
    if len(kept) < len(rows):
        log.warning("%s split: %d of %d captions have no frame features and are left out", name,
                    len(rows) - len(kept), len(rows))
    if not kept:
        raise InputNotReadyError(f"no {name} captions with frame features in {data.out} "
                                 f"(splits there: {', '.join(sorted(set(captions['split'])))})")
    video_ids = sorted({captions["video_id"][i] for i in kept})
    index = {v: k for k, v in enumerate(video_ids)}
    caption_ids = [captions["caption_id"][i] for i in kept]
    visual, textual, skeletons = aux["visual"], aux["textual"], aux["skeletons"]
    if skeletons is not None:  # skeletons are often made for the test split only (`splits`): say so
        for kind, ids in (("video", video_ids), ("caption", caption_ids)):
            missing = sum(1 for i in ids if i not in skeletons[kind])
            if missing:
                log.warning("%s split: %d of %d %ss have no skeleton and read an empty text (the skeleton "
                            "stage's `splits`?)", name, missing, len(ids), kind)
    return Split(
        name=name, caption_ids=caption_ids, captions=[captions["text"][i] for i in kept], video_ids=video_ids,
        text_to_video=np.array([index[captions["video_id"][i]] for i in kept], np.int64), frame_store=features,
        visual_tags=None if visual is None else [visual.get(v, []) for v in video_ids],
        textual_tags=None if textual is None else [textual.get(c, []) for c in caption_ids],
        visual_n=(data.visual_tags_train, data.visual_tags_test),
        textual_n=(data.textual_tags_train, data.textual_tags_test),
        categories=[categories.get(v) for v in video_ids] if categories else None,
        visual_skeletons=None if skeletons is None else [skeletons["video"].get(v, "") for v in video_ids],
        textual_skeletons=None if skeletons is None else [skeletons["caption"].get(c, "") for c in caption_ids],
    )


def load_splits(data: DataConfig) -> tuple[Split, Split, dict]:
    """(train, test, checkpoint): the splits, and the CLIP checkpoint frame_features used
    ({"model", "revision"}), whose text tower the trainer must use so that both sides match, with
    "versions": the version of each stage output read."""
    store = Store.open(data.out)
    versions: dict[str, str] = {}

    def output(stage: str) -> Version:
        found = _output(store, data, stage)
        versions[stage] = found.version
        return found

    features = output("frame_features")
    identity = (features.manifest() or {}).get("identity", {})
    model = identity.get("config", {}).get("model")
    if not model:
        raise InputNotReadyError(f"{data.out}/{features.manifest_path} names no model")
    checkpoint = {"model": model, "revision": identity["config"].get("revision"), "versions": versions}
    captions = output("captions").table(columns=["caption_id", "video_id", "text", "split"])
    captions = captions.to_pydict()
    aux: dict[str, dict | None] = {"visual": None, "textual": None, "skeletons": None}
    if data.tags and data.aux == "skeletons":
        aux["skeletons"] = {"video": _skeleton_map(output("video_skeletons"), "video_id"),
                            "caption": _skeleton_map(output("text_skeletons"), "caption_id")}
    elif data.tags:
        aux["visual"] = _tag_map(merged_tags(output("visual_tags")))
        aux["textual"] = _tag_map(merged_tags(output("textual_tags")))
    frames = FrameStore(features, data.num_frames, data.cache_parts)
    videos = output("videos").table(columns=["video_id", "extra"]).to_pydict()
    categories = {v: json.loads(e).get("category") for v, e in zip(videos["video_id"], videos["extra"]) if e}
    categories = {v: str(c) for v, c in categories.items() if c is not None}
    train = _split(data.train_split, captions, frames, aux, data, categories)
    test = _split(data.test_split, captions, frames, aux, data, categories)
    test.hold()
    if data.text_features:
        used = _attach_text_features(store, data, checkpoint, (train, test))
        if used:
            versions["text_features"] = used
    return train, test, checkpoint


def _attach_text_features(store: Store, data: DataConfig, checkpoint: dict, splits: tuple[Split, ...]
                          ) -> str | None:
    """Each split's stored caption embeddings, when text_features exists for the same checkpoint
    and covers every caption; otherwise the tower encodes them (and the log says why). Returns the
    text_features version used, if any split uses it."""
    if "text_features" in data.versions:
        output = _output(store, data, "text_features")  # pinned: missing is an error
    else:
        output = latest(store, "text_features")
        if output is None:
            return None
    config = (output.manifest() or {}).get("identity", {}).get("config", {})
    if (config.get("model"), config.get("revision")) != (checkpoint["model"], checkpoint["revision"]):
        log.warning("text_features %s is from %s, not frame_features' %s: captions are encoded by the tower",
                    output.version, config.get("model"), checkpoint["model"])
        return None
    table = output.table(columns=["caption_id", "features"])
    index = {c: i for i, c in enumerate(table.column("caption_id").to_pylist())}
    column = table.column("features").combine_chunks()
    features = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)
    for split in splits:
        missing = [c for c in split.caption_ids if c not in index]
        if missing:
            log.warning("text_features %s lacks %d %s captions (e.g. %s): they are encoded by the tower",
                        output.version, len(missing), split.name, missing[0])
            continue
        split.stored_text = features[[index[c] for c in split.caption_ids]]
    return output.version if any(split.stored_text is not None for split in splits) else None


def _tag_map(table) -> dict[str, list[str]]:
    columns = table.select(["item_id", "tags"]).to_pydict()
    return dict(zip(columns["item_id"], columns["tags"]))


def _skeleton_map(skeletons: Version, key: str) -> dict[str, str]:
    """Item id -> its skeleton (the answers in cluster order), from text_ or video_skeletons."""
    columns = skeletons.table(columns=[key, "skeleton"]).to_pydict()
    return dict(zip(columns[key], columns["skeleton"]))

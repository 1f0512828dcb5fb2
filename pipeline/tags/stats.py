"""Tags per item across temperatures, and MAC-VR's Table 1 for any run (`tvr stats OUT`).

`merged_tags` is the view the trainer and the statistics read: per item (a video, a caption), its
tags over every temperature, ranked by how many temperatures produced each (`votes`), ties in
first-appearance order (temperatures ascending, tags in the order the model gave them).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pyarrow as pa

from pipeline.store.storage import Store
from pipeline.store.version import Version, latest_pointer
from pipeline.tags.parse import merge_votes

# Tag stage -> (what an item is, the manifest table that gives its split, that table's key).
TAG_STAGES = {
    "visual_tags": ("video", "videos", "video_id"),
    "textual_tags": ("caption", "captions", "caption_id"),
}


def merged_tags(tags: Version) -> pa.Table:
    """item_id, video_id, tags (ranked by votes), votes (how many temperatures gave each tag), from
    a version of a tag stage."""
    rows = tags.table(columns=["item_id", "video_id", "temperature", "tags"]).to_pylist()
    rows.sort(key=lambda r: (r["item_id"], r["temperature"]))
    merged: dict[str, tuple[str, list[list[str]]]] = {}
    for row in rows:
        merged.setdefault(row["item_id"], (row["video_id"], []))[1].append(row["tags"])
    item_ids = sorted(merged)
    ranked = [merge_votes(merged[i][1]) for i in item_ids]
    return pa.table({
        "item_id": item_ids,
        "video_id": [merged[i][0] for i in item_ids],
        "tags": pa.array([[t for t, _ in r] for r in ranked], pa.list_(pa.string())),
        "votes": pa.array([[v for _, v in r] for r in ranked], pa.list_(pa.int32())),
    })


@dataclass
class SplitStats:
    modality: str  # "visual" or "textual"
    split: str
    items: int  # videos or captions with at least one answered request
    unique_tags: int
    tags_per_item: float  # mean number of distinct tags per item, over all temperatures


def tag_statistics(out: str, top: int = 10) -> tuple[list[SplitStats], dict[str, list[tuple[str, int]]]]:
    """Per modality and split, MAC-VR Table 1's figures for the LATEST tag versions in `out`, and
    per modality the `top` most frequent tags (counted once per item)."""
    store = Store.open(out)
    stats, frequent = [], {}
    for stage, (_, table, key) in TAG_STAGES.items():
        pointed = latest_pointer(store, stage)
        if pointed is None:
            continue
        version = Version(store, stage, pointed)
        source = version.manifest()["identity"]["inputs"][table]
        splits = dict(zip(*Version(store, table, source).table(columns=[key, "split"]).to_pydict().values()))
        merged = merged_tags(version).to_pylist()
        modality = stage.split("_")[0]
        by_split: dict[str, list[list[str]]] = {}
        for row in merged:
            by_split.setdefault(splits.get(row["item_id"], "?"), []).append(row["tags"])
        for split, tag_lists in sorted(by_split.items()):
            stats.append(SplitStats(modality, split, len(tag_lists), len({t for tags in tag_lists for t in tags}),
                                    sum(map(len, tag_lists)) / len(tag_lists)))
        frequent[modality] = Counter(t for row in merged for t in row["tags"]).most_common(top)
    return stats, frequent


def format_statistics(stats: list[SplitStats], frequent: dict[str, list[tuple[str, int]]]) -> str:
    """Markdown: Table 1 (unique tags, tags per item, per modality and split), then the most
    frequent tags per modality. Reads as a table in a terminal too."""
    if not stats:
        return "no visual_tags or textual_tags output here yet"
    lines = ["| modality | split | items | unique tags | tags per item |", "|---|---|---|---|---|"]
    lines += [f"| {s.modality} | {s.split} | {s.items} | {s.unique_tags} | {s.tags_per_item:.1f} |" for s in stats]
    for modality, tags in frequent.items():
        lines += ["", f"most frequent {modality} tags (items): " + ", ".join(f"{t} ({n})" for t, n in tags)]
    return "\n".join(lines)

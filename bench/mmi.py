"""MMI skeleton stages through the runner on CPU: requests/s at several batch sizes, and the request
counts an MSR-VTT run implies.

    python bench/mmi.py --captions 48 --videos 16 --clusters 4 --batch 1 8 32

A run's inputs are written directly (a manifest of `--captions` captions over `--videos` videos,
each video's 8 key images as 224x224 JPEGs, and a `demonstrations` version with `--clusters`
clusters per pool whose questions are the shipped pools' first ones), then `text_skeletons` (a
Llama-shaped LLM, hidden `--hidden`, `--layers` layers, random weights, the tiny byte-level
tokenizer) and `video_skeletons` (the tiny LLaVA of the demo) run through `run_stage` with the
transformers engine, one worker, at each `--batch` size (engine and stage batch alike). Requests
are items x clusters; seconds are the stage's own (Ray's start-up excluded). Markdown for
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from generate import build_model  # noqa: E402

from pipeline.engines.config import TransformersEngineConfig  # noqa: E402
from pipeline.mmi.asking import AnswerSampling  # noqa: E402
from pipeline.mmi.pools import load_pool  # noqa: E402
from pipeline.models.tiny_lm import build_tiny_vlm  # noqa: E402
from pipeline.run.runner import RunnerConfig, run_stage  # noqa: E402
from pipeline.run.stage import ModelRunSettings, Stage, Step  # noqa: E402
from pipeline.stages import STAGES  # noqa: E402
from pipeline.stages.text_skeletons import TextSkeletonsConfig  # noqa: E402
from pipeline.stages.video_skeletons import VideoSkeletonsConfig  # noqa: E402
from pipeline.store.dataset_manifest import write_dataset_manifest  # noqa: E402
from pipeline.store.schema import CAPTIONS, DEMONSTRATIONS, KEYFRAMES, MANIFEST_PROBLEMS, VIDEOS  # noqa: E402
from pipeline.store.storage import Store  # noqa: E402
from pipeline.store.version import Version  # noqa: E402

SUBJECTS = ["a man", "two children", "a woman", "a dog", "a band", "a chef", "a crowd", "a cyclist"]
ACTIONS = ["plays guitar on a stage", "cooks pasta in a small kitchen", "rides down a muddy hill",
           "dances at a wedding", "explains how to fix a bike", "runs across a beach at sunset"]
RUNNER = RunnerConfig(rows_per_shard=16, max_workers=1, progress=False)


@dataclass
class _Copy:
    pass


def _copy_setup(config):
    return lambda items: items


def written(store: Store, name: str, key: str, table: pa.Table) -> Version:
    stage = Stage(name=name, description="bench input", key=key, inputs=(), config_type=_Copy, schema=table.schema,
                  items=lambda config, inputs: table, steps=(Step("copy", _copy_setup),))
    return Version(store, name, run_stage(store, stage, _Copy(), {}, RUNNER).version)


def jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (224, 224, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def inputs(store: Store, captions: int, videos: int, clusters: int) -> dict:
    video_ids = [f"v{i:04d}" for i in range(videos)]
    videos_table = pa.table({"video_id": video_ids, "path": [None] * videos, "split": ["test"] * videos,
                             "extra": [None] * videos}, schema=VIDEOS)
    texts = [f"{SUBJECTS[i % len(SUBJECTS)]} {ACTIONS[i % len(ACTIONS)]}" for i in range(captions)]
    captions_table = pa.table({"caption_id": [f"c{i:05d}" for i in range(captions)],
                               "video_id": [video_ids[i % videos] for i in range(captions)], "text": texts,
                               "split": ["test"] * captions, "extra": [None] * captions}, schema=CAPTIONS)
    found = write_dataset_manifest(store, videos_table, captions_table, MANIFEST_PROBLEMS.empty_table(), "/videos",
                                   {"format": "bench"}).as_inputs()
    frames = [jpeg(i) for i in range(8)]
    found["key_images"] = written(store, "key_images", "video_id", pa.Table.from_pylist(
        [{"video_id": v, "strategy": "disparity", "frame_indices": list(range(8)),
          "timestamps": [i / 2 for i in range(8)], "frames": frames, "width": 224, "height": 224,
          "repeated_frames": False, "decoder": "bench", "note": None}
         for v in video_ids], schema=KEYFRAMES))
    rows = []
    for pool, name in (("text", "mmi_text_questions"), ("visual", "mmi_visual_questions")):
        questions = load_pool(name).questions
        for c in range(clusters):
            rows.append({"demonstration_id": f"{pool}/c{c:02d}", "pool": pool, "cluster": c, "candidates": [],
                         "chosen": 0, "question_id": f"{pool}/q{c:03d}", "question": questions[c],
                         "answer": "a man and a guitar on a stage", "item_id": "c00000" if pool == "text" else "v0000",
                         "item_text": texts[0] if pool == "text" else None, "model": "bench", "revision": None,
                         "prompt": "bench", "prompt_sha256": "0" * 64})
    found["demonstrations"] = written(store, "demonstrations", "demonstration_id",
                                      pa.Table.from_pylist(rows, schema=DEMONSTRATIONS))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=48)
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--clusters", type=int, default=4)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--data", default="bench/_data/mmi")
    args = parser.parse_args()

    data = Path(args.data)
    llm = build_model(data / "llm", args.hidden, args.layers)
    vlm = build_tiny_vlm(data / "tiny-vlm")
    sampling = AnswerSampling(max_tokens=args.max_tokens)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {args.captions} captions, {args.videos} videos, "
          f"{args.clusters} clusters per pool, at most {args.max_tokens} new tokens, greedy\n")
    print("| stage | batch | items | requests | seconds | requests/s |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for batch in args.batch:
            store = Store.open(str(Path(scratch) / f"b{batch}"))
            found = inputs(store, args.captions, args.videos, args.clusters)
            run = ModelRunSettings(workers=1, num_cpus=float(os.cpu_count() or 1), batch_size=batch,
                                   rows_per_shard=max(batch, 16))
            configs = {
                "text_skeletons": TextSkeletonsConfig(engine=TransformersEngineConfig(model=llm, batch_size=batch),
                                                      sampling=sampling, run=run),
                "video_skeletons": VideoSkeletonsConfig(engine=TransformersEngineConfig(model=vlm, batch_size=batch),
                                                        sampling=sampling, run=run),
            }
            for name, config in configs.items():
                stage = STAGES[name]
                result = run_stage(store, stage, config, {i: found[i] for i in stage.inputs}, RUNNER)
                requests = result.rows * args.clusters
                print(f"| {name} | {batch} | {result.rows} | {requests} | {result.seconds:.1f} | "
                      f"{requests / result.seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()

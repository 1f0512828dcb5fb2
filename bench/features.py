"""frame_features throughput: the stage against the bare model forward on the same frames.

    python bench/features.py --videos 48 --rounds 3 --threads 2

A CLIP of real size (`--arch b32`, `b16` or `l14`: the ViT geometry of openai/clip-vit-*, built
from its config with random weights, since speed does not depend on weight values) is saved
with `save_pretrained` and loaded by the stage as any local checkpoint. Generated clips go
through probe and keyframes once (12 uniform frames, 224-pixel shorter side, as the paper
configs); then, in `--rounds` interleaved rounds, it measures frames/s of:
- `bare forward`: the vision tower alone on pixel tensors prepared beforehand (the checkpoint's
  processor), `--batch` videos per forward pass, `--threads` torch threads;
- `worker code`: what a frame_features worker runs for a shard, called directly in this process
  without Ray: read the JPEGs, decode, resize and crop, normalise, forward (the figure the GPU
  machine, which has no Ray, can give);
- `stage`: `run_stage(frame_features)` on Ray (one worker with `--threads` CPUs; Ray already
  started), reading keyframes parts in the worker, writing and committing Parquet; the worker's
  start and model load are part of it, as in a real run (hence enough videos to amortise them).
Medians of the rounds, as Markdown for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.decode.sampling import Uniform
from pipeline.demo import synth
from pipeline.run.runner import RunnerConfig, ensure_ray, run_stage
from pipeline.run.stage import ModelRunSettings
from pipeline.stages import STAGES
from pipeline.stages.frame_features import FrameFeaturesConfig
from pipeline.stages.keyframes import KeyframesConfig
from pipeline.stages.probe import ProbeConfig
from pipeline.store.storage import Store
from pipeline.store.version import Version

# The vision geometry of OpenAI's CLIP checkpoints (their config.json), text tower kept small:
# only the vision tower runs here.
ARCHS = {
    "b32": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                patch_size=32, projection_dim=512),
    "b16": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                patch_size=16, projection_dim=512),
    "l14": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                patch_size=14, projection_dim=768),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 patch_size=32, projection_dim=16),
}
FRAMES = 12


def build_model(folder: Path, arch: str) -> str:
    """A CLIPModel of the given vision geometry with random weights, saved like a real checkpoint."""
    if (folder / "config.json").exists():
        return str(folder)
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    vision = dict(ARCHS[arch], image_size=224)
    projection = vision.pop("projection_dim")
    text = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2, vocab_size=1000)
    torch.manual_seed(0)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                          image_mean=OPENAI_CLIP_MEAN, image_std=OPENAI_CLIP_STD).save_pretrained(folder)
    return str(folder)


def make_keyframes(store: Store, folder: Path, videos: int) -> dict[str]:
    """Probe and keyframes of generated 10 s 640x360 clips: the frame_features inputs."""
    import pyarrow as pa

    from pipeline.store.dataset_manifest import write_dataset_manifest
    from pipeline.store.schema import CAPTIONS, MANIFEST_PROBLEMS, VIDEOS

    patterns = ["testsrc2", "mandelbrot", "smptebars", "rgbtestsrc"]
    folder.mkdir(parents=True, exist_ok=True)
    ids = [f"clip{i:03d}" for i in range(videos)]
    for i, video_id in enumerate(ids):
        path = folder / f"{video_id}.mp4"
        if not path.exists():
            synth.make_clip(path, seconds=10, width=640, height=360, fps=25, pattern=patterns[i % len(patterns)])
    table = pa.table({"video_id": ids, "path": [f"{i}.mp4" for i in ids], "split": ["test"] * videos,
                      "extra": [None] * videos}, schema=VIDEOS)
    inputs = write_dataset_manifest(store, table, CAPTIONS.empty_table(), MANIFEST_PROBLEMS.empty_table(),
                                    str(folder), {"format": "bench"}).as_inputs()
    runner = RunnerConfig(rows_per_shard=8, progress=False)
    probe = run_stage(store, STAGES["probe"], ProbeConfig(), inputs, runner)
    inputs["probe"] = Version(store, "probe", probe.version)
    keyframes = run_stage(store, STAGES["keyframes"], KeyframesConfig(sampling=Uniform(num_frames=FRAMES)),
                          inputs, runner)
    inputs["keyframes"] = Version(store, "keyframes", keyframes.version)
    return inputs


def bare_forward(model_dir: str, jpeg_rows: list[list[bytes]], batch: int, threads: int) -> float:
    """Seconds for the vision tower alone over prepared pixels (preparation not timed)."""
    import torch

    from pipeline.models.clip import ClipVision, FramePreparer, decode_jpeg

    torch.set_num_threads(threads)
    model = ClipVision.load(model_dir, device="cpu", dtype="float32", batch_size=10**9)
    preparer = FramePreparer.load(model_dir)
    pixels = [preparer.prepare([decode_jpeg(j) for j in row]) for row in jpeg_rows]
    started = time.perf_counter()
    for start in range(0, len(pixels), batch):
        model.embed_prepared(np.concatenate(pixels[start : start + batch]))
    return time.perf_counter() - started


def worker_code(model_dir: str, inputs: dict, store: Store, batch: int, threads: int) -> float:
    """Seconds for what a fused frame_features worker does to every shard, without Ray: read its
    keyframes columns, decode and prepare the JPEGs, forward (model loading not timed)."""
    import torch

    from pipeline.run.runner import attach_upstream
    from pipeline.run.workers import ShardJob, read_upstream_columns, run_step

    torch.set_num_threads(threads)
    stage = STAGES["frame_features"]
    config = FrameFeaturesConfig(model=model_dir, run=ModelRunSettings(batch_size=batch, device="cpu",
                                                                       num_cpus=threads))
    readers = {name: inputs[name] for name in stage.inputs}
    items, parts = attach_upstream(stage, stage.items(config, readers), readers)
    job = ShardJob(stage, config, config.run, stage.output_schema(config), Version(store, stage.name, "bench"), {},
                   readers, parts)
    steps = [(step, step.setup(config)) for step in stage.steps]
    from pipeline.run.workers import InFlight

    started = time.perf_counter()
    rows = [{k: v for k, v in row.items() if k != "_upstream_failure"} for row in items.to_pylist()]
    read_upstream_columns(job, rows)
    flight = InFlight(0, rows, [], 0.0)
    for step, fn in steps:
        flight = run_step(job, step, fn, flight)
    assert not flight.failures, flight.failures
    return time.perf_counter() - started


def stage_run(model_dir: str, inputs: dict, store: Store, batch: int, threads: int) -> float:
    stage = STAGES["frame_features"]
    config = FrameFeaturesConfig(model=model_dir, run=ModelRunSettings(batch_size=batch, workers=1,
                                                                       num_cpus=threads, device="cpu"))
    store.delete("frame_features")  # run settings do not change the version: start afresh
    result = run_stage(store, stage, config, inputs, RunnerConfig(rows_per_shard=8, progress=False))
    assert result.rows == len(inputs_ids(store, inputs)), result
    return result.seconds


def inputs_ids(store: Store, inputs: dict) -> list[str]:
    return inputs["keyframes"].table(columns=["video_id"]).column("video_id").to_pylist()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--arch", default="b32", choices=sorted(ARCHS))
    parser.add_argument("--batch", type=int, default=8, help="videos per forward pass")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--data", default="bench/_data/features", help="where clips and the model are kept")
    args = parser.parse_args()

    data = Path(args.data)
    model_dir = build_model(data / f"clip-{args.arch}", args.arch)
    ensure_ray()
    with tempfile.TemporaryDirectory() as out:
        store = Store.open(out)
        inputs = make_keyframes(store, data / "clips", args.videos)
        jpeg_rows = store_rows(store, inputs)
        frames = sum(len(r) for r in jpeg_rows)
        measures = {
            "bare forward": lambda: bare_forward(model_dir, jpeg_rows, args.batch, args.threads),
            "worker code": lambda: worker_code(model_dir, inputs, store, args.batch, args.threads),
            "stage": lambda: stage_run(model_dir, inputs, store, args.batch, args.threads),
        }
        seconds: dict[str, list[float]] = {name: [] for name in measures}
        measures["bare forward"]()  # warm-up: page cache, torch kernels
        for _ in range(args.rounds):
            for name, measure in measures.items():
                seconds[name].append(measure())
    rate = {name: frames / statistics.median(values) for name, values in seconds.items()}
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{args.videos} videos x {FRAMES} frames, CLIP {args.arch} vision tower (random weights), float32 on CPU, "
          f"{args.threads} threads, {args.batch} videos per forward, median of {args.rounds} rounds; frames/s\n")
    print("| bare forward | worker code | stage | worker / bare | stage / bare |")
    print("|---|---|---|---|---|")
    print(f"| {rate['bare forward']:.1f} | {rate['worker code']:.1f} | {rate['stage']:.1f} | "
          f"{rate['worker code'] / rate['bare forward']:.0%} | {rate['stage'] / rate['bare forward']:.0%} |")


def store_rows(store: Store, inputs: dict) -> list[list[bytes]]:
    return inputs["keyframes"].table(columns=["frames"]).column("frames").to_pylist()


if __name__ == "__main__":
    main()

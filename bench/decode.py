"""Keyframes throughput: the keyframes stage against the bare decoder loop and a full decode.

    python bench/decode.py --clips 16 --workers 2

On the same generated files, in one run, with the same number of worker processes (one decoder
thread each), it measures videos/s for 12 uniform frames of 60 s 640x360 H.264 clips:
- `full decode`: `ffmpeg -threads 1 -i clip -f null -`, the cost of decoding every frame;
- `bare <backend>`: the decoder alone in a process pool (decord's VideoReader.get_batch on the
  same indices; our ffmpeg source's read), no resizing, JPEG, Parquet or Ray;
- `stage <backend>`: `run_stage(keyframes)` on Ray Data: decode + resize + JPEG + Parquet +
  commits, Ray already started (its start-up is a one-off per run, not per video).
Each is measured on clips with 2 s and with 10 s GOPs (x264's default keyint of 250 at 25 fps).
Results go to stdout as a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from pipeline import outputs, synth
from pipeline.decode.sampling import Uniform, choose_frames
from pipeline.runner import RunnerConfig, ensure_ray, run_stage
from pipeline.stages import STAGES
from pipeline.stages.keyframes import KeyframesConfig
from pipeline.stages.probe import ProbeConfig
from pipeline.storage import Store

WIDTH, HEIGHT, FPS, NUM_FRAMES = 640, 360, 25, 12


def make_clips(folder: Path, count: int, seconds: float, gop_seconds: float) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    patterns = ["testsrc2", "mandelbrot", "smptebars", "rgbtestsrc"]
    clips = []
    for i in range(count):
        path = folder / f"clip{i:03d}.mp4"
        if not path.exists():
            synth.make_clip(path, seconds=seconds, width=WIDTH, height=HEIGHT, fps=FPS,
                            gop_seconds=gop_seconds, pattern=patterns[i % len(patterns)])
        clips.append(path)
    return clips


def _full_decode(path: Path) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-threads", "1", "-i", str(path), "-f", "null", "-"],
                   check=True)


def _bare_decord(path: Path) -> int:
    import decord

    reader = decord.VideoReader(str(path), num_threads=1)
    count = len(reader)
    indices = [int((2 * k + 1) * count // (2 * NUM_FRAMES)) for k in range(NUM_FRAMES)]
    return reader.get_batch(indices).asnumpy().shape[0]


def _bare_ffmpeg(path: Path) -> int:
    from pipeline.decode.sources import open_source

    with open_source(str(path), "ffmpeg") as source:
        selection = choose_frames(Uniform(num_frames=NUM_FRAMES), source.timestamps, path.stem)
        return source.read(selection.indices).shape[0]


def _pool_rate(fn, clips: list[Path], workers: int) -> float:
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(fn, clips[:workers]))  # warm the processes and imports
        started = time.perf_counter()
        list(pool.map(fn, clips))
        return len(clips) / (time.perf_counter() - started)


def _stage_rate(clips: list[Path], backend: str, workers: int, scratch: Path) -> float:
    store = Store.open(str(scratch / f"out-{backend}-{time.time_ns()}"))
    annotations = scratch / "captions.csv"
    annotations.write_text("video_id,path,caption\n" + "".join(f"{c.stem},{c.resolve()},clip\n" for c in clips))
    from pipeline.run import DatasetConfig, build_and_write_manifest

    manifest, _ = build_and_write_manifest(
        store, DatasetConfig(format="generic", annotations=str(annotations), videos=str(clips[0].parent)))
    runner = RunnerConfig(rows_per_shard=4, max_workers=workers, progress=False)
    probe = run_stage(store, STAGES["probe"], ProbeConfig(), {"manifest": manifest}, runner)
    inputs = {"manifest": manifest, "probe": outputs.latest(store, "probe")}
    config = KeyframesConfig(sampling=Uniform(num_frames=NUM_FRAMES), backend=backend, fallback=False)
    result = run_stage(store, STAGES["keyframes"], config, inputs, runner)
    if result.failures or probe.failures:
        raise RuntimeError(f"benchmark clips must all decode; see the failures under {store.root}")
    return result.items_per_second


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60, help="clip length")
    parser.add_argument("--data", default="bench/_data", help="where the generated clips are kept")
    args = parser.parse_args()
    ensure_ray()

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, "
          f"{subprocess.run(['ffmpeg', '-version'], capture_output=True, text=True).stdout.split(chr(10))[0]}")
    print(f"{args.clips} clips of {args.seconds:g} s {WIDTH}x{HEIGHT} {FPS} fps H.264, {NUM_FRAMES} uniform "
          f"frames, {args.workers} worker processes with one decoder thread each\n")
    print("| GOP | full decode | bare decord | stage decord | stage/bare | bare ffmpeg | stage ffmpeg | stage/bare |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for gop in (2.0, 10.0):
            folder = Path(args.data) / f"{args.seconds:g}s-gop{gop:g}s"
            clips = make_clips(folder, args.clips, args.seconds, gop)
            full = _pool_rate(_full_decode, clips, args.workers)
            bare = {"decord": _pool_rate(_bare_decord, clips, args.workers),
                    "ffmpeg": _pool_rate(_bare_ffmpeg, clips, args.workers)}
            stage = {b: _stage_rate(clips, b, args.workers, Path(scratch)) for b in ("decord", "ffmpeg")}
            print(f"| {gop:g} s | {full:.2f} | {bare['decord']:.2f} | {stage['decord']:.2f} | "
                  f"{stage['decord'] / bare['decord']:.0%} | {bare['ffmpeg']:.2f} | {stage['ffmpeg']:.2f} | "
                  f"{stage['ffmpeg'] / bare['ffmpeg']:.0%} |", flush=True)
    print("\nvideos/s (higher is better); stage/bare = the stage's throughput as a share of the bare loop's")


if __name__ == "__main__":
    main()

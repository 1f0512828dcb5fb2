"""Keyframes throughput: the keyframes stage against the bare decoder loop and a full decode.

    python bench/decode.py --clips 16 --repeat 3 --rounds 3 --workers 2

On the same generated files (each listed `--repeat` times, so per-run costs amortise as in a
real dataset), in one run, with the same number of worker processes (one decoder thread each),
it measures keyframes/s for 12 uniform frames of 60 s 640x360 H.264 clips:
- `full decode`: `ffmpeg -threads 1 -i clip -f null -`, the cost of decoding every frame;
- `bare <backend>`: the decoder alone in a process pool (decord's VideoReader.get_batch on the
  same indices; our ffmpeg source's read), no resizing, JPEG, Parquet or Ray;
- `stage <backend>`: `run_stage(keyframes)` on Ray Data: decode + resize + JPEG + Parquet +
  commits, Ray already started (its start-up is a one-off per run, not per video).
Each is measured on clips with 2 s and with 10 s GOPs (x264's default keyint of 250 at 25 fps),
in `--rounds` interleaved rounds after a warm-up; the table gives each figure's median, since a
shared 2-core machine varies by 10% from one run to the next. Results go to stdout as a
Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from pipeline import synth
from pipeline.decode.sampling import Uniform, choose_frames
from pipeline.runner import RunnerConfig, ensure_ray, run_stage
from pipeline.stage import StageOutput
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
    annotations.write_text("video_id,path,caption\n" + "".join(
        f"{c.stem}-{i},{c.resolve()},clip\n" for i, c in enumerate(clips)))
    from pipeline.run import DatasetConfig, build_and_write_manifest

    manifest, _ = build_and_write_manifest(
        store, DatasetConfig(format="generic", annotations=str(annotations), videos=str(clips[0].parent)))
    runner = RunnerConfig(rows_per_shard=4, max_workers=workers, progress=False)
    probe = run_stage(store, STAGES["probe"], ProbeConfig(), manifest.as_inputs(), runner)
    inputs = {**manifest.as_inputs(), "probe": StageOutput("probe", probe.version)}
    config = KeyframesConfig(sampling=Uniform(num_frames=NUM_FRAMES), backend=backend, fallback=False)
    result = run_stage(store, STAGES["keyframes"], config, inputs, runner)
    if result.failures or probe.failures:
        raise RuntimeError(f"benchmark clips must all decode; see the failures under {store.root}")
    return result.items_per_second


MEASURES = ("full", "bare decord", "stage decord", "bare ffmpeg", "stage ffmpeg")


def _measure(name: str, items: list[Path], workers: int, scratch: Path) -> float:
    if name == "full":
        return _pool_rate(_full_decode, items, workers)
    kind, backend = name.split()
    if kind == "bare":
        return _pool_rate(_bare_decord if backend == "decord" else _bare_ffmpeg, items, workers)
    return _stage_rate(items, backend, workers, scratch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=16, help="distinct files per GOP setting")
    parser.add_argument("--repeat", type=int, default=3, help="times each file is listed")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60, help="clip length")
    parser.add_argument("--data", default="bench/_data", help="where the generated clips are kept")
    args = parser.parse_args()
    ensure_ray()

    ffmpeg = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {ffmpeg}")
    print(f"{args.clips} files x {args.repeat} of {args.seconds:g} s {WIDTH}x{HEIGHT} {FPS} fps H.264, "
          f"{NUM_FRAMES} uniform frames, {args.workers} worker processes with one decoder thread each, "
          f"median of {args.rounds} rounds\n")
    print("| GOP | full decode | bare decord | stage decord | stage/bare | bare ffmpeg | stage ffmpeg | stage/bare |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for gop in (2.0, 10.0):
            folder = Path(args.data) / f"{args.seconds:g}s-gop{gop:g}s"
            items = make_clips(folder, args.clips, args.seconds, gop) * args.repeat
            for name in MEASURES[1:]:  # warm-up: imports, Ray workers, page cache
                _measure(name, items[: args.workers * 2], args.workers, Path(scratch))
            rates = {name: [] for name in MEASURES}
            for _ in range(args.rounds):
                for name in MEASURES:
                    rates[name].append(_measure(name, items, args.workers, Path(scratch)))
            # keyframes/s: each video gives NUM_FRAMES frames.
            m = {name: NUM_FRAMES * statistics.median(values) for name, values in rates.items()}
            print(f"| {gop:g} s | {m['full']:.2f} | {m['bare decord']:.2f} | {m['stage decord']:.2f} | "
                  f"{m['stage decord'] / m['bare decord']:.0%} | {m['bare ffmpeg']:.2f} | "
                  f"{m['stage ffmpeg']:.2f} | {m['stage ffmpeg'] / m['bare ffmpeg']:.0%} |", flush=True)
    print(f"\nkeyframes/s ({NUM_FRAMES} per video; higher is better); stage/bare = the stage's "
          "throughput as a share of the bare loop's")


if __name__ == "__main__":
    main()

"""Keyframes throughput: the keyframes stage against each bare decoder loop and a full decode.

    python bench/decode.py --clips 16 --repeat 3 --rounds 3 --workers 2

Two cases, each on clips with 2 s and with 10 s GOPs (x264's default keyint of 250 at 25 fps):
- dense: 12 uniform frames (segment centres) of 60 s 640x360 25 fps H.264 clips;
- sparse: 8 `vlm` frames (first to last, `np.linspace`) of 120 s clips, as for VLM prompting.

On the same generated files (each listed `--repeat` times, so per-run costs amortise as in a
real dataset), in one run, with the same number of worker processes (one decoder thread each),
it measures keyframes/s:
- `full`: `ffmpeg -threads 1 -i clip -f null -`, the cost of decoding every frame;
- `bare <backend>`: the decoder alone in a process pool, full-size frames, no resizing, JPEG,
  Parquet or Ray: decord's `VideoReader.get_batch`; PyAV seeking to the keyframe before each
  wanted frame and decoding forward to it; our ffmpeg source's `read` (ffmpeg has no simpler
  seeking loop to compare with);
- `stage <backend>`: `run_stage(keyframes)` on Ray Data: decode (scaled by the decoder), JPEG,
  Parquet, commits, with the integrity checks; Ray already started.
Every measure runs in `--rounds` interleaved rounds after a warm-up; the table gives medians,
since a shared 2-core machine varies by 10% from one run to the next. Results go to stdout as
Markdown tables for BENCHMARKS.md.
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
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from pipeline.decode.sampling import Uniform, Vlm, choose_frames
from pipeline.demo import synth
from pipeline.run.runner import RunnerConfig, ensure_ray, run_stage
from pipeline.stages import STAGES
from pipeline.stages.keyframes import KeyframesConfig
from pipeline.stages.probe import ProbeConfig
from pipeline.store.storage import Store
from pipeline.store.version import Version

WIDTH, HEIGHT, FPS = 640, 360, 25
BACKENDS = ("decord", "pyav", "ffmpeg")
MEASURES = ("full", *(f"bare {b}" for b in BACKENDS), *(f"stage {b}" for b in BACKENDS))


@dataclass(frozen=True)
class Case:
    name: str
    seconds: float
    sampling: Uniform | Vlm

    @property
    def frames(self) -> int:
        return self.sampling.num_frames


CASES = (Case("dense", 60, Uniform(num_frames=12)), Case("sparse", 120, Vlm(num_frames=8)))


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


def _indices(case: Case, frame_count: int) -> list[int]:
    return choose_frames(case.sampling, np.arange(frame_count) / FPS, "bench").indices


def _full_decode(case: Case, path: Path) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-threads", "1", "-i", str(path), "-f", "null", "-"], check=True)


def _bare_decord(case: Case, path: Path) -> int:
    import decord

    reader = decord.VideoReader(str(path), num_threads=1)
    return reader.get_batch(_indices(case, len(reader))).asnumpy().shape[0]


def _bare_pyav(case: Case, path: Path) -> int:
    """Seek to the keyframe before each wanted frame and decode forward to it."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type, stream.codec_context.thread_count = "SLICE", 1
        step = int(round(1 / (FPS * stream.time_base)))  # pts per frame on these constant-rate clips
        start = stream.start_time or 0
        wanted = [start + i * step for i in _indices(case, stream.frames)]
        got = 0
        for target in wanted:
            container.seek(target, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts >= target:
                    frame.to_ndarray(format="rgb24")
                    got += 1
                    break
        return got


def _bare_ffmpeg(case: Case, path: Path) -> int:
    from pipeline.decode.sources import open_source

    with open_source(str(path), "ffmpeg") as source:
        return source.read(choose_frames(case.sampling, source.timestamps, path.stem).indices).shape[0]


BARE = {"decord": _bare_decord, "pyav": _bare_pyav, "ffmpeg": _bare_ffmpeg}


def _pool_rate(fn, clips: list[Path], workers: int) -> float:
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(fn, clips[:workers]))  # warm the processes and imports
        started = time.perf_counter()
        list(pool.map(fn, clips))
        return len(clips) / (time.perf_counter() - started)


def _stage_rate(case: Case, clips: list[Path], backend: str, workers: int, scratch: Path) -> float:
    store = Store.open(str(scratch / f"out-{backend}-{time.time_ns()}"))
    annotations = scratch / "captions.csv"
    annotations.write_text("video_id,path,caption\n" + "".join(
        f"{c.stem}-{i},{c.resolve()},clip\n" for i, c in enumerate(clips)))
    from pipeline.flow import DatasetConfig, build_and_write_manifest

    manifest, _ = build_and_write_manifest(
        store, DatasetConfig(format="generic", annotations=str(annotations), videos=str(clips[0].parent)))
    runner = RunnerConfig(rows_per_shard=4, max_workers=workers, progress=False)
    probe = run_stage(store, STAGES["probe"], ProbeConfig(), manifest.as_inputs(), runner)
    inputs = {**manifest.as_inputs(), "probe": Version(store, "probe", probe.version)}
    config = KeyframesConfig(sampling=case.sampling, backend=backend, fallback=False)
    result = run_stage(store, STAGES["keyframes"], config, inputs, runner)
    if result.failures or probe.failures:
        raise RuntimeError(f"benchmark clips must all decode; see the failures under {store.root}")
    return result.items_per_second


def _measure(case: Case, name: str, items: list[Path], workers: int, scratch: Path) -> float:
    if name == "full":
        return _pool_rate(partial(_full_decode, case), items, workers)
    kind, backend = name.split()
    if kind == "bare":
        return _pool_rate(partial(BARE[backend], case), items, workers)
    return _stage_rate(case, items, backend, workers, scratch)


def _table(case: Case, rows: dict[float, dict[str, float]]) -> str:
    head = "| GOP | full | " + " | ".join(f"bare {b}" for b in BACKENDS) + " | " + \
        " | ".join(f"stage {b}" for b in BACKENDS) + " | best stage / full | best stage / best bare |"
    lines = [head, "|" + "---|" * (len(MEASURES) + 3)]
    for gop, m in rows.items():
        best_stage = max(m[f"stage {b}"] for b in BACKENDS)
        best_bare = max(m[f"bare {b}"] for b in BACKENDS)
        cells = " | ".join(f"{m[name]:.1f}" for name in MEASURES)
        lines.append(f"| {gop:g} s | {cells} | {best_stage / m['full']:.1f}x | {best_stage / best_bare:.0%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=16, help="distinct files per GOP setting")
    parser.add_argument("--repeat", type=int, default=3, help="times each file is listed")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians reported")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--scale", type=float, default=1.0, help="clip lengths times this (smoke tests)")
    parser.add_argument("--cases", nargs="+", default=[c.name for c in CASES], choices=[c.name for c in CASES])
    parser.add_argument("--gops", nargs="+", type=float, default=[2.0, 10.0], help="GOP lengths in seconds")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up (smoke tests; figures are off)")
    parser.add_argument("--data", default="bench/_data", help="where the generated clips are kept")
    args = parser.parse_args()
    ensure_ray()

    ffmpeg = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, {ffmpeg}")
    print(f"{args.clips} files x {args.repeat}, {WIDTH}x{HEIGHT} {FPS} fps H.264, {args.workers} worker processes "
          f"with one decoder thread each, median of {args.rounds} interleaved rounds; keyframes/s\n")
    with tempfile.TemporaryDirectory() as scratch:
        for case in (c for c in CASES if c.name in args.cases):
            seconds = case.seconds * args.scale
            print(f"{case.name}: {case.frames} {case.sampling.strategy} frames of {seconds:g} s clips\n")
            rows = {}
            for gop in args.gops:
                folder = Path(args.data) / f"{seconds:g}s-gop{gop:g}s"
                items = make_clips(folder, args.clips, seconds, gop) * args.repeat
                for name in [] if args.no_warmup else MEASURES[1:]:  # warm-up: imports, Ray workers, page cache
                    _measure(case, name, items[: args.workers * 2], args.workers, Path(scratch))
                rates = {name: [] for name in MEASURES}
                for _ in range(args.rounds):
                    for name in MEASURES:
                        rates[name].append(_measure(case, name, items, args.workers, Path(scratch)))
                rows[gop] = {name: case.frames * statistics.median(values) for name, values in rates.items()}
            print(_table(case, rows) + "\n", flush=True)


if __name__ == "__main__":
    main()

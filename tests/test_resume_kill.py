"""A real `tvr run` killed with SIGKILL midway, then rerun: every video exactly once, nothing redone."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds
import yaml
from killing import committed, run_until_killed

from pipeline.demo import synth

NUM_CLIPS = 14


def _dataset(folder: Path) -> Path:
    videos = folder / "videos"
    videos.mkdir(parents=True)
    rows = []
    for i in range(NUM_CLIPS):
        synth.make_clip(videos / f"clip{i:02d}.mp4", seconds=2, width=320, height=240, fps=15)
        rows.append((f"clip{i:02d}", f"clip{i:02d}.mp4", f"clip number {i}"))
    synth.make_zero_byte(videos / "broken.mp4")
    rows.append(("broken", "broken.mp4", "a broken upload"))
    annotations = folder / "captions.csv"
    with annotations.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id", "path", "caption"])
        writer.writerows(rows)
    return annotations


def test_sigkill_midway_then_rerun_gives_every_item_exactly_once(tmp_path):
    annotations = _dataset(tmp_path / "data")
    out = tmp_path / "out"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "out": str(out),
        "dataset": {"format": "generic", "annotations": str(annotations),
                    "videos": str(tmp_path / "data" / "videos")},
        "runner": {"rows_per_shard": 1, "max_workers": 1, "progress": False},
        "keyframes": {"sampling": {"strategy": "uniform", "num_frames": 24}, "short_side": 240},
    }))
    env = {**os.environ, "RAY_ADDRESS": ""}  # its own local Ray, not the test session's

    killed = run_until_killed(config, ["probe", "keyframes"], env, out, "keyframes", 3)
    assert not killed["complete"]
    assert 3 <= len(killed["shards"]) < killed["num_shards"] == NUM_CLIPS + 1
    # What a reader of the version folder sees is exactly what was committed, nothing staged. A
    # kill between a shard's record (the commit) and the move of its files leaves that shard's
    # files staged, for the rerun to publish: every record's rows file is in place or staged.
    folder = out / "keyframes" / killed["version"]
    rows_files = {name: record["files"][0] for name, record in killed["shards"].items()}
    published = {name for name, file in rows_files.items() if (out / file["final"]).exists()}
    assert all((out / rows_files[name]["staged"]).exists() for name in set(rows_files) - published)
    assert len(published) >= len(rows_files) - 1  # only the shard being committed can be caught in the move
    assert {p.name for p in folder.glob("part-*.parquet")} == {Path(rows_files[n]["final"]).name for n in published}
    assert ds.dataset(folder, format="parquet").count_rows() == sum(killed["shards"][n]["rows"] for n in published)

    rerun = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", str(config), "--stages", "probe", "keyframes"],
                           env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "resuming" in rerun.stdout + rerun.stderr

    final = committed(out, "keyframes")
    assert final["complete"] and len(final["shards"]) == final["num_shards"]
    for name, record in killed["shards"].items():  # shards committed before the kill stay as they were
        assert final["shards"][name]["committed"] == record["committed"]
    version = final["version"]
    rows = ds.dataset(out / "keyframes" / version, format="parquet").to_table(columns=["video_id", "frames"])
    failures = ds.dataset(out / "failures" / "keyframes" / version, format="parquet").to_table()
    ids = rows["video_id"].to_pylist() + failures["item_id"].to_pylist()
    assert sorted(ids) == sorted([f"clip{i:02d}" for i in range(NUM_CLIPS)] + ["broken"])
    assert failures["item_id"].to_pylist() == ["broken"]
    assert all(len(frames) == 24 for frames in rows["frames"].to_pylist())
    verified = subprocess.run([sys.executable, "-m", "pipeline.cli", "verify", str(out)],
                              capture_output=True, text=True, timeout=120)
    assert verified.returncode == 0, verified.stdout + verified.stderr

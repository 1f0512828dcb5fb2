"""The skeleton stages killed with SIGKILL midway (a real `tvr run`, while text_skeletons commits),
then rerun: every caption and every video exactly once, the shards committed before the kill kept
as they were and not recomputed."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pyarrow.dataset as ds
import yaml
from killing import committed, run_until_killed

from pipeline import config as config_lib
from pipeline.demo import synth
from pipeline.flow import RunConfig, run_pipeline, verify_outputs

VIDEOS = 4
CAPTIONS_PER_VIDEO = 2
SKELETON_STAGES = ["text_skeletons", "video_skeletons"]
HERE = Path(__file__).parent


def _dataset(folder: Path) -> Path:
    videos = folder / "videos"
    videos.mkdir(parents=True)
    rows = []
    for i in range(VIDEOS):
        synth.make_clip(videos / f"clip{i}.mp4", seconds=1, width=160, height=120, fps=10)
        rows += [(f"clip{i}", f"clip{i}.mp4", f"clip {i} caption {j}") for j in range(CAPTIONS_PER_VIDEO)]
    annotations = folder / "captions.csv"
    with annotations.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id", "path", "caption"])
        writer.writerows(rows)
    return annotations


def test_skeleton_stages_killed_midway_resume_with_every_item_exactly_once(tmp_path, tiny_lm, ray_session):
    annotations = _dataset(tmp_path / "data")
    pools = tmp_path / "pools"
    pools.mkdir()
    (pools / "mmi_text_questions.txt").write_text("What happens?\nWho is there?\nWhat is named?\n")
    (pools / "mmi_visual_questions.txt").write_text("What is shown?\nWhere is it?\nWhat colour is it?\n")
    out = tmp_path / "out"
    slow = {"backend": "plugin", "plugin": "mmi_engine:MmiEngine", "model": "mmi", "options": {"sleep": 0.2}}
    fast = {**slow, "options": {}}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "out": str(out),
        "dataset": {"format": "generic", "annotations": str(annotations), "videos": str(tmp_path / "data" / "videos")},
        "runner": {"rows_per_shard": 1, "max_workers": 1, "progress": False},
        "key_images": {"sampling": {"strategy": "disparity", "num_frames": 2, "min_gap_seconds": 0.2}},
        "question_clusters": {"pools_folder": str(pools), "model": tiny_lm, "k": 2},
        "demonstrations": {"text_engine": fast, "visual_engine": fast, "sample_size": 1},
        "text_skeletons": {"engine": slow, "run": {"rows_per_shard": 1}},
        "video_skeletons": {"engine": slow, "run": {"rows_per_shard": 1}},
    }))
    # Everything the skeletons read, in this session's Ray; then the skeletons in a driver of their own.
    run_pipeline(config_lib.load(RunConfig, str(config)), stages=["probe", "key_images", "question_clusters",
                                                                    "demonstrations"], report=lambda line: None)
    env = {**os.environ, "RAY_ADDRESS": "",
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}

    # Killed while text_skeletons commits its shards; the rerun (this process: a new driver) finishes
    # it and then runs video_skeletons.
    killed = run_until_killed(config, SKELETON_STAGES, env, out, "text_skeletons", 2)
    assert not killed["complete"] and 2 <= len(killed["shards"]) < killed["num_shards"]
    results = run_pipeline(config_lib.load(RunConfig, str(config)), stages=SKELETON_STAGES, report=lambda line: None)
    assert [(r.stage, r.computed_items) for r in results] == [
        ("text_skeletons", VIDEOS * CAPTIONS_PER_VIDEO - sum(r["items"] for r in killed["shards"].values())),
        ("video_skeletons", VIDEOS)]

    for stage, expected in (
            ("text_skeletons", {f"clip{i}#{j}" for i in range(VIDEOS) for j in range(CAPTIONS_PER_VIDEO)}),
            ("video_skeletons", {f"clip{i}" for i in range(VIDEOS)})):
        final = committed(out, stage)
        assert final["complete"] and len(final["shards"]) == final["num_shards"]
        key = "caption_id" if stage == "text_skeletons" else "video_id"
        ids = ds.dataset(out / stage / final["version"], format="parquet").to_table(columns=[key])[key].to_pylist()
        assert sorted(ids) == sorted(expected), stage  # each exactly once
    final = committed(out, "text_skeletons")
    for name, record in killed["shards"].items():  # committed before the kill: never redone
        assert final["shards"][name]["committed"] == record["committed"], name
    report = verify_outputs(str(out))
    assert report.ok, report.render()

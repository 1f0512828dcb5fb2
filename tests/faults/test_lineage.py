"""Versions move only for a reason, and a run reads exactly the inputs its config determines.

Real (tiny) videos through probe and keyframes with `run_pipeline`, on the session's Ray.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from pipeline.cli import main
from pipeline.demo import synth
from pipeline.flow import DatasetConfig, RunConfig, output_status, run_pipeline, verify_outputs
from pipeline.run.runner import RunnerConfig
from pipeline.store.status import render
from pipeline.store.storage import Store
from pipeline.store.version import DamagedOutputError, InputNotReadyError, latest

CLIPS = ("a", "b", "c")

# The stages these tests are about; the feature stages would load CLIP from a hub.
DECODING = ["probe", "keyframes"]


@pytest.fixture(scope="module")
def clip_pool(tmp_path_factory) -> Path:
    pool = tmp_path_factory.mktemp("pool")
    for name in (*CLIPS, "late"):
        synth.make_clip(pool / f"{name}.mp4", seconds=1, width=160, height=96, fps=10)
    return pool


def _dataset(folder: Path, pool: Path, present=CLIPS) -> Path:
    """A generic dataset of a, b, c and `late` (whose file exists only if listed in `present`)."""
    videos = folder / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    for name in present:
        shutil.copy(pool / f"{name}.mp4", videos / f"{name}.mp4")
    with (folder / "captions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video_id", "path", "caption"])
        for name in (*CLIPS, "late"):
            writer.writerow([name, f"{name}.mp4", f"clip {name}"])
    return folder


def _config(out: Path, data: Path, **keyframes) -> RunConfig:
    from pipeline import config as config_lib

    cfg = RunConfig(out=str(out), dataset=DatasetConfig(format="generic", annotations=str(data / "captions.csv"),
                                                        videos=str(data / "videos")),
                    runner=RunnerConfig(rows_per_shard=2, progress=False))
    if keyframes:
        overrides = [f"keyframes.{k}={v}" for k, v in keyframes.items()]
        cfg = config_lib.build(RunConfig, config_lib.apply_overrides(config_lib.to_dict(cfg), overrides,
                                                                      RunConfig))
    return cfg


def _versions(results) -> dict[str, str]:
    return {r.stage: r.version for r in results}


def _quiet(*_):
    pass


def test_moving_the_dataset_folder_changes_no_version(tmp_path, clip_pool, ray_session):
    data = _dataset(tmp_path / "here", clip_pool)
    out = tmp_path / "out"
    first = run_pipeline(_config(out, data), stages=DECODING, report=_quiet)
    moved = tmp_path / "elsewhere"
    data.rename(moved)
    again = run_pipeline(_config(out, moved), stages=DECODING, report=_quiet)
    assert _versions(again) == _versions(first)
    assert all(r.up_to_date for r in again)
    videos = latest(Store.open(str(out)), "videos")
    for table in ("videos", "captions", "manifest"):  # the problems name no absolute path either
        assert len([p for p in (out / table).iterdir() if p.is_dir()]) == 1, table
    assert videos.manifest()["root"] == str(moved / "videos")


def test_a_video_turning_up_leaves_caption_versions_alone(tmp_path, clip_pool, ray_session):
    out = tmp_path / "out"
    data = _dataset(tmp_path / "data", clip_pool)
    printed: list[str] = []
    before = run_pipeline(_config(out, data), stages=DECODING, report=printed.append)
    shutil.copy(clip_pool / "late.mp4", data / "videos" / "late.mp4")
    after = run_pipeline(_config(out, data), stages=DECODING, report=printed.append)
    assert _versions(after)["probe"] != _versions(before)["probe"]  # video-side stages see the new video
    captions = sorted(p.name for p in (out / "captions").iterdir() if p.is_dir())
    assert len(captions) == 1  # the captions version did not move
    videos = sorted(p.name for p in (out / "videos").iterdir() if p.is_dir())
    assert len(videos) == 2


def test_stages_read_the_version_the_config_gives_not_latest(tmp_path, clip_pool, ray_session):
    out = tmp_path / "out"
    data = _dataset(tmp_path / "data", clip_pool)
    run_pipeline(_config(out, data), stages=DECODING, report=_quiet)
    shutil.copy(clip_pool / "late.mp4", data / "videos" / "late.mp4")  # new videos version
    # probe for the new videos is not computed; keyframes must not read the old probe via LATEST
    with pytest.raises(InputNotReadyError, match=r"reads probe \w+ \(the version this config gives\), which has no "
                                                 r"folder .* add it to --stages"):
        run_pipeline(_config(out, data), stages=["keyframes"], report=_quiet)
    results = run_pipeline(_config(out, data), stages=["probe", "keyframes"], report=_quiet)
    assert [r.stage for r in results] == ["probe", "keyframes"] and results[1].items == 4


def test_rerunning_an_old_config_does_not_move_latest(tmp_path, clip_pool, ray_session):
    out = tmp_path / "out"
    data = _dataset(tmp_path / "data", clip_pool)
    old = _versions(run_pipeline(_config(out, data), stages=DECODING, report=_quiet))["keyframes"]
    vlm = _config(out, data, **{"sampling.strategy": "vlm"})
    new = _versions(run_pipeline(vlm, stages=DECODING, report=_quiet))["keyframes"]
    assert (out / "keyframes" / "LATEST").read_text().strip() == new
    rerun = run_pipeline(_config(out, data), stages=DECODING, report=_quiet)
    assert rerun[-1].up_to_date and rerun[-1].version == old
    assert (out / "keyframes" / "LATEST").read_text().strip() == new  # the newest complete one still
    table = render(output_status(str(out)))
    assert "sampling.strategy=vlm" in table and "sampling.strategy=uniform" in table  # what tells them apart


@pytest.mark.leaves_damage
def test_a_truncated_upstream_part_is_named_not_turned_into_failures(tmp_path, clip_pool, ray_session):
    out = tmp_path / "out"
    data = _dataset(tmp_path / "data", clip_pool)
    run_pipeline(_config(out, data), stages=["probe"], report=_quiet)
    probe = (out / "probe" / "LATEST").read_text().strip()
    part = out / "probe" / probe / "part-00001.parquet"
    part.write_bytes(part.read_bytes()[:-200])
    with pytest.raises(DamagedOutputError, match=f"{part}: committed part has"):
        run_pipeline(_config(out, data), stages=["keyframes"], report=_quiet)
    assert not (out / "keyframes").exists()  # no upstream_failed rows were made of the lost rows
    assert "DAMAGED" in render(output_status(str(out)))  # status reports it instead of crashing
    assert not verify_outputs(str(out)).ok


def test_cli_errors_are_one_line_with_exit_codes(tmp_path, clip_pool, ray_session, capsys):
    out = tmp_path / "out"
    data = _dataset(tmp_path / "data", clip_pool)
    config = tmp_path / "run.yaml"
    config.write_text(f"out: {out}\ndataset: {{format: generic, annotations: {data}/captions.csv, "
                      f"videos: {data}/videos}}\nrunner: {{rows_per_shard: 2, progress: false}}\n")
    assert main(["run", str(config), "--stages", "probe"]) == 0
    probe = (out / "probe" / "LATEST").read_text().strip()
    (out / "probe" / probe / "_manifest.json").write_text("{not json")
    capsys.readouterr()
    assert main(["run", str(config), "--stages", "probe"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "_manifest.json is damaged" in err and "--repair" in err
    with pytest.raises(DamagedOutputError):  # --debug: the traceback instead of the one line
        main(["run", str(config), "--stages", "probe", "--debug"])
    assert main(["verify", str(out), "--repair"]) == 0
    assert main(["run", str(config), "--stages", "probe"]) == 0
    # run on the existing manifest, without the annotations
    (tmp_path / "bare.yaml").write_text(f"out: {out}\nrunner: {{rows_per_shard: 2, progress: false}}\n")
    capsys.readouterr()
    assert main(["run", str(tmp_path / "bare.yaml"), "--manifest", "latest", "--stages", "probe"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["run", str(tmp_path / "bare.yaml"), "--manifest", "0123456789ab"]) == 2
    assert "no complete manifest 0123456789ab" in capsys.readouterr().err

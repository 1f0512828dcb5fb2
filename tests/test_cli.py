"""End to end through the command line: `tvr demo`, `tvr status`, `tvr manifest`, `tvr run`."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import yaml
from PIL import Image

from pipeline.cli import main
from pipeline.demo.end_to_end import DEMO_CLIPS
from pipeline.flow import output_status
from pipeline.stages import STAGES


def _tvr(*argv: str) -> tuple[int, str]:
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        code = main(list(argv))
    return code, buffer.getvalue()


# demo_out: conftest.py, one `tvr demo` for the session (test_docs_commands reads it too).


def _latest(out: Path, stage: str) -> str:
    return (out / stage / "LATEST").read_text().strip()


def test_demo_leaves_readable_parquet_with_every_video_accounted_for(demo_out):
    version = _latest(demo_out, "keyframes")
    frames = ds.dataset(demo_out / "keyframes" / version, format="parquet").to_table().to_pylist()
    failures = ds.dataset(demo_out / "failures" / "keyframes" / version, format="parquet").to_table()
    assert sorted(r["video_id"] for r in frames) == sorted(DEMO_CLIPS)
    reasons = dict(zip(failures["item_id"].to_pylist(), failures["reason"].to_pylist()))
    assert reasons == {"zero_bytes": "upstream_failed", "never_downloaded": "upstream_failed"}
    by_id = {r["video_id"]: r for r in frames}
    for row in frames:
        assert len(row["frames"]) == len(row["frame_indices"]) == len(row["timestamps"]) == 12
        image = Image.open(io.BytesIO(row["frames"][0]))
        assert image.format == "JPEG" and image.size == (row["width"], row["height"])
        assert min(image.size) == 224
    assert by_id["portrait_rotated"]["height"] > by_id["portrait_rotated"]["width"]
    assert by_id["very_short"]["repeated_frames"] is True
    assert by_id["bars_h264"]["repeated_frames"] is False

    probe_version = _latest(demo_out, "probe")
    probe_failures = ds.dataset(demo_out / "failures" / "probe" / probe_version, format="parquet").to_table()
    assert dict(zip(probe_failures["item_id"].to_pylist(), probe_failures["reason"].to_pylist())) == {
        "zero_bytes": "empty", "never_downloaded": "missing"}
    problems = ds.dataset(demo_out / "manifest" / _latest(demo_out, "manifest")).to_table()
    assert ("missing_video", "never_downloaded") in zip(problems["problem"].to_pylist(), problems["id"].to_pylist())


def test_status_is_accurate(demo_out):
    code, printed = _tvr("status", str(demo_out))
    assert code == 0
    statuses = {s.stage: s for s in output_status(str(demo_out))}
    assert set(statuses) == {"manifest", "videos", "captions", *STAGES}
    for stage in ("probe", "keyframes"):
        s = statuses[stage]
        rows = ds.dataset(demo_out / stage / s.version, format="parquet").count_rows()
        fails = ds.dataset(demo_out / "failures" / stage / s.version, format="parquet").count_rows()
        assert (s.rows, s.failures, s.items) == (rows, fails, rows + fails)
        assert s.complete and s.latest and s.shards_committed == s.shards_planned == 5
        width = max(len(name) for name in statuses)  # the longest stage name sets the column
        assert f"\n{stage:<{width}} {s.version}" in printed
    assert (statuses["videos"].items, statuses["videos"].rows) == (10, 10)
    assert (statuses["captions"].items, statuses["captions"].rows) == (10, 10)
    assert statuses["manifest"].rows == 1  # the one problem: a caption whose video is missing


def test_verify_passes_on_the_demo_output(demo_out):
    code, printed = _tvr("verify", str(demo_out))
    assert code == 0, printed
    assert printed.strip().endswith("items") and ": OK;" in printed


def test_demo_rerun_recomputes_nothing(demo_out):
    before = json.loads((demo_out / "keyframes" / _latest(demo_out, "keyframes") / "_manifest.json").read_text())
    code, printed = _tvr("demo", "--out", str(demo_out))
    assert code == 0
    assert printed.count("up to date") == len(STAGES), printed
    after = json.loads((demo_out / "keyframes" / _latest(demo_out, "keyframes") / "_manifest.json").read_text())
    assert after == before


def test_demo_features_equal_the_model_called_directly(demo_out):
    from test_features import _direct_image_features

    model = str(demo_out / "models" / "tiny-clip")
    frames = ds.dataset(demo_out / "keyframes" / _latest(demo_out, "keyframes")).to_table().to_pylist()
    features = ds.dataset(demo_out / "frame_features" / _latest(demo_out, "frame_features")).to_table()
    by_id = {r["video_id"]: r for r in features.to_pylist()}
    assert sorted(by_id) == sorted(DEMO_CLIPS)
    for row in frames:
        expected = _direct_image_features(model, row["frames"])
        np.testing.assert_allclose(np.array(by_id[row["video_id"]]["features"], np.float32), expected,
                                   rtol=2e-3, atol=2e-3)
    texts = ds.dataset(demo_out / "text_features" / _latest(demo_out, "text_features")).to_table()
    assert texts.num_rows == len(DEMO_CLIPS) + 2  # every caption, even of a video that is missing


def test_run_with_override_makes_a_new_version_beside_the_old(demo_out, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(
        f"out: {demo_out}\n"
        f"dataset: {{format: generic, annotations: {demo_out}/data/captions.csv, videos: {demo_out}/data/videos}}\n"
        "runner: {rows_per_shard: 4, progress: false}\n"
        f"frame_features: {{model: {demo_out}/models/tiny-clip}}\n"
        f"text_features: {{model: {demo_out}/models/tiny-clip, run: {{batch_size: 3}}}}\n"
    )
    old = _latest(demo_out, "keyframes")
    old_features = _latest(demo_out, "frame_features")
    code, printed = _tvr("run", str(config), "--set", "keyframes.sampling.strategy=vlm",
                         "--set", "keyframes.short_side=96",
                         "--stages", "probe", "keyframes", "frame_features", "text_features")
    assert code == 0, printed
    new = _latest(demo_out, "keyframes")
    assert new != old and (demo_out / "keyframes" / old / "_manifest.json").exists()
    rows = ds.dataset(demo_out / "keyframes" / new, format="parquet").to_table().to_pylist()
    assert {r["strategy"] for r in rows} == {"vlm"} and all(len(r["frames"]) == 8 for r in rows)
    assert all(min(r["width"], r["height"]) == 96 for r in rows)
    # New keyframes, so new frame features; the captions did not change, nor did text_features
    # (its run settings did, which are not part of its version).
    assert _latest(demo_out, "frame_features") != old_features
    up_to_date = {line.split()[0] for line in printed.splitlines() if ": up to date" in line}
    assert up_to_date == {"probe", "text_features"}, printed


def test_bad_config_value_is_a_clear_error(demo_out, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(f"out: {tmp_path}/o\n")
    assert main(["run", str(config), "--set", "keyframes.sampling.num_frame=3"]) == 2
    assert "unknown config key 'keyframes.sampling.num_frame'; did you mean" in capsys.readouterr().err


def test_manifest_command_writes_versioned_tables(demo_out, tmp_path):
    code, printed = _tvr("manifest", "generic", "--annotations", str(demo_out / "data" / "captions.csv"),
                         "--videos", str(demo_out / "data" / "videos"), "--out", str(tmp_path / "m"))
    assert code == 0, printed
    assert "missing_video: never_downloaded" in printed
    version = _latest(tmp_path / "m", "manifest")
    videos = ds.dataset(tmp_path / "m" / "videos" / _latest(tmp_path / "m", "videos")).to_table()
    assert videos.num_rows == 10
    assert "bars_h264.mp4" in videos["path"].to_pylist()  # relative to the video root
    # Same annotations, same content, same version.
    assert _tvr("manifest", "generic", "--annotations", str(demo_out / "data" / "captions.csv"),
                "--videos", str(demo_out / "data" / "videos"), "--out", str(tmp_path / "m"))[0] == 0
    assert [p.name for p in (tmp_path / "m" / "manifest").iterdir() if p.is_dir()] == [version]


def test_editing_a_prompt_recomputes_only_its_tag_stage(demo_out, tmp_path):
    import shutil

    import yaml

    from pipeline.config import to_dict
    from pipeline.demo.end_to_end import demo_config
    from pipeline.engines.prompts import DEFAULT_FOLDER

    prompts = tmp_path / "prompts"
    shutil.copytree(DEFAULT_FOLDER, prompts)
    template = prompts / "macvr_textual_tags.j2"
    template.write_text(template.read_text().replace("top 10 general tags", "top 5 general tags"))
    config = to_dict(demo_config(demo_out))
    config["textual_tags"]["prompts_folder"] = str(prompts)
    config["runner"]["progress"] = False
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(config))
    before = {stage: _latest(demo_out, stage) for stage in STAGES}
    code, printed = _tvr("run", str(path))
    assert code == 0, printed
    up_to_date = {line.split()[0] for line in printed.splitlines() if ": up to date" in line}
    assert up_to_date == set(STAGES) - {"textual_tags"}, printed
    after = {stage: _latest(demo_out, stage) for stage in STAGES}
    assert after["textual_tags"] != before["textual_tags"]
    rows = ds.dataset(demo_out / "textual_tags" / after["textual_tags"]).to_table().to_pylist()
    assert {r["prompt_sha256"] for r in rows} == {__import__("hashlib").sha256(template.read_bytes()).hexdigest()}


def test_demo_tags_every_video_and_caption_at_four_temperatures(demo_out):
    for stage, ids in (("visual_tags", set(DEMO_CLIPS)), ("textual_tags", None)):
        version = _latest(demo_out, stage)
        rows = ds.dataset(demo_out / stage / version).to_table().to_pylist()
        failures = ds.dataset(demo_out / "failures" / stage / version).to_table().to_pylist()
        by_item: dict[str, set] = {}
        for row in rows:
            by_item.setdefault(row["item_id"], set()).add(row["temperature"])
            assert row["raw_output"] is not None and row["finish_reason"] in ("stop", "length")
        assert all(temps == {0.7, 0.8, 0.9, 1.0} for temps in by_item.values())
        if ids is not None:  # videos without frames fail once per temperature, upstream
            assert set(by_item) == ids
            assert sorted(f["item_id"] for f in failures) == sorted(
                f"{v}@t{t:g}" for v in ("zero_bytes", "never_downloaded") for t in (0.7, 0.8, 0.9, 1.0))
            assert {f["reason"] for f in failures} == {"upstream_failed"}
        else:
            assert len(by_item) == len(DEMO_CLIPS) + 2 and not failures


def test_demo_ends_with_a_short_training_run(demo_out):
    lines = (demo_out / "train" / "metrics.json").read_text()
    assert (demo_out / "train" / "checkpoint.pt").exists() and (demo_out / "train" / "config.yaml").exists()
    trained = yaml.safe_load((demo_out / "train" / "config.yaml").read_text())
    assert trained["model"]["head"] == "macvr" and trained["data"]["tags"] is True  # the tag stages feed the model
    code, printed = _tvr("eval", str(demo_out / "train"))
    assert code == 0, printed
    for direction in ("t2v", "v2t"):
        for strategy in ("none", "dsl", "qbnorm"):
            assert f"{direction} {strategy}" in printed and strategy in lines


@pytest.mark.parametrize("command", [["status"], ["verify"], ["stats"], ["export-tags", "DEST"]])
def test_commands_on_an_output_folder_that_is_not_there_say_so_in_one_line(tmp_path, capsys, command):
    missing = str(tmp_path / "nowhere")
    argv = [command[0], missing, *[str(tmp_path / a) for a in command[1:]]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"tvr {command[0]}: error: {missing} does not exist\n"

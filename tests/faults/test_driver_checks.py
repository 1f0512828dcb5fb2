"""What the driver can check before any worker starts: each selected stage's model, engine and
device (`Stage.check`, `flow.check_stages`), and ffmpeg for `tvr demo`. A bad value fails in one
line naming the key, exit 2 (1 for a missing tool), before anything is written: no output folder,
no manifest, no partial version. No Ray is started here: every case fails in the checks."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest
from test_invalid_config import JOB_YAML

from pipeline import cli, config
from pipeline.config import ConfigError
from pipeline.engines import check_engine
from pipeline.engines.config import PluginEngineConfig
from pipeline.flow import RunConfig
from pipeline.flow.whole_run import check_stages
from pipeline.models.identity import check_model, checkpoint_identity
from pipeline.run.stage import ModelRunSettings, check_device


@pytest.fixture
def job(tmp_path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(JOB_YAML.format(out=tmp_path / "out", root=tmp_path))
    return path


def _run(job: Path, capsys, *overrides: str, stages: tuple[str, ...] = ()) -> tuple[int, str]:
    args = ["run", str(job), *[a for o in overrides for a in ("--set", o)]]
    code = cli.main(args + (["--stages", *stages] if stages else []))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tvr run: error: "), err  # one line, no traceback
    assert not (job.parent / "out").exists()  # checked before anything was written, the manifest included
    return code, err


@pytest.mark.parametrize(("overrides", "expected"), [
    (["frame_features.model=/nonexistent"], "frame_features.model='/nonexistent': no such folder, and not a "
                                            "Hugging Face hub id"),
    (["text_features.model=a/b/c"], "text_features.model='a/b/c': no such folder"),
    (["frame_features.run.device=cuda:99"], "frame_features.run.device='cuda:99'"),
    (["text_features.run.device=gpu"], "text_features.run.device='gpu' is not a device"),
    (["visual_tags.engine.backend=plugin", "visual_tags.engine.plugin=nosuchmod:X"],
     "visual_tags.engine.plugin='nosuchmod:X': no module named 'nosuchmod'"),
    (["visual_tags.engine.backend=plugin", "visual_tags.engine.plugin=badform"],
     "visual_tags.engine.plugin='badform': name it as 'package.module:ClassName'"),
    (["textual_tags.engine.backend=plugin", "textual_tags.engine.plugin=json:NoClass"],
     "textual_tags.engine.plugin='json:NoClass': module 'json' has no 'NoClass'"),
    (["textual_tags.engine.backend=openai"], "textual_tags.engine.model is empty"),
    (["visual_tags.engine.model=/nonexistent/vlm"], "visual_tags.engine.model='/nonexistent/vlm'"),
    (["textual_tags.prompt=no_such_prompt"], "no_such_prompt"),
])
def test_a_bad_value_fails_on_the_driver_before_anything_is_written(job, capsys, overrides, expected):
    code, err = _run(job, capsys, *overrides)
    assert code == 2 and expected in err


def test_a_bad_model_in_a_later_stage_stops_the_run_before_the_first_stage(job, capsys):
    # Only the selected stages are checked; the first selected stage (probe) would otherwise run first.
    code, err = _run(job, capsys, "text_features.model=/nonexistent", stages=("probe", "text_features"))
    assert code == 2 and "text_features.model" in err
    # A stage not selected is not checked: the run goes on, here to the annotations that are not there.
    assert cli.main(["run", str(job), "--set", "text_features.model=/nonexistent", "--stages", "probe"]) == 2
    assert "annotations.csv" in capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_without_the_extra_fails_before_any_version_is_written(job, capsys):
    code, err = _run(job, capsys, "visual_tags.engine.backend=vllm", "visual_tags.engine.model=org/model")
    assert code == 2 and "visual_tags.engine.backend='vllm'" in err and "[gpu] extra" in err


def test_the_checks_pass_a_valid_config(job, tiny_clip, tiny_lm, tiny_vlm, monkeypatch, tmp_path):
    cfg = config.load(RunConfig, job, [
        f"frame_features.model={tiny_clip}", f"text_features.model={tiny_clip}", "frame_features.run.device=cpu",
        f"visual_tags.engine.model={tiny_vlm}", "textual_tags.engine.backend=plugin",
        "textual_tags.engine.plugin=echo_plugin:EchoEngine", "textual_tags.engine.model=anything",
        "textual_tags.engine.options={prefix: x}"])
    check_stages(cfg)
    check_stages(cfg, ["probe"])
    assert not (tmp_path / "out").exists()


def test_a_model_folder_needs_a_config_json(tmp_path, tiny_clip):
    check_model("m", tiny_clip)
    check_model("m", "openai/clip-vit-base-patch32")  # a hub id's form: whether the hub has it is for later
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"^config value m='.*empty': the folder has no config.json"):
        check_model("m", str(tmp_path / "empty"))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ConfigError, match="is a file; name the checkpoint's folder"):
        check_model("m", str(tmp_path / "weights.bin"))
    with pytest.raises(ConfigError, match="^m is empty"):
        check_model("m", "")


def test_a_path_that_is_no_hub_id_is_a_config_error_in_the_version_too():
    # Not only the check: a stage whose version is computed without it (an unselected input) says so too.
    with pytest.raises(ConfigError, match="'/nonexistent' is not a local folder"):
        checkpoint_identity("/nonexistent", None)


@pytest.mark.parametrize(("device", "num_gpus", "visible", "problem"), [
    ("cuda:1", 0, 2, None),
    ("cuda:2", 0, 2, "this machine has 2 CUDA devices"),
    ("cuda", 0, 0, "this machine has no CUDA device"),
    ("cuda:1", 1, None, "each worker sees only the 1 GPU(s)"),  # Ray narrows CUDA_VISIBLE_DEVICES
    ("cuda:1", 2, None, None),  # a cluster: the driver's GPUs say nothing of the workers'
    ("auto", 0, 0, None),
    ("cpu", 1, 0, None),
    ("cuda:-1", 0, 2, "is not a device"),
])
def test_the_device_fits_the_machine_and_the_worker(device, num_gpus, visible, problem):
    settings = ModelRunSettings(device=device, num_gpus=num_gpus)
    if problem is None:
        check_device("s.run.device", settings, visible)
    else:
        with pytest.raises(ConfigError, match=f"^config value s.run.device={device!r}.*{re.escape(problem)}"):
            check_device("s.run.device", settings, visible)


def test_a_plugin_check_builds_nothing():
    from echo_plugin import EchoEngine

    built = EchoEngine.built
    check_engine("e", PluginEngineConfig(plugin="echo_plugin:EchoEngine", model="m", options={"prefix": "p"}))
    with pytest.raises(ConfigError, match=r"^config value e.plugin='echo_plugin:EchoEngine': cannot be built"):
        check_engine("e", PluginEngineConfig(plugin="echo_plugin:EchoEngine", model="m", options={"colour": 1}))
    assert EchoEngine.built == built


def test_demo_without_ffmpeg_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert cli.main(["demo", "--out", str(tmp_path / "demo")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tvr demo: error: ffmpeg and ffprobe not found on PATH")
    assert "sudo apt-get install ffmpeg" in err and "brew install ffmpeg" in err
    assert not (tmp_path / "demo").exists()

"""Invalid config values fail when the config loads, in one line naming the dotted key, before any
work; `--set` switching the sampling strategy drops the YAML's fields of the old strategy."""

from __future__ import annotations

import pytest

from pipeline import cli, config
from pipeline.config import ConfigError
from pipeline.decode.sampling import Fps, Uniform, Vlm
from pipeline.flow import RunConfig

# A run over a generic dataset: OUT and the dataset's folder left to fill in.
JOB_YAML = """\
out: {out}
dataset:
  format: generic
  annotations: {root}/annotations.csv
  videos: {root}/videos
"""

YAML = JOB_YAML + """\
runner:
  rows_per_shard: 16
keyframes:
  sampling: {{strategy: uniform, num_frames: 12}}
  short_side: 224
"""


@pytest.fixture
def yaml_path(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(YAML.format(out=tmp_path / "out", root=tmp_path))
    return path


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("keyframes.sampling.num_frames=0",
         "config value keyframes.sampling.num_frames=0 is out of range: must be >= 1"),
        ("runner.rows_per_shard=0", "config value runner.rows_per_shard=0 is out of range: must be >= 1"),
        ("runner.max_workers=0", "config value runner.max_workers=0 is out of range: must be >= 1"),
        ("keyframes.jpeg_quality=500",
         "config value keyframes.jpeg_quality=500 is out of range: must be between 1 and 100"),
        ("keyframes.short_side=-5", "config value keyframes.short_side=-5 is out of range: must be >= 0"),
    ],
)
def test_out_of_range_value_is_refused_on_load(yaml_path, override, message):
    with pytest.raises(ConfigError) as caught:
        config.load(RunConfig, yaml_path, [override])
    assert str(caught.value) == message


def test_max_workers_may_be_left_unset(yaml_path):
    assert config.load(RunConfig, yaml_path, ["runner.max_workers=null"]).runner.max_workers is None
    assert config.load(RunConfig, yaml_path, ["runner.max_workers=1"]).runner.max_workers == 1


def test_out_of_range_value_in_the_yaml_file_is_refused(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("keyframes:\n  sampling: {strategy: fps, rate: 0}\n")
    with pytest.raises(ConfigError, match=r"^config value keyframes.sampling.rate=0.0 is out of range: must be > 0$"):
        config.load(RunConfig, path)


def test_switching_strategy_drops_the_yaml_fields_of_the_old_one(yaml_path):
    cfg = config.load(RunConfig, yaml_path, ["keyframes.sampling.strategy=fps"])
    assert cfg.keyframes.sampling == Fps()
    cfg = config.load(RunConfig, yaml_path, ["keyframes.sampling.strategy=fps", "keyframes.sampling.rate=2"])
    assert cfg.keyframes.sampling == Fps(rate=2.0)
    # num_frames is a vlm field too, but the YAML's 12 was chosen for uniform: vlm's default applies.
    assert config.load(RunConfig, yaml_path, ["keyframes.sampling.strategy=vlm"]).keyframes.sampling == Vlm()
    # The rest of the YAML is untouched, and the same strategy keeps its fields.
    assert cfg.keyframes.short_side == 224 and cfg.runner.rows_per_shard == 16
    cfg = config.load(RunConfig, yaml_path, ["keyframes.sampling.strategy=uniform"])
    assert cfg.keyframes.sampling == Uniform(num_frames=12)


def test_switching_strategy_keeps_what_the_user_typed(yaml_path):
    cfg = config.load(RunConfig, yaml_path, ["keyframes.sampling.num_frames=4", "keyframes.sampling.strategy=vlm"])
    assert cfg.keyframes.sampling == Vlm(num_frames=4)
    # A field the new strategy lacks, typed on the command line, is the user's mistake to hear about.
    with pytest.raises(ConfigError, match=r"^unknown config key 'keyframes.sampling.num_frames'"):
        config.load(RunConfig, yaml_path, ["keyframes.sampling.num_frames=4", "keyframes.sampling.strategy=fps"])


def test_cli_reports_one_line_naming_the_key_before_any_work(yaml_path, tmp_path, capsys):
    code = cli.main(["run", str(yaml_path), "--set", "keyframes.jpeg_quality=500"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (
        "tvr run: error: config value keyframes.jpeg_quality=500 is out of range: must be between 1 and 100\n"
    )
    assert not (tmp_path / "out").exists()  # nothing was started, not even the output folder


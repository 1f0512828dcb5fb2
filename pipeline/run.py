"""A whole run: the dataset manifest, then each selected stage in order, all under one OUT folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import config as config_lib
from pipeline import outputs
from pipeline.runner import RunnerConfig, StageResult, run_stage
from pipeline.stage import StageOutput
from pipeline.stages import STAGES
from pipeline.stages.keyframes import KeyframesConfig
from pipeline.stages.probe import ProbeConfig
from pipeline.storage import Store


@dataclass
class DatasetConfig:
    format: str = "generic"
    annotations: str = ""  # the folder of released annotation files, or the single file
    videos: str = ""  # the root under which video files are found by id
    options: dict[str, Any] = field(default_factory=dict)  # the format's own options


@dataclass
class RunConfig:
    out: str = "runs/out"
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    keyframes: KeyframesConfig = field(default_factory=KeyframesConfig)


def build_and_write_manifest(store: Store, dataset: DatasetConfig) -> tuple[StageOutput, Any]:
    """Read the annotations, find the videos, write the manifest version; returns it and the tables."""
    from pipeline.datasets import FORMATS, build_manifest

    if dataset.format not in FORMATS:
        raise config_lib.ConfigError(
            f"config value dataset.format={dataset.format!r} is not one of: {', '.join(FORMATS)}"
        )
    if not dataset.annotations or not dataset.videos:
        raise config_lib.ConfigError("dataset.annotations and dataset.videos must both be set")
    options = config_lib.build(FORMATS[dataset.format].options, dataset.options, "dataset.options")
    manifest = build_manifest(dataset.format, Path(dataset.annotations), Path(dataset.videos), options)
    tables = {"videos": manifest.videos, "captions": manifest.captions, "problems": manifest.problems}
    source = {"format": dataset.format, "annotations": str(Path(dataset.annotations).resolve()),
              "videos": str(Path(dataset.videos).resolve()), "options": config_lib.to_dict(options)}
    return outputs.write_dataset_manifest(store, tables, source), manifest


def run_pipeline(cfg: RunConfig, stages: list[str] | None = None, report=print) -> list[StageResult]:
    """Run the selected stages (all by default) in order; returns one result per stage run."""
    unknown = [name for name in stages or [] if name not in STAGES]
    if unknown:
        raise config_lib.ConfigError(f"unknown stage {unknown[0]!r}; stages are: {', '.join(STAGES)}")
    store = Store.open(cfg.out)
    manifest_output, manifest = build_and_write_manifest(store, cfg.dataset)
    report(describe_manifest(manifest_output, manifest))
    done: dict[str, StageOutput] = {"manifest": manifest_output}
    results = []
    for name, stage in STAGES.items():
        if stages and name not in stages:
            continue
        inputs = {}
        for needed in stage.inputs:
            found = done.get(needed) or outputs.latest(store, needed)
            if found is None:
                raise RuntimeError(
                    f"stage {name} reads {needed}, which has no complete version in {cfg.out}; "
                    f"run it first or add it to --stages"
                )
            inputs[needed] = found
        result = run_stage(store, stage, getattr(cfg, name), inputs, cfg.runner)
        report(result.summary())
        done[name] = StageOutput(name, result.version)
        results.append(result)
    return results


def describe_manifest(output: StageOutput, manifest, shown: int = 20) -> str:
    problems = manifest.problems
    lines = [f"manifest {output.version}: {manifest.videos.num_rows} videos, "
             f"{manifest.captions.num_rows} captions, {problems.num_rows} problems"]
    for row in problems.slice(0, shown).to_pylist():
        lines.append(f"  {row['problem']}: {row['id']}: {row['detail']}")
    if problems.num_rows > shown:
        lines.append(f"  ... and {problems.num_rows - shown} more in "
                     f"{output.path}/problems.parquet")
    return "\n".join(lines)

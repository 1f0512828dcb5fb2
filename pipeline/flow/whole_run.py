"""A whole run: the dataset manifest, then each selected stage in order, all under one OUT folder.

Every stage's version follows from the config: the manifest's videos and captions versions, then
each stage's identity over its inputs' versions. A stage not selected with `--stages` is not
run, but its version is still computed, and a selected stage reads exactly that version (never
whatever LATEST points at, which may come from another config).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline import config as config_lib
from pipeline.datasets import FORMATS, build_manifest
from pipeline.run.runner import RunnerConfig, StageResult, run_stage, stage_version
from pipeline.run.stage import check_device, run_settings
from pipeline.stages import STAGES
from pipeline.store import status as status_lib
from pipeline.store import verify as verify_lib
from pipeline.store.dataset_manifest import (
    TABLES,
    ManifestOutputs,
    read_dataset_manifest,
    relative_paths,
    write_dataset_manifest,
)
from pipeline.store.storage import Store
from pipeline.store.version import Version


@dataclass
class DatasetConfig:
    format: str = "generic"
    annotations: str = ""  # the folder of released annotation files, or the single file
    videos: str = ""  # the root under which video files are found by id
    options: dict[str, Any] = field(default_factory=dict)  # the format's own options
    # An existing manifest version in OUT (or "latest") to run on instead of reading annotations;
    # `videos` then only says where the videos are now, if they moved.
    manifest: str = ""


# The run's config: where, which dataset, how to run, then one section per stage (its config
# dataclass, named after it), so a new stage module needs no edit here.
RunConfig = dataclasses.make_dataclass(
    "RunConfig",
    [("out", str, field(default="runs/out")),
     ("dataset", DatasetConfig, field(default_factory=DatasetConfig)),
     ("runner", RunnerConfig, field(default_factory=RunnerConfig)),
     *[(name, stage.config_type, field(default_factory=stage.config_type)) for name, stage in STAGES.items()]],
)
RunConfig.__module__ = __name__  # pickled by name (Ray); make_dataclass's own argument is 3.12+


def build_and_write_manifest(store: Store, dataset: DatasetConfig) -> tuple[ManifestOutputs, Any]:
    """Read the annotations, find the videos, write the manifest versions; returns them and the tables."""
    if dataset.format not in FORMATS:
        raise config_lib.ConfigError(
            f"config value dataset.format={dataset.format!r} is not one of: {', '.join(FORMATS)}"
        )
    if not dataset.annotations or not dataset.videos:
        raise config_lib.ConfigError("dataset.annotations and dataset.videos must both be set "
                                     "(or dataset.manifest, to run on an existing manifest)")
    options = config_lib.build(FORMATS[dataset.format].options, dataset.options, "dataset.options")
    manifest = build_manifest(dataset.format, Path(dataset.annotations), Path(dataset.videos), options)
    source = {"format": dataset.format, "annotations": str(Path(dataset.annotations).resolve()),
              "videos": str(Path(dataset.videos).resolve()), "options": config_lib.to_dict(options)}
    outputs = write_dataset_manifest(store, relative_paths(manifest.videos, dataset.videos), manifest.captions,
                                     manifest.problems, dataset.videos, source)
    return outputs, manifest


def run_pipeline(cfg, stages: list[str] | None = None, report=print) -> list[StageResult]:
    """Run the selected stages (all by default) in order; returns one result per stage run."""
    unknown = [name for name in stages or [] if name not in STAGES]
    if unknown:
        raise config_lib.ConfigError(f"unknown stage {unknown[0]!r}; stages are: {', '.join(STAGES)}")
    check_stages(cfg, stages)  # before anything is written: a bad last stage must not cost the first's hours
    store = Store.open(cfg.out)
    if cfg.dataset.manifest:
        manifest_outputs = read_dataset_manifest(store, cfg.dataset.manifest, cfg.dataset.videos or None)
        report(f"manifest {manifest_outputs.manifest.version}: existing (videos {manifest_outputs.videos.version}, "
               f"captions {manifest_outputs.captions.version}), videos under {manifest_outputs.videos.root}")
    else:
        manifest_outputs, manifest = build_and_write_manifest(store, cfg.dataset)
        report(describe_manifest(manifest_outputs, manifest))
    done: dict[str, Version] = manifest_outputs.as_inputs()
    results = []
    needed = _with_inputs(stages) if stages else set(STAGES)
    for name, stage in STAGES.items():
        if name not in needed:
            continue  # neither run nor read: its config (a model on a hub) is never looked at
        inputs = {input_name: done[input_name] for input_name in stage.inputs}
        stage_config = getattr(cfg, name)
        if stages and name not in stages:
            done[name] = Version(store, name, stage_version(stage, stage_config, inputs))
            continue
        result = run_stage(store, stage, stage_config, inputs, cfg.runner)
        report(result.summary())
        done[name] = Version(store, name, result.version)
        results.append(result)
    return results


def check_stages(cfg, stages: list[str] | None = None) -> None:
    """Every stage the run will compute, checked on the driver before any of them starts: its own
    `Stage.check` (models, engines, prompts) and its run settings' device. A one-line `ConfigError`
    naming the key; nothing loaded, nothing written."""
    selected = [name for name in STAGES if not stages or name in stages]
    settings = {name: run_settings(getattr(cfg, name)) for name in selected}
    visible_gpus = None  # on a cluster the driver's own GPUs say nothing about the workers'
    if not (cfg.runner.address or os.environ.get("RAY_ADDRESS")) and any(
            getattr(s, "device", "auto").startswith("cuda") for s in settings.values()):
        import torch

        visible_gpus = torch.cuda.device_count()
    for name in selected:
        STAGES[name].check(getattr(cfg, name))
        check_device(f"{name}.run.device", settings[name], visible_gpus)


def _with_inputs(stages: list[str]) -> set[str]:
    """The selected stages and every stage they read, directly or not."""
    found, waiting = set(), list(stages)
    while waiting:
        name = waiting.pop()
        if name in STAGES and name not in found:
            found.add(name)
            waiting.extend(STAGES[name].inputs)
    return found


def describe_manifest(outputs: ManifestOutputs, manifest, shown: int = 20) -> str:
    problems = manifest.problems
    lines = [f"manifest {outputs.manifest.version}: {manifest.videos.num_rows} videos "
             f"(version {outputs.videos.version}), {manifest.captions.num_rows} captions "
             f"(version {outputs.captions.version}), {problems.num_rows} problems"]
    for row in problems.slice(0, shown).to_pylist():
        lines.append(f"  {row['problem']}: {row['id']}: {row['detail']}")
    if problems.num_rows > shown:
        lines.append(f"  ... and {problems.num_rows - shown} more in {outputs.manifest.path}/")
    return "\n".join(lines)


# ---- reading a run's outputs back -----------------------------------------------------------------


def output_schemas() -> dict[str, pa.Schema | None]:
    """Every output this package writes, with its declared schema (None: it follows from the
    stage's config), for `tvr verify`."""
    schemas: dict[str, pa.Schema | None] = {name: schema for name, (schema, _) in TABLES.items()}
    schemas.update({name: None if callable(stage.schema) else stage.schema for name, stage in STAGES.items()})
    return schemas


def verify_outputs(out: str, stage: str | None = None, repair: bool = False) -> verify_lib.Report:
    """`tvr verify`: every output in `out` checked against its commit records and declared schema."""
    return verify_lib.verify(out, stage=stage, repair=repair, schemas=output_schemas())


def output_status(out: str) -> list[status_lib.VersionStatus]:
    """`tvr status`: every version in `out`, the manifest's outputs first, then stage order."""
    return status_lib.collect(out, order=["manifest", "videos", "captions", *STAGES])

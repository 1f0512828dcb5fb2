"""The stage contract: what every box of the pipeline declares so that one runner can execute it.

A stage processes *items* (a video, a caption) and promises exactly one result per item: an
output row that fits its schema, or a `Failure` saying why not. The runner owns everything
else: versions, sharding, parallelism on Ray, atomic commits, resume and provenance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import pyarrow as pa

from pipeline.config import ConfigError, bounds
from pipeline.store.version import Version


@dataclass(frozen=True)
class Failure:
    """An item the stage could not process; becomes a row in OUT/failures/<stage>/<version>/."""

    reason: str  # short code, e.g. "missing", "truncated", "decode_error"
    message: str  # for people: what happened, to which file


@dataclass
class RunSettings:
    """How a stage runs, per stage in its config section (`keyframes.run.workers=4`). Not part of
    the stage's version (moving a stage to a GPU or changing its batch size recomputes nothing);
    recorded in each Parquet file's provenance instead."""

    # Parallel workers of the stage's main step; None: as many as the cluster's CPUs (or GPUs) allow.
    workers: int | None = field(default=None, metadata=bounds(min=1))
    num_cpus: float = field(default=1.0, metadata=bounds(above=0))  # per worker
    # Per worker of the main step; above 0, the stage's steps stream across processes (CPU steps
    # on CPU workers feeding the GPU workers) instead of running one after the other in one.
    num_gpus: float = field(default=0.0, metadata=bounds(min=0))
    memory_gb: float | None = field(default=None, metadata=bounds(above=0))  # per worker, for Ray's scheduler
    batch_size: int = field(default=8, metadata=bounds(min=1))  # items per call of the main step
    rows_per_shard: int | None = field(default=None, metadata=bounds(min=1))  # None: runner.rows_per_shard


@dataclass
class ModelRunSettings(RunSettings):
    """Run settings of a stage that runs a model: where, and at what precision."""

    device: str = "auto"  # auto (cuda when there is one), cpu, cuda, cuda:N
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto: float16 on cuda, float32 on cpu


# Called once per batch of items (dicts); returns one result per item, in order: from the last
# step a row dict fitting the stage schema, from an earlier one the item to hand on; or a Failure.
BatchFn = Callable[[list[dict[str, Any]]], list["dict[str, Any] | Failure"]]


@dataclass(frozen=True)
class Step:
    """One step of a stage's work, run by Ray Data over each shard's items in batches.

    `setup(config)` runs once per worker, never on the driver (load models there), and returns
    the batch function; for a stage with a `context`, `setup(config, context)`. With
    `run.num_gpus` above 0 each step runs in its own pool of workers and shards stream from one
    step to the next, so JPEG decoding on CPU workers overlaps the model on GPU workers; without,
    a stage's steps run one after the other in the same worker.
    """

    name: str
    setup: Callable[..., BatchFn]
    # The step the stage's run settings size: `run.workers` workers with `run.num_cpus` and
    # `run.num_gpus` each, batches of `run.batch_size`. Other steps take one CPU per worker and a
    # whole shard per call.
    main: bool = True
    # True: workers are long-lived actors that keep what `setup` loaded (models). False: workers
    # are tasks whose processes are recycled after `runner.recycle_after_items` (decoders leak).
    stateful: bool = False
    # For a last step that can hand its work to a Ray Data transform of its own (Ray Data LLM's
    # vLLM processor): `dataset(config)` returns `transform(dataset, keep) -> dataset`, or None to
    # run the step's workers as usual. The transform gets one row per item (`workers.item_of(row)`)
    # and returns one row per item with the `keep` columns and its result (`workers.answered`).
    # For a stage with a `context`, `dataset(config, context)`.
    dataset: Callable[..., Callable[[Any, tuple[str, ...]], Any] | None] | None = None


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    key: str  # the item id column, e.g. "video_id"
    inputs: tuple[str, ...]  # outputs that decide this stage's rows ("videos", "probe", ...)
    config_type: type  # a dataclass whose `run: RunSettings` field the version leaves out
    schema: pa.Schema | Callable[[Any], pa.Schema]  # or built from the config (a model's dimension)
    # Builds the light item table (ids, paths, small metadata; never pixels) from the input versions.
    items: Callable[[Any, dict[str, Version]], pa.Table]
    steps: tuple[Step, ...]
    # Inputs every item needs a row of (matched on `key`), with the columns of that row the
    # workers read from the committed part files themselves (the driver holds only where each row
    # lies). An item without such a row fails as `upstream_failed`, with the upstream reason,
    # before any step sees it.
    # A dict of columns names the item's field for each (`{"skeleton": "text_skeleton"}`), so two
    # inputs' same-named columns can be read side by side.
    reads: dict[str, tuple[str, ...] | dict[str, str]] = field(default_factory=dict)
    # Things outside the config that decide the rows (model revision, prompt sha256, ...).
    identity: Callable[[Any], dict[str, Any]] = lambda config: {}
    # Recorded in each Parquet file but not part of the version (decoder versions, ...).
    provenance: Callable[[Any], dict[str, str]] = lambda config: {}
    # Runs on the driver before any stage of the run starts (so a bad model in the last stage
    # does not fail after hours of the first), cheaply: no weights loaded, nothing written.
    # Raises `ConfigError` in one line naming the config key (`frame_features.model`, ...).
    check: Callable[[Any], None] = lambda config: None
    # Small data every worker needs from the inputs as a whole rather than per item (a few KB: the
    # question clusters' representative questions and demonstrations), built once on the driver
    # from the input versions and handed to each step's `setup(config, context)`. It follows from
    # the config and the input versions, so it is not part of the version.
    context: Callable[[Any, dict[str, Version]], Any] | None = None

    def output_schema(self, config: Any) -> pa.Schema:
        return self.schema(config) if callable(self.schema) else self.schema

    @property
    def main_step(self) -> Step:
        return next(s for s in self.steps if s.main)

    def set_up(self, step: Step, config: Any, context: Any) -> BatchFn:
        """The step's batch function, given the context when the stage has one."""
        return step.setup(config, context) if self.context is not None else step.setup(config)


def check_device(key: str, settings: RunSettings, visible_gpus: int | None) -> None:
    """A model stage's `run.device`, checked on the driver: its form, and that a CUDA device it
    names can be there. `visible_gpus`: the CUDA devices this machine has, for a local run; None
    when the workers run on a cluster the driver cannot see into. A worker asking Ray for GPUs
    sees only its own (Ray narrows CUDA_VISIBLE_DEVICES to them), so `cuda:N` must also fit in
    `run.num_gpus`."""
    if not isinstance(settings, ModelRunSettings):
        return
    device = settings.device
    if device in ("auto", "cpu"):
        return
    if device != "cuda" and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise ConfigError(f"config value {key}={device!r} is not a device: expected auto, cpu, cuda or cuda:N")
    index = int(device[5:]) if ":" in device else 0
    if visible_gpus == 0:
        raise ConfigError(f"config value {key}={device!r}: this machine has no CUDA device (use auto or cpu)")
    if visible_gpus is not None and index >= visible_gpus:
        raise ConfigError(f"config value {key}={device!r}: this machine has {visible_gpus} CUDA device"
                          f"{'s' if visible_gpus != 1 else ''} (cuda:0 to cuda:{visible_gpus - 1})")
    if settings.num_gpus > 0 and index >= math.ceil(settings.num_gpus):
        raise ConfigError(f"config value {key}={device!r}: each worker sees only the "
                          f"{math.ceil(settings.num_gpus)} GPU(s) run.num_gpus={settings.num_gpus:g} gives it, "
                          "numbered from cuda:0")


def run_settings(config: Any) -> RunSettings:
    """A stage config's run settings (the class defaults for a config without any)."""
    return getattr(config, "run", None) or RunSettings()

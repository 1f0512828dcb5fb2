"""The stage contract: what every box of the pipeline declares so that one runner can execute it.

A stage processes *items* (a video, a caption) and promises exactly one result per item: an
output row that fits its schema, or a `Failure` saying why not. The runner owns everything
else: versions, sharding, parallelism on Ray, atomic commits, resume and provenance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import pyarrow as pa


@dataclass(frozen=True)
class Failure:
    """An item the stage could not process; becomes a row in OUT/failures/<stage>/<version>/."""

    reason: str  # short code, e.g. "missing", "truncated", "decode_error"
    message: str  # for people: what happened, to which file


@dataclass(frozen=True)
class Resources:
    """What one worker needs; Ray schedules workers by these."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory_gb: float | None = None


# Called once per batch of items (dicts with the columns of the stage's item table); returns one
# result per item, in order: a row dict fitting the stage schema, or a Failure.
BatchFn = Callable[[list[dict[str, Any]]], list["dict[str, Any] | Failure"]]


@dataclass(frozen=True)
class StageOutput:
    """A committed, complete version of a stage, as later stages and `tvr status` see it."""

    stage: str
    version: str
    # For the manifest's `videos`: the folder the stored relative paths are relative to. Not part
    # of any version, so a dataset moved elsewhere keeps its versions.
    root: str | None = field(default=None, compare=False)

    @property
    def path(self) -> str:
        """The folder, relative to the output root, holding the version's Parquet files."""
        return f"{self.stage}/{self.version}"


@dataclass(frozen=True)
class Stage:
    name: str
    description: str
    key: str  # the item id column, e.g. "video_id"
    inputs: tuple[str, ...]  # stages whose output decides this stage's rows ("manifest", ...)
    config_type: type
    schema: pa.Schema
    # Builds the light item table (ids, paths, small metadata; never pixels) from the inputs.
    items: Callable[[Any, dict[str, "InputReader"]], pa.Table]
    # Runs once per worker before any batch (load a model here, never on the driver).
    setup: Callable[[Any], BatchFn]
    resources: Resources = field(default_factory=Resources)
    batch_size: int = 8
    # True: workers are long-lived actors that keep what `setup` loaded (models).
    # False: workers are tasks, and processes are recycled (decoders leak memory).
    stateful: bool = False
    # Things outside the config that decide the rows (model revision, prompt sha256, ...).
    identity: Callable[[Any], dict[str, Any]] = lambda config: {}
    # Recorded in each Parquet file but not part of the version (decoder versions, ...).
    provenance: Callable[[Any], dict[str, str]] = lambda config: {}


class InputReader:
    """Reads the committed parts of an upstream version, and nothing else that may lie beside them."""

    def __init__(self, store, output: StageOutput):
        self.store = store
        self.output = output

    def table(self, columns: list[str] | None = None) -> pa.Table:
        return self._read(failures=False, columns=columns)

    def failures(self, columns: list[str] | None = None) -> pa.Table:
        return self._read(failures=True, columns=columns)

    def video_table(self, columns: list[str] | None = None) -> pa.Table:
        """The manifest's videos for workers: `path` made absolute under this run's video root, the
        stored `relative_path` beside it, and `video_root` itself (workers refuse files whose real
        path leaves it)."""
        table = self.table(columns)
        if "path" not in table.column_names:
            return table
        if self.output.root is None:
            raise ValueError(f"{self.output.path} is read without a video root")
        root = self.output.root.rstrip("/")
        relative = table.column("path")
        absolute = pa.array([None if p is None else f"{root}/{p}" for p in relative.to_pylist()], pa.string())
        table = table.set_column(table.column_names.index("path"), "path", absolute)
        return (table.append_column("relative_path", relative)
                .append_column("video_root", pa.array([root] * table.num_rows, pa.string())))

    def _read(self, failures: bool, columns: list[str] | None) -> pa.Table:
        import pyarrow.dataset as ds

        from pipeline.commit import committed_paths, read_commits
        from pipeline.schema import FAILURES

        records = read_commits(self.store, self.output.stage, self.output.version)
        paths = [self.store.path(p) for p in committed_paths(records, failures=failures)]
        if not paths:
            if failures:
                return FAILURES.empty_table().select(columns or FAILURES.names)
            raise ValueError(f"{self.output.path} has no committed parts")
        return ds.dataset(paths, filesystem=self.store.fs, format="parquet").to_table(columns=columns)

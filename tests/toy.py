"""A toy stage and a toy manifest for runner tests: items are numbers, rows their multiples.

An item's relative path says how it behaves: `ok/`, `bad/` (a Failure), `boom/` (raises),
`segv/` (kills its worker process), `slow/` (sleeps a little, so a run can be interrupted).
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.dataset as ds

from pipeline.run.stage import Failure, RunSettings, Stage, Step
from pipeline.store.dataset_manifest import ManifestOutputs, write_dataset_manifest
from pipeline.store.schema import CAPTIONS, MANIFEST_PROBLEMS, VIDEOS
from pipeline.store.storage import Store

TOY_SCHEMA = pa.schema([("video_id", pa.string()), ("doubled", pa.int64())])


@dataclass
class ToyConfig:
    factor: int = 2
    run: RunSettings = field(default_factory=lambda: RunSettings(batch_size=4))


def toy_items(config, inputs):
    return inputs["videos"].table(columns=["video_id", "path"])


def toy_setup(config):
    def batch(items):
        results = []
        for item in items:
            n = int(item["video_id"].split("-")[1])
            kind = item["path"].split("/")[0]
            if kind == "segv":
                os.kill(os.getpid(), signal.SIGSEGV)  # a decoder crashing the whole process
            if kind == "boom":
                raise RuntimeError(f"exploded on {item['video_id']}")
            if kind == "slow":
                time.sleep(0.2)
            if kind == "bad":
                results.append(Failure("corrupt", f"{item['path']} is bad"))
            else:
                results.append({"video_id": item["video_id"], "doubled": n * config.factor})
        return results

    return batch


TOY = Stage(
    name="toy",
    description="multiplies the number in each id",
    key="video_id",
    inputs=("videos",),
    config_type=ToyConfig,
    schema=TOY_SCHEMA,
    items=toy_items,
    steps=(Step("double", toy_setup),),
)


def toy_manifest(store: Store, n: int, bad=(), boom=(), segv=(), slow=(), root: str = "/videos") -> ManifestOutputs:
    ids = [f"v-{i:03d}" for i in range(n)]
    kinds = [("bad" if i in bad else "boom" if i in boom else "segv" if i in segv else "slow" if i in slow
              else "ok") for i in range(n)]
    paths = [f"{kind}/{i}.mp4" for i, kind in enumerate(kinds)]
    videos = pa.table({"video_id": ids, "path": paths, "split": ["test"] * n, "extra": [None] * n}, schema=VIDEOS)
    return write_dataset_manifest(store, videos, CAPTIONS.empty_table(), MANIFEST_PROBLEMS.empty_table(), root,
                                  {"format": "test"})


def toy_inputs(store: Store, n: int, **kinds) -> dict:
    return toy_manifest(store, n, **kinds).as_inputs()


def read(store: Store, *parts: str) -> pa.Table:
    return ds.dataset(store.path(*parts), format="parquet").to_table()


@dataclass(frozen=True)
class FailingStore(Store):
    """A store whose writes fail like a full disk once a path contains `fail_on` (a mocked write
    error at the storage layer; pickled to the Ray workers with the rest of the job)."""

    fail_on: str = ""

    def put(self, data: bytes, *parts: str) -> None:
        self._maybe_fail(*parts)
        super().put(data, *parts)

    def write_bytes(self, data: bytes, *parts: str) -> None:
        self._maybe_fail(*parts)
        super().write_bytes(data, *parts)

    def _maybe_fail(self, *parts: str) -> None:
        import errno

        from pipeline.store.storage import StorageError

        path = self.path(*parts)
        if self.fail_on and self.fail_on in path:
            raise StorageError(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))

"""The output folder: local paths by default, any `pyarrow.fs` URI (s3://, gs://, ...) on a cluster.

Files appear under their final names only when complete: everything is written to a hidden
temporary name first (readers such as `pyarrow.dataset` skip names starting with '.' or '_')
and then moved into place.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


@dataclass(frozen=True)
class Store:
    """A folder on some filesystem; paths inside it are '/'-joined relative strings."""

    fs: pafs.FileSystem
    root: str

    @classmethod
    def open(cls, uri: str) -> "Store":
        if "://" in uri:
            fs, root = pafs.FileSystem.from_uri(uri)
        else:
            import os

            fs, root = pafs.LocalFileSystem(), os.path.abspath(uri)
        fs.create_dir(root, recursive=True)
        return cls(fs, root.rstrip("/"))

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *[p.strip("/") for p in parts if p]])

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def list_dirs(self, *parts: str) -> list[str]:
        base = self.path(*parts)
        if not self.exists(*parts):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(base))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)

    def list_files(self, *parts: str, suffix: str = "") -> list[str]:
        if not self.exists(*parts):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(*parts)))
        return sorted(
            i.base_name for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix)
        )

    def read_text(self, *parts: str) -> str:
        with self.fs.open_input_stream(self.path(*parts)) as stream:
            return stream.read().decode()

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_text(*parts))

    def write_text(self, text: str, *parts: str) -> None:
        self._commit(lambda tmp: self._write_bytes(tmp, text.encode()), *parts)

    def write_json(self, data: Any, *parts: str) -> None:
        self.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", *parts)

    def write_parquet(self, table: pa.Table, *parts: str, metadata: dict[str, str] | None = None) -> None:
        if metadata:
            merged = {**(table.schema.metadata or {}), **{k.encode(): v.encode() for k, v in metadata.items()}}
            table = table.replace_schema_metadata(merged)
        self._commit(lambda tmp: pq.write_table(table, tmp, filesystem=self.fs, compression="zstd"), *parts)

    def read_parquet(self, *parts: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.path(*parts), filesystem=self.fs, columns=columns)

    def remove_temporaries(self, *parts: str) -> int:
        """Delete leftovers of writes that never completed (a killed run); returns how many."""
        stale = [name for name in self.list_files(*parts) if name.startswith(".tmp-")]
        for name in stale:
            self.fs.delete_file(self.path(*parts, name))
        return len(stale)

    def _write_bytes(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as stream:
            stream.write(data)

    def _commit(self, write, *parts: str) -> None:
        final = self.path(*parts)
        folder, _, name = final.rpartition("/")
        self.fs.create_dir(folder, recursive=True)
        temporary = f"{folder}/.tmp-{uuid.uuid4().hex[:8]}-{name}"
        write(temporary)
        self.fs.move(temporary, final)  # a rename on local disks: readers see all or nothing

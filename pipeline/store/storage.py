"""The output folder: local paths by default, any `pyarrow.fs` URI (s3://, gs://, ...) on a cluster.

Small files (records, LATEST) appear under their final names only when complete: they are
written to a hidden temporary name first and then moved into place. Part files go through the
commit protocol of `pipeline.store.version` instead. A write that fails (no space, read-only, quota)
raises `StorageError` naming the path, never a bare OSError from deep inside pyarrow.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


class StorageError(RuntimeError):
    """Writing to the output folder failed; the message names the path and the system's reason."""

    def __init__(self, path: str, cause: BaseException):
        reason = _errno_text(getattr(cause, "strerror", None) or str(cause)) or type(cause).__name__
        super().__init__(f"cannot write {path}: {reason}")
        self.path = path
        self.reason = reason


def _errno_text(message: str) -> str:
    """pyarrow's OSErrors carry no errno attribute, only "... [errno 28] No space left on device"."""
    found = re.search(r"\[errno (\d+)\]", message)
    return os.strerror(int(found.group(1))) if found else message


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
            fs, root = pafs.LocalFileSystem(), os.path.abspath(uri)
        store = cls(fs, root.rstrip("/"))
        store._writing(store.root, lambda: fs.create_dir(store.root, recursive=True))
        return store

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *[p.strip("/") for p in parts if p]])

    # ---- reading ---------------------------------------------------------------------------

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def size(self, *parts: str) -> int | None:
        """Bytes in a file, or None when there is no file there."""
        info = self.fs.get_file_info(self.path(*parts))
        return info.size if info.type == pafs.FileType.File else None

    def list_dirs(self, *parts: str) -> list[str]:
        return sorted(i.base_name for i in self._list(*parts) if i.type == pafs.FileType.Directory)

    def list_files(self, *parts: str, suffix: str = "") -> list[str]:
        return sorted(i.base_name for i in self._list(*parts)
                      if i.type == pafs.FileType.File and i.base_name.endswith(suffix))

    def walk_files(self, *parts: str) -> list[str]:
        """Every file below a folder, as paths relative to the store root."""
        if not self.exists(*parts):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(*parts), recursive=True))
        start = len(self.root) + 1
        return sorted(i.path[start:] for i in infos if i.type == pafs.FileType.File)

    def read_bytes(self, *parts: str) -> bytes:
        with self.fs.open_input_stream(self.path(*parts)) as stream:
            return stream.read()

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode()

    def read_json(self, *parts: str) -> Any:
        return json.loads(self.read_text(*parts))

    def read_parquet(self, *parts: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.path(*parts), filesystem=self.fs, columns=columns)

    def sha256(self, *parts: str) -> str:
        digest = hashlib.sha256()
        with self.fs.open_input_stream(self.path(*parts)) as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
        return digest.hexdigest()

    # ---- writing ---------------------------------------------------------------------------

    def write_bytes(self, data: bytes, *parts: str) -> None:
        """Atomically replace a file: readers see the old bytes or the new ones, never a mix."""
        final = self.path(*parts)
        folder, _, name = final.rpartition("/")
        temporary = f"{folder}/.tmp-{uuid.uuid4().hex[:8]}-{name}"

        def write():
            self.fs.create_dir(folder, recursive=True)
            self._put(temporary, data)
            self.fs.move(temporary, final)  # a rename on local disks

        self._writing(final, write, cleanup=temporary)

    def write_text(self, text: str, *parts: str) -> None:
        self.write_bytes(text.encode(), *parts)

    def write_json(self, data: Any, *parts: str) -> None:
        self.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", *parts)

    def put(self, data: bytes, *parts: str) -> None:
        """Write a file in place (for staging areas that readers never look into)."""
        path = self.path(*parts)

        def write():
            self.fs.create_dir(path.rpartition("/")[0], recursive=True)
            self._put(path, data)

        self._writing(path, write, cleanup=path)

    def create_exclusive(self, data: bytes, *parts: str) -> bool:
        """Create a file only if none is there; False when one already exists.

        Atomic on local disks (O_EXCL). Object stores have no such primitive: there it is a
        check then a write, good enough to stop a second driver started by hand.
        """
        path = self.path(*parts)
        if not self.is_local:
            if self.exists(*parts):
                return False
            self.write_bytes(data, *parts)
            return True

        def create() -> bool:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(data)
            return True

        return self._writing(path, create)

    def move(self, source: str, destination: str) -> None:
        """Move a file between two store-relative paths (a rename on local disks)."""
        target = self.path(destination)
        self._writing(target, lambda: (self.fs.create_dir(target.rpartition("/")[0], recursive=True),
                                       self.fs.move(self.path(source), target)))

    def delete(self, *parts: str) -> None:
        """Remove a file or a whole folder; nothing there is fine."""
        path = self.path(*parts)
        info = self.fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            self._writing(path, lambda: self.fs.delete_dir(path))
        elif info.type == pafs.FileType.File:
            self._writing(path, lambda: self.fs.delete_file(path))

    def remove_temporaries(self, *parts: str) -> int:
        """Delete leftovers of small writes that never completed (a killed run); returns how many."""
        stale = [name for name in self.list_files(*parts) if name.startswith(".tmp-")]
        for name in stale:
            self.delete(*parts, name)
        return len(stale)

    # ---- internals -------------------------------------------------------------------------

    def _list(self, *parts: str) -> list[pafs.FileInfo]:
        if not self.exists(*parts):
            return []
        return self.fs.get_file_info(pafs.FileSelector(self.path(*parts)))

    def _put(self, path: str, data: bytes) -> None:
        with self.fs.open_output_stream(path) as stream:
            stream.write(data)

    def _writing(self, path: str, write: Callable[[], Any], cleanup: str | None = None) -> Any:
        try:
            return write()
        except OSError as exc:
            if cleanup is not None:
                try:
                    self.fs.delete_file(cleanup)
                except OSError:
                    pass  # the half-written file is staging or hidden; a rerun removes it
            raise StorageError(path, exc) from exc


def parquet_bytes(table: pa.Table, metadata: dict[str, str] | None = None) -> bytes:
    """A table as Parquet file bytes (zstd), with key-value metadata merged into its schema."""
    if metadata:
        merged = {**(table.schema.metadata or {}), **{k.encode(): v.encode() for k, v in metadata.items()}}
        table = table.replace_schema_metadata(merged)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()

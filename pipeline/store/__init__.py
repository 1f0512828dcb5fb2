"""Storage and the on-disk protocol: the output folder on any `pyarrow.fs` (`Store`), a version
folder as one object (`Version`), its lease, the schemas, the dataset manifest's three versions,
and the tools that read them back (`verify`, `status`). Imports nothing above `pipeline.config`."""

from pipeline.store.storage import StorageError, Store
from pipeline.store.version import DamagedOutputError, InputNotReadyError, Version, latest

__all__ = ["DamagedOutputError", "InputNotReadyError", "StorageError", "Store", "Version", "latest"]

"""Offline preprocessing and knowledge generation for text-video retrieval research."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tvr-pipeline")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+local"

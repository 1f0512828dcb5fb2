"""What identifies a checkpoint in a stage's version: a hub id's revision or commit, or a hash of a
local folder's files."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline.config import ConfigError

# The files of a checkpoint folder that decide its outputs: configs, tokenizer, weights.
_CHECKPOINT_SUFFIXES = (".json", ".txt", ".safetensors", ".bin", ".model", ".jinja")


def checkpoint_identity(model: str, revision: str | None) -> dict:
    """What a stage records so that its version changes when the model does: the id and revision
    as given, the transformers version, and for a local folder a sha256 of the files that decide
    its outputs (configs, tokenizer, weights), since a local folder has no revision; for a hub id
    without a pinned revision, the commit its config was read from (a new commit on the hub is a
    new version; a pinned revision is recorded as given, and nothing is fetched)."""
    import transformers

    identity = {"model": model, "revision": revision, "transformers": transformers.__version__}
    folder = Path(model)
    if folder.is_dir():
        digest = hashlib.sha256()
        for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _CHECKPOINT_SUFFIXES):
            digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        identity["sha256"] = digest.hexdigest()
    elif revision is None:
        from huggingface_hub import hf_hub_download

        try:
            path = hf_hub_download(model, "config.json")
        except OSError as error:
            raise model_unavailable(model, revision, error) from error
        # The hub cache keeps each file under snapshots/<commit>/: the folder names the commit.
        identity["commit"] = Path(path).parent.name
    return identity


def model_unavailable(model: str, revision: str | None, error: Exception):
    """The one-line error for a model that is neither a local folder nor readable from the hub."""

    at = f" at revision {revision}" if revision else ""
    cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ConfigError(f"model {model!r}{at} is not a local folder, and neither the Hugging Face hub nor its "
                       f"cache has it ({cause}); download it, or set the model to a local folder")

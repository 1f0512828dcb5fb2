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
        except (OSError, ValueError) as error:  # ValueError: not even the form of a hub id
            raise model_unavailable(model, revision, error) from error
        # The hub cache keeps each file under snapshots/<commit>/: the folder names the commit.
        identity["commit"] = Path(path).parent.name
    return identity


def check_model(key: str, model: str) -> None:
    """On the driver, before any worker starts: `model` (the value of config key `key`) is a local
    checkpoint folder holding a config.json, or has the form of a Hugging Face hub id (`name` or
    `org/name`). Nothing is downloaded or loaded; whether the hub has it is for the version's
    identity to find out."""
    from huggingface_hub.utils import validate_repo_id

    if not model:
        raise ConfigError(f"{key} is empty: name a Hugging Face id or a local checkpoint folder")
    path = Path(model)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"config value {key}={model!r}: the folder has no config.json "
                              "(not a Hugging Face checkpoint folder)")
        return
    if path.exists():
        raise ConfigError(f"config value {key}={model!r} is a file; name the checkpoint's folder")
    try:
        validate_repo_id(model)
    except ValueError:
        raise ConfigError(f"config value {key}={model!r}: no such folder, and not a Hugging Face hub id "
                          "(org/name)") from None


def model_unavailable(model: str, revision: str | None, error: Exception):
    """The one-line error for a model that is neither a local folder nor readable from the hub."""

    at = f" at revision {revision}" if revision else ""
    cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ConfigError(f"model {model!r}{at} is not a local folder, and neither the Hugging Face hub nor its "
                       f"cache has it ({cause}); download it, or set the model to a local folder")

"""Errors for models and tokenizers that cannot be loaded, naming the config key and the path.

`from_pretrained` reports a missing local path as a malformed hub "Repo id", and an empty directory as a
missing sentencepiece or tiktoken, without saying which setting was wrong. These helpers check a local
path before loading and turn a load failure into a `ConfigError` like `model.tokenizer: no tokenizer at
'/nonexistent/tok' (not a local directory, and not found on the hub offline)`.
"""

from __future__ import annotations

import os
from pathlib import Path

from sft_sweeps.config import ConfigError

# Any one of these makes a directory a plausible tokenizer or model; none means nothing to load there.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
)
MODEL_FILES = ("config.json",)
LOAD_ERRORS = (OSError, ValueError, KeyError)  # what from_pretrained raises for a bad id, path or file
_OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def check_local(name_or_path: str, key: str, what: str, files: tuple[str, ...]) -> None:
    """Fail early when `name_or_path` is a local file, or a directory with none of `files`.

    A path that does not exist is left alone: it may be a hub id.

    Raises:
        ConfigError: naming `key`, the path and what is missing.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not any((path / name).is_file() for name in files):
            raise ConfigError(
                f"{key}: no {what} in '{name_or_path}' (the directory has none of {', '.join(files)})"
            )
    elif path.exists():
        raise ConfigError(f"{key}: '{name_or_path}' is a file; a {what} is a directory or a hub id")


def load_error(name_or_path: str, key: str, what: str, error: Exception) -> ConfigError:
    """The `ConfigError` for a failed `from_pretrained(name_or_path)`, naming `key` and the path."""
    cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if Path(name_or_path).expanduser().is_dir():
        return ConfigError(f"{key}: cannot load a {what} from '{name_or_path}': {cause}")
    if _offline():  # the cause would only say the hub was not asked, or that a path is no repo id
        return ConfigError(
            f"{key}: no {what} at '{name_or_path}' (not a local directory, and not found on the hub offline)"
        )
    return ConfigError(
        f"{key}: no {what} at '{name_or_path}' (not a local directory, and the hub says: {cause})"
    )


def _offline() -> bool:
    # Read at call time: huggingface_hub's constant is fixed when it is first imported.
    return any(os.environ.get(name, "").upper() in ("1", "ON", "YES", "TRUE") for name in _OFFLINE_VARS)

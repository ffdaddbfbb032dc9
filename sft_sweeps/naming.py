"""Names made from settings, for files and folders: safe file-name parts and the default sweep folder.

The ground floor of run naming, importing nothing of the project: the config registers
`default_sweep_name` as the resolver of `sweep_name`'s default, and `sft_sweeps.identity` (which names runs,
groups and job folders) and the report build on it.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import PurePath

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def file_slug(text: str, max_length: int = 60) -> str:
    """`text` as a readable file-name part: `[A-Za-z0-9._+-]` only, at most `max_length` characters.

    A longer text is cut and ends in a hash of the whole, so two long settings never share a file and no
    name reaches the file-system limit (255 bytes), whatever the dataset paths and overrides.

    Example:
        >>> file_slug("synthetic/turn_exact_match")
        'synthetic_turn_exact_match'
        >>> len(file_slug("default | dataset.path=" + "/very/long/path" * 40))
        60
    """
    slug = _UNSAFE.sub("_", text).strip("_.") or "x"
    if len(slug) <= max_length:
        return slug
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{slug[: max_length - 9].rstrip('_.')}-{digest}"


# The embedded default's model and dataset: its sweep keeps the folder `multirun/default`.
DEFAULT_SWEEP = "default"
_DEFAULT_SETTING = ("tiny", "synthetic")


def default_sweep_name(model_name: str, dataset_name: str, dataset_path: str | None = None) -> str:
    """`sweep_name` when none is given: `default` for the embedded default, else dataset and model.

    A sweep on other data or another model gets a folder of its own (`multirun/local_jsonl-chats__tiny`),
    so it never shares `multirun/default` with the default sweep; the file name of `dataset.path` (its
    folder when the name is a pattern such as `{split}.jsonl`) tells two local datasets apart.

    Example:
        >>> default_sweep_name("tiny", "synthetic")
        'default'
        >>> default_sweep_name("tiny", "local_jsonl", "data/chats.jsonl")
        'local_jsonl-chats__tiny'
    """
    if (model_name, dataset_name) == _DEFAULT_SETTING and not dataset_path:
        return DEFAULT_SWEEP
    data = str(dataset_name)
    if dataset_path:
        path = PurePath(str(dataset_path).rstrip("/"))
        stem = path.stem if "{" not in path.name and "*" not in path.name else path.parent.name
        if stem:
            data = f"{data}-{file_slug(stem, 32)}"
    return f"{file_slug(data, 60)}__{file_slug(str(model_name), 40)}"

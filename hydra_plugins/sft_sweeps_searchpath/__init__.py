"""Puts `multirun_templates/` on Hydra's config search path, so its `experiment/` files form the
`experiment` config group: `python -m sft_sweeps -m experiment=masking_seeds`.

Hydra discovers search-path plugins in the `hydra_plugins` namespace package; this one is installed with
sft_sweeps (editable installs find the folder beside `conf/`).
"""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

TEMPLATES_DIR = Path(__file__).resolve().parents[2] / "multirun_templates"


class SftSweepsTemplatesSearchPath(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        search_path.append(provider="sft_sweeps-templates", path=f"file://{TEMPLATES_DIR}")

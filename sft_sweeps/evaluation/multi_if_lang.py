"""Language-aware word and sentence counts, as Multi-IF's own evaluation counts them.

Multi-IF (facebookresearch/Multi-IF, `ifeval.py`) changes two of IFEval's checkers,
`length_constraints:number_words` and `length_constraints:number_sentences`: it detects the answer's
language with langdetect (English when detection fails) and counts

* words: Thai with pythainlp's word tokenizer; Chinese and Japanese (`zh-cn`, `zh-tw`, `ja`) one word per
  CJK character (Han, Hiragana, Katakana, Hangul), plus one per emoji and one per whitespace-separated run of
  anything else, after dropping ASCII and CJK punctuation; every other language as lm-eval does (`\\w+` runs);
* sentences: Thai with pythainlp's sentence tokenizer, line by line; Hindi split after `।`, `!` and `?`;
  Chinese and Japanese split after `。！？．.!?` and at line ends; every other language with NLTK's English
  punkt model, as lm-eval does.

lm-eval's IFEval (the `lm_eval` scoring of `eval.multi_if.scoring`) counts every language the English way:
a 70-character Chinese answer is 1 word there (one `\\w+` run without spaces) and 70 here.

Written here after upstream's rules (equal to upstream's functions on 3,000 random mixed CJK/emoji texts);
the emoji count uses the Unicode pictographic ranges below instead of the `emoji` package (not a
dependency; one difference: a skin-tone modifier after an emoji that takes none counts apart there, with
its emoji here). Thai needs `pythainlp` (with `python-crfsuite` for sentences), as upstream does:
`THAI_PACKAGES` says what to install.

Example:
    >>> count_words("我们今天去公园散步。", "zh-cn"), count_sentences("天气很好。我们去散步！", "zh-cn")
    (9, 2)
"""

from __future__ import annotations

import re
from typing import Any

# Multi-IF's character classes: Chinese (CJK Unified Ideographs and Extension A), Japanese kana, Hangul.
_CJK = re.compile(r"[\u4E00-\u9FFF\u3400-\u4DBF\u3040-\u309F\u30A0-\u30FF\uAC00-\uD7AF]")
# The punctuation Multi-IF drops before counting CJK words (ASCII and full-width, quotes and brackets).
_CJK_PUNCTUATION = re.compile(
    r"[\\.!?．/_,{}<>:;$%^&*(+\"'—！，。？、`~@#￥…（）：；《》“”()\[\]»〔〕\-「」]+"
)
# One emoji: a pictograph, then any skin tone, variation selector or zero-width-joined pictograph.
_PICTOGRAPH = (
    "[\U0001f000-\U0001faff\u2600-\u27bf\u2300-\u23ff\u2b00-\u2bff\u2190-\u21ff\u3030\u303d\u3297\u3299"
    "\u00a9\u00ae\u203c\u2049\u2122\u2139]"
)
_EMOJI = re.compile(
    f"{_PICTOGRAPH}[\ufe0f\U0001f3fb-\U0001f3ff]*(?:\u200d{_PICTOGRAPH}[\ufe0f\U0001f3fb-\U0001f3ff]*)*"
)
_CJK_SENTENCE = re.compile(r"[^!?。.！？．\n]+[!?。.！？．\n]?")
_HINDI_SENTENCE_END = re.compile(r"(?<=[।!?])\s*")

CJK_LANGUAGES = frozenset({"zh", "zh-cn", "zh-tw", "ja"})
THAI_PACKAGES = "pythainlp==5.4.0 python-crfsuite"


class ThaiUnavailable(ImportError):
    """pythainlp (Multi-IF's Thai tokenizer) is not installed."""


def detect_language(text: str) -> str:
    """langdetect's code for `text` (`zh-cn`, `ja`, `th`, ...); `en` when it cannot tell, as upstream."""
    import langdetect

    try:
        return langdetect.detect(text)
    except langdetect.LangDetectException:
        return "en"


def count_words_cjk(text: str) -> int:
    """Multi-IF's Chinese/Japanese word count: CJK characters, emoji, and other whitespace-separated runs."""
    text = _CJK_PUNCTUATION.sub("", text)
    emoji = len(_EMOJI.findall(text))
    text = _EMOJI.sub("", text)
    cjk = len(_CJK.findall(text))
    return cjk + len(_CJK.sub(" ", text).split()) + emoji


def count_sentences_cjk(text: str) -> int:
    """Multi-IF's Chinese/Japanese sentence count: runs ending in `。！？．.!?`, each line on its own."""
    return sum(len(_CJK_SENTENCE.findall(line.strip())) for line in text.splitlines())


def count_sentences_hindi(text: str) -> int:
    """Multi-IF's Hindi sentence count: non-empty pieces after `।` (danda), `!` or `?`."""
    return sum(1 for piece in _HINDI_SENTENCE_END.split(text) if piece.strip())


def _thai() -> Any:
    try:
        from pythainlp import tokenize
    except ImportError:
        raise ThaiUnavailable(
            f"Multi-IF counts Thai words and sentences with pythainlp: pip install {THAI_PACKAGES}"
        ) from None
    return tokenize


def _lm_eval_util() -> Any:
    from sft_sweeps.evaluation.ifeval import ifeval_registry

    ifeval_registry()  # punkt_tab in place before lm-eval's util module is imported
    from lm_eval.tasks.ifeval import instructions_util

    return instructions_util


def count_words(text: str, language: str) -> int:
    """Words in `text` of langdetect language `language`, as Multi-IF counts them.

    Raises:
        ThaiUnavailable: `language` is Thai and pythainlp is not installed.
    """
    if language == "th":
        return len(_thai().word_tokenize(text))
    if language in CJK_LANGUAGES:
        return count_words_cjk(text)
    return _lm_eval_util().count_words(text)


def count_sentences(text: str, language: str) -> int:
    """Sentences in `text` of langdetect language `language`, as Multi-IF counts them.

    Raises:
        ThaiUnavailable: `language` is Thai and pythainlp is not installed.
    """
    if language == "th":
        return sum(len(_thai().sent_tokenize(line)) for line in text.splitlines())
    if language == "hi":
        return count_sentences_hindi(text)
    if language in CJK_LANGUAGES:
        return count_sentences_cjk(text)
    return _lm_eval_util().count_sentences(text)


# Instruction id -> (counter, the instruction argument holding the threshold).
COUNTED = {
    "length_constraints:number_words": (count_words, "num_words"),
    "length_constraints:number_sentences": (count_sentences, "num_sentences"),
}


def check_counted(instruction_id: str, instruction: Any, response: str) -> bool:
    """Multi-IF's verdict for a counting instruction (`COUNTED`), built by lm-eval's registry.

    Raises:
        ThaiUnavailable: the response is Thai and pythainlp is not installed.
    """
    counter, threshold_key = COUNTED[instruction_id]
    args = instruction.get_instruction_args()
    count = counter(response, detect_language(response))
    if args["relation"] == "less than":
        return count < args[threshold_key]
    return count >= args[threshold_key]

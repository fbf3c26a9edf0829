"""Word and character error counts, as Whisper's evaluation counts them.

Reference and hypothesis both go through openai-whisper's `EnglishTextNormalizer` (the
`whisper-normalizer` package, less the four rules that package adds to upstream), then jiwer
counts the edits. Rates built from these counts are corpus-level (see `report.py`).

Torch-free; jiwer is imported when an edit is first counted.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from .errors import WhisfusionError

__all__ = ["char_errors", "normalize", "word_errors"]

# whisper-normalizer >= 0.1.2 adds these replacers; openai-whisper has none of them (and
# r"\bcause\b" -> "because" also rewrites the noun: "the cause of" -> "the because of")
NOT_UPSTREAM_RULES = (r"\bkinda\b", r"\bsorta\b", r"\bdunno\b", r"\bcause\b")


@lru_cache(maxsize=1)
def _normalizer() -> Callable[[str], str]:
    try:
        from whisper_normalizer.english import EnglishTextNormalizer
    except ImportError:
        raise WhisfusionError("evaluation needs the whisper-normalizer package: "
                              "pip install whisper-normalizer") from None
    normalizer = EnglishTextNormalizer()
    for pattern in NOT_UPSTREAM_RULES:
        normalizer.replacers.pop(pattern, None)
    return normalizer


def normalize(text: str) -> str:
    """openai-whisper's English normalisation ("Mr. Smith" -> "mister smith", "twenty five" -> "25")."""
    return _normalizer()(text)


def word_errors(ref: str, hyp: str) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words) of two normalised texts."""
    n_ref, n_hyp = len(ref.split()), len(hyp.split())
    if n_ref == 0 or n_hyp == 0:  # jiwer 3 rejects an empty reference
        return max(n_ref, n_hyp), n_ref
    import jiwer

    out = jiwer.process_words(ref, hyp)
    return out.substitutions + out.deletions + out.insertions, n_ref


def char_errors(ref: str, hyp: str) -> tuple[int, int]:
    """(character edits, reference characters, spaces included) of two normalised texts."""
    ref, hyp = " ".join(ref.split()), " ".join(hyp.split())
    if not ref or not hyp:
        return max(len(ref), len(hyp)), len(ref)
    import jiwer

    out = jiwer.process_characters(ref, hyp)
    return out.substitutions + out.deletions + out.insertions, len(ref)

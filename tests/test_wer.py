"""Whisper's English normalisation and word/character edit counts."""

import pytest

from whisfusion_cli.wer import char_errors, normalize, word_errors

# ---------------------------------------------------------------- normaliser
# Expected outputs are openai-whisper's own (tests/test_normalizer.py, and its EnglishTextNormalizer
# run on the rest), which whisper-normalizer reproduces once its extra rules are removed.


@pytest.mark.parametrize("text, expected", [
    ("Mr. Smith", "mister smith"),
    ("Mr. Park visited Assoc. Prof. Kim Jr.", "mister park visited associate professor kim junior"),
    ("Dr. Who", "doctor who"),
    ("Let's", "let us"),
    ("he's like", "he is like"),
    ("she's been like", "she has been like"),
    ("I'm gonna", "i am going to"),
    ("won't", "will not"),
    ("colour", "color"),
    ("mobilisation", "mobilization"),
    ("STUFF IT INTO YOU HIS BELLY COUNSELLED HIM", "stuff it into you his belly counseled him"),
    ("twenty five", "25"),
    ("nineteen ninety nine", "1999"),
    ("thirty first", "31st"),
    ("1st place", "1st place"),
    ("$20 million", "$20000000"),
    ("two hundred million dollars", "$200000000"),
    ("ninety percent", "90%"),
    ("1,000,000", "1000000"),
    ("10km", "10 km"),
    ("HELLO, World!", "hello world"),
    ("um uh hmm", ""),
    ("Let's [laughs] go", "let us go"),
    # rules whisper-normalizer adds to upstream are removed ("cause" -> "because" hit the noun)
    ("the cause of it", "the cause of it"),
    ("kinda sorta dunno", "kinda sorta dunno"),
])
def test_normalizer_matches_openai_whisper(text, expected):
    assert normalize(text) == expected


# ---------------------------------------------------------------- edit arithmetic


def test_word_errors_count_substitutions_deletions_insertions():
    assert word_errors("a b c d", "a b c d") == (0, 4)
    assert word_errors("a b c d", "a x c") == (2, 4)  # 1 substitution + 1 deletion
    assert word_errors("a b", "a b c d") == (2, 2)  # 2 insertions
    assert word_errors("a b", "") == (2, 2)
    assert word_errors("", "a b") == (2, 0)
    assert word_errors("", "") == (0, 0)


def test_char_errors_count_spaces_as_characters():
    assert char_errors("ab cd", "ab cx") == (1, 5)
    assert char_errors("ab cd", "abcd") == (1, 5)  # the deleted space
    assert char_errors("ab", "") == (2, 2)

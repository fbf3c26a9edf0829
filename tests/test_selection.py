"""Turning the k PDD candidates into one text: consensus (MBR) and the word-level vote (ROVER)."""

import pytest
from rapidfuzz.distance import Levenshtein

from whisfusion_cli.config import DecodingOptions
from whisfusion_cli.errors import ConfigError
from whisfusion_cli.selection import consensus, vote


def test_consensus_counts_repeated_candidates():
    texts = ["a b c", "a b d", "a b d", "x y z", "a b c d"]
    conf = [0.1, 0.2, 0.3, 0.9, 0.5]
    words = [t.split() for t in texts]
    risk = [sum(Levenshtein.distance(a, b) for b in words) for a in words]  # every pair, repeats included
    expected = min(range(len(texts)), key=lambda i: (risk[i], -conf[i]))
    assert consensus(texts, conf) == expected == 2  # the repeated one, the more confident of the two


def test_vote_fixes_a_word_no_single_candidate_has_right_everywhere():
    texts = ["The cat sat on the mat.", "The bat sat on the mat.", "The cat sat on a mat.",
             "The cat sat on the hat.", "The cat sat on the mat."]
    assert vote(texts, [0.9] * 5) == "The cat sat on the mat."
    texts = ["The bat sat on the mat.", "The cat sat on a mat.", "The cat sat on the hat."]  # each one wrong
    assert vote(texts, [0.9, 0.8, 0.7]) == "The cat sat on the mat."


def test_vote_inserts_what_most_candidates_insert_and_drops_what_few_do():
    texts = ["one two four", "one two four", "one two three four five", "one two three four six",
             "one two three four seven"]
    assert consensus(texts, [0.9, 0.9, 0.5, 0.5, 0.5]) == 0  # the skeleton lacks "three"
    assert vote(texts, [0.9, 0.9, 0.5, 0.5, 0.5]) == "one two three four"


def test_vote_keeps_the_written_form():
    texts = ['"Peter, I think Curly has your nose."', '"Peter, I think curly has your nose!"',
             'Peter I think Curly has your nose — yes']
    assert vote(texts, [0.9, 0.8, 0.7]) == '"Peter, I think Curly has your nose."'
    assert vote(["Hello — world", "Hello — world"], [1.0, 1.0]) == "Hello — world"  # lone punctuation kept
    assert vote(["single"], [0.5]) == "single" and vote(["", ""], [0.5, 0.5]) == ""


def test_consensus_picks_the_candidate_nearest_the_others():
    texts = ["He had paced up.", "he had past up", "He had paced up", "had paced up and down"]
    assert consensus(texts, [0.5, 0.9, 0.6, 0.7]) == 2  # ties 0 and 2 (case, punctuation aside): more confident
    assert consensus(texts, [0.7, 0.9, 0.6, 0.8]) == 0
    assert consensus(["only"], [0.1]) == 0
    with pytest.raises(ConfigError):
        DecodingOptions(select="majority")
    assert DecodingOptions(select="vote").select == "vote"

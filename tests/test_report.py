"""Corpus-level metrics and duration buckets of an evaluation report."""

import pytest

from whisfusion_cli.report import Utterance, bucket_of, summarize


def _row(errors: int, ref_words: int, oracle: int | None = None, duration: float = 5.0) -> Utterance:
    return Utterance("id", "a.flac", "test", duration, bucket_of(duration), "", "", "", "", errors, ref_words,
                     errors, 4 * ref_words, errors if oracle is None else oracle, (), 1.0, ref_words)


def test_rates_are_corpus_level_not_means_of_utterance_rates():
    m = summarize([_row(1, 2), _row(0, 8)])
    assert m.wer == pytest.approx(0.1)  # 1 / 10, where the mean of 0.5 and 0 would be 0.25
    assert m.cer == pytest.approx(1 / 40)
    assert summarize([]).wer is None and summarize([]).rtf is None


def test_oracle_wer_never_exceeds_wer():
    m = summarize([_row(3, 10, oracle=1), _row(2, 10, oracle=2)])
    assert (m.wer, m.oracle_wer) == (pytest.approx(0.25), pytest.approx(0.15))


@pytest.mark.parametrize("seconds, bucket", [
    (0.0, "0-10"), (3.2, "0-10"), (10.0, "0-10"), (10.001, "10-20"), (20.0, "10-20"), (20.5, "20-30"),
    (30.0, "20-30"),
])
def test_buckets_are_closed_on_the_right(seconds, bucket):
    assert bucket_of(seconds) == bucket


@pytest.mark.parametrize("seconds", [-1.0, 30.01])
def test_bucket_of_rejects_durations_outside_one_window(seconds):
    with pytest.raises(ValueError):
        bucket_of(seconds)

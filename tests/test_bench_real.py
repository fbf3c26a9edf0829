"""benchmarks/bench_real.py: the real-weights bench's utterances and its AR baseline (Whisper base itself)."""

import numpy as np

from whisfusion_cli.audio import SAMPLE_RATE, load_audio


def test_utterances_are_the_clips_by_length_then_the_longest_joined(benchmark_script):
    clips = {k: np.full(n * SAMPLE_RATE, i + 1, np.float32) for i, (k, n) in enumerate([("b", 3), ("a", 1), ("c", 2)])}
    refs = {"a": "one", "b": "three", "c": "two"}
    got = benchmark_script("bench_real").utterances(clips, refs)
    assert [(k, len(x) / SAMPLE_RATE, ref) for k, x, ref in got] == [
        ("a", 1, "one"), ("c", 2, "two"), ("b", 3, "three"),
        ("c+b", 6, "two three"), ("a+c+b", 7.5, "one two three")]  # a 0.5 s pause after each clip
    joined = got[-1][1]
    assert np.all(joined[:SAMPLE_RATE] == 2) and np.all(joined[SAMPLE_RATE: SAMPLE_RATE * 3 // 2] == 0)


def test_its_ar_baseline_is_what_verification_at_one_writes(real_clips, one_thread, benchmark_script):
    """The bundled model's encoder + its rescorer decoding greedily is Whisper base: `--verify 1` from
    the model's own draft must give the same transcript of a real clip."""
    from whisfusion_cli.asr import load_model
    from whisfusion_cli.cli import default_model

    asr = load_model(default_model(), "cpu")
    ar = benchmark_script("bench_real").whisper_base_of(asr)
    assert ar.net.encoder is asr.net.encoder and ar.net.decoder is asr.rescorer.decoder
    audio = load_audio(min(real_clips, key=lambda c: c[0].stat().st_size)[0])
    greedy = ar.decode_windows([audio])[0]
    verified = asr.decode_windows([audio], asr.options("fast", select="rescore", verify=1.0))[0]
    assert greedy.text == verified.text and greedy.n_tokens == verified.n_tokens > 3

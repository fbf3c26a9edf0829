"""WER, CER, oracle WER and speed over speech/text examples: the paper's Tables 3, 4 and 6.

The evaluation loop: each example is transcribed as one window, scored (`wer.py`: Whisper's
normalisation, then jiwer's edit counts) and timed; `report.py` adds the rows and timings up
into corpus-level metrics and gives the report its JSON form.

Utterances are grouped by subset and duration bucket, sorted by duration inside each group and
batched there, so every batch belongs to one group and group timings are exact; rows come back
in the input order. Utterances over 30 s are skipped and counted: long-form audio is
`transcribe`'s job. A duration given by the example (a manifest's) is trusted; an unknown one
(LibriSpeech) is measured by loading.

Torch-free at import (the CLI may read `EvalOptions` defaults at start-up): the model-side
modules are imported when `evaluate` runs.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import DecodingOptions
from .data import MAX_DURATION_S, Example
from .errors import ConfigError, WhisfusionError
from .report import (
    BUCKETS,
    BatchTiming,
    EvalReport,
    Metrics,
    Utterance,
    bucket_of,
    summarize,
    summarize_where,
)
from .wer import char_errors, normalize, word_errors

if TYPE_CHECKING:
    import numpy as np

    from .asr import ASRModel, WindowResult

__all__ = ["EvalOptions", "evaluate"]
log = logging.getLogger("whisfusion_cli")

LOAD_WORKERS = 8  # ffmpeg processes decoding files at once
STAGES = ("mel", "encode", "decode")  # ASRModel.stopwatch keys


# ---------------------------------------------------------------- options


@dataclass(frozen=True)
class EvalOptions:
    """How `evaluate` runs."""

    batch_size: int = 16  # utterances per decoder batch (each x k candidates for PDD)
    limit: int | None = None  # evaluate only the first `limit` examples, in input order
    options: DecodingOptions | None = None  # PDD options; None: the model's default preset
    warmup: bool = True  # decode the first batch once, untimed, first (CUDA init, kernel choice)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.limit is not None and self.limit < 0:
            raise ConfigError(f"limit must be >= 0, got {self.limit}")



# ---------------------------------------------------------------- running


def _measure(path: Path) -> float | None:
    """Seconds of audio in a file, by loading it (None when it cannot be read)."""
    from .audio import SAMPLE_RATE, load_audio

    try:
        return len(load_audio(path)) / SAMPLE_RATE
    except WhisfusionError as e:
        log.warning("skipping %s: %s", path, e)
        return None


def _durations(examples: Sequence[Example]) -> tuple[list[float | None], Counter]:
    """Each example's duration (None: skipped) and the count of skips by reason."""
    unknown = [i for i, ex in enumerate(examples) if ex.duration is None]
    durations: list[float | None] = [ex.duration for ex in examples]
    with ThreadPoolExecutor(LOAD_WORKERS) as pool:
        for i, seconds in zip(unknown, pool.map(_measure, [examples[i].audio for i in unknown])):
            durations[i] = seconds
    skipped: Counter = Counter()
    for i, (ex, seconds) in enumerate(zip(examples, durations)):
        reason = ("audio_error" if seconds is None and ex.duration is None else "empty_audio" if not seconds
                  else "too_long" if seconds > MAX_DURATION_S else None)
        if reason:
            skipped[reason] += 1
            durations[i] = None
    return durations, skipped


def _plan(examples: Sequence[Example], durations: Sequence[float | None],
          batch_size: int) -> list[tuple[list[int], str, str]]:
    """Batches of example indices, each within one (subset, bucket) group, longest first."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, seconds in enumerate(durations):
        if seconds is not None:
            groups.setdefault((examples[i].subset, bucket_of(seconds)), []).append(i)
    plan = []
    for (subset, bucket), idx in groups.items():
        idx.sort(key=lambda i: -durations[i])  # type: ignore[operator]
        plan += [(idx[j: j + batch_size], subset, bucket) for j in range(0, len(idx), batch_size)]
    return plan


def _load(path: Path) -> np.ndarray | None:
    from .audio import load_audio

    try:
        return load_audio(path)
    except WhisfusionError as e:
        log.warning("skipping %s: %s", path, e)
        return None


def _run_batch(model: ASRModel, paths: list[Path], options: DecodingOptions | None, subset: str,
               bucket: str) -> tuple[list[WindowResult | None], BatchTiming]:
    """Loads (in parallel) and decodes one batch; None for a file that failed to load."""
    from .transcribe import decode_with_backoff

    before = dict(model.stopwatch.totals)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(min(LOAD_WORKERS, len(paths))) as pool:
        audios = list(pool.map(_load, paths))
    load_s = time.perf_counter() - t0
    ok = [a for a in audios if a is not None]
    decoded = iter(decode_with_backoff(model, ok, options) if ok else [])
    wall_s = time.perf_counter() - t0
    spent = {k: model.stopwatch.totals.get(k, 0.0) - before.get(k, 0.0) for k in STAGES}
    timing = BatchTiming(subset, bucket, wall_s, load_s, spent["mel"], spent["encode"], spent["decode"])
    return [next(decoded) if a is not None else None for a in audios], timing


def _score(ex: Example, duration: float, result: WindowResult) -> Utterance:
    """Normalises both texts and counts word/character edits, and the best candidate's."""
    ref, hyp = normalize(ex.text), normalize(result.text)
    errors, ref_words = word_errors(ref, hyp)
    n_char_errors, ref_chars = char_errors(ref, hyp)
    oracle = min([errors] + [word_errors(ref, normalize(c))[0] for c in dict.fromkeys(result.candidates)])
    return Utterance(ex.audio.stem, str(ex.audio), ex.subset, duration, bucket_of(duration), ex.text,
                     result.text, ref, hyp, errors, ref_words, n_char_errors, ref_chars, oracle,
                     tuple(result.candidates), result.confidence, result.n_tokens)


def _report(model: ASRModel, options: DecodingOptions | None, eval_options: EvalOptions, n_examples: int,
            skipped: Counter, rows: tuple[Utterance, ...], timings: tuple[BatchTiming, ...]) -> EvalReport:
    subsets = list(dict.fromkeys(r.subset for r in rows))
    buckets = [b for b in BUCKETS if any(r.bucket == b for r in rows)]
    by_subset_bucket = {s: {b: summarize_where(rows, timings, s, b) for b in buckets
                            if any(r.subset == s and r.bucket == b for r in rows)} for s in subsets}
    return EvalReport(
        model=model.name, engine=model.engine, preset=(options.preset_name if options else None), options=options,
        device=str(model.device), dtype=str(model.dtype).removeprefix("torch."),
        batch_size=eval_options.batch_size, n_examples=n_examples, skipped=dict(skipped),
        overall=summarize(rows, timings), by_subset=_by_subset(rows, timings, subsets),
        by_bucket={b: summarize_where(rows, timings, bucket=b) for b in buckets},
        by_subset_bucket=by_subset_bucket, utterances=rows, timings=timings,
    )


def _by_subset(rows: Sequence[Utterance], timings: Sequence[BatchTiming], subsets: list[str]) -> dict[str, Metrics]:
    """Metrics per subset; subsets named GROUP/NAME (`data.join_long`'s clips/... and long/...) also
    add up into GROUP, listed before its members."""
    out: dict[str, Metrics] = {}
    for s in sorted(subsets, key=lambda s: "/" not in s):  # grouped ones first, each group in order
        group = s.split("/")[0]
        if "/" in s and group not in out:
            prefix = group + "/"
            out[group] = summarize([r for r in rows if r.subset.startswith(prefix)],
                                   [t for t in timings if t.subset.startswith(prefix)])
        out[s] = summarize_where(rows, timings, subset=s)
    return out


def evaluate(model: ASRModel, examples: Sequence[Example], eval_options: EvalOptions = EvalOptions(),
             progress: Callable[[int, int], None] | None = None) -> EvalReport:
    """Transcribes every example (one window each) and measures accuracy and speed.

    Args:
        model: a `WhisfusionASR` (PDD) or `WhisperASR` (AR baseline).
        examples: utterances of at most 30 s (longer ones are skipped and counted).
        eval_options: batch size, limit, PDD options, warm-up.
        progress: called as progress(utterances done, utterances to do) before and after each batch.

    Returns:
        The report: overall, per subset, per bucket and per subset x bucket metrics, and the rows.
    """
    examples = list(examples)[: eval_options.limit]
    options = (eval_options.options or model.options()) if model.engine == "pdd" else None
    durations, skipped = _durations(examples)
    plan = _plan(examples, durations, eval_options.batch_size)
    total, done = sum(len(batch) for batch, _, _ in plan), 0
    if eval_options.warmup and plan:
        _run_batch(model, [examples[i].audio for i in plan[0][0]], options, plan[0][1], plan[0][2])
    if progress:
        progress(0, total)
    results: dict[int, WindowResult] = {}
    timings: list[BatchTiming] = []
    for batch, subset, bucket in plan:
        decoded, timing = _run_batch(model, [examples[i].audio for i in batch], options, subset, bucket)
        timings.append(timing)
        for i, result in zip(batch, decoded):
            if result is None:
                skipped["audio_error"] += 1
            else:
                results[i] = result
        done += len(batch)
        if progress:
            progress(done, total)
    rows = tuple(_score(examples[i], durations[i], results[i]) for i in sorted(results))  # type: ignore[arg-type]
    return _report(model, options, eval_options, len(examples), skipped, rows, tuple(timings))

"""WER, CER, oracle WER and speed over speech/text examples: the paper's Tables 3, 4 and 6.

Accuracy follows Whisper's evaluation: reference and hypothesis both go through openai-whisper's
`EnglishTextNormalizer` (the `whisper-normalizer` package, less the four rules that package adds
to upstream), then jiwer counts the edits. Rates are corpus-level, total edits / total reference
words (or characters), never a mean of per-utterance rates. The oracle WER takes, for every
utterance, the PDD candidate with the fewest word errors (the AR baseline has one: oracle = WER).

Speed comes from the model's stopwatch deltas around each batch: encode, decode, and overhead =
wall - encode - decode, where wall spans loading the batch's audio (ffmpeg), the log-mel and the
batching. RTF = wall / audio seconds, RTFx its inverse; decoder tokens/s = tokens emitted /
decode seconds.

Utterances are grouped by subset and duration bucket, sorted by duration inside each group and
batched there, so every batch belongs to one group and group timings are exact; rows come back
in the input order. Buckets are closed on the right, (0, 10], (10, 20], (20, 30] s: exactly
10.0 s is in "0-10", and 30.0 s (the longest one encoder window holds) in "20-30". Longer
utterances are skipped and counted: long-form audio is `transcribe`'s job. A duration given by
the example (a manifest's) is trusted; an unknown one (LibriSpeech) is measured by loading.

Torch-free at import (the CLI may read `EvalOptions` defaults at start-up): the model-side
modules are imported when `evaluate` runs.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import DecodingOptions
from .data import MAX_DURATION_S, Example
from .errors import ConfigError, WhisfusionError

if TYPE_CHECKING:
    import numpy as np

    from .asr import ASRModel, WindowResult

__all__ = ["BUCKETS", "REPORT_SCHEMA", "SCHEMA_VERSION", "BatchTiming", "EvalOptions", "EvalReport", "Metrics",
           "Utterance", "bucket_of", "char_errors", "evaluate", "normalize", "report_to_dict", "summarize",
           "validate_report_dict", "word_errors"]
log = logging.getLogger("whisfusion_cli")

SCHEMA_VERSION = "whisfusion.eval/1"
BUCKETS: dict[str, float] = {"0-10": 10.0, "10-20": 20.0, "20-30": 30.0}  # name -> upper edge in s, inclusive
LOAD_WORKERS = 8  # ffmpeg processes decoding files at once
# whisper-normalizer >= 0.1.2 adds these replacers; openai-whisper has none of them (and
# r"\bcause\b" -> "because" also rewrites the noun: "the cause of" -> "the because of")
NOT_UPSTREAM_RULES = (r"\bkinda\b", r"\bsorta\b", r"\bdunno\b", r"\bcause\b")
STAGES = ("mel", "encode", "decode")  # ASRModel.stopwatch keys


# ---------------------------------------------------------------- text and edit counts


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


def bucket_of(duration: float) -> str:
    """The duration bucket, closed on the right: 10.0 s -> "0-10", 10.01 s -> "10-20".

    Raises:
        ValueError: a negative duration or one over 30 s.
    """
    if not 0.0 <= duration <= MAX_DURATION_S:
        raise ValueError(f"duration {duration} s is outside [0, {MAX_DURATION_S}]")
    return next(name for name, upper in BUCKETS.items() if duration <= upper)


# ---------------------------------------------------------------- results


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


@dataclass(frozen=True)
class Utterance:
    """One evaluated example: its texts, edit counts after normalisation, and candidates."""

    id: str  # the audio file's stem (LibriSpeech: speaker-chapter-utterance)
    audio: str
    subset: str
    duration: float  # seconds
    bucket: str
    ref: str  # as given
    hyp: str  # as decoded
    ref_norm: str
    hyp_norm: str
    errors: int  # word edits between ref_norm and hyp_norm
    ref_words: int
    char_errors: int
    ref_chars: int
    oracle_errors: int  # fewest word edits over the candidates (AR: = errors)
    candidates: tuple[str, ...]  # PDD: the k candidates; AR: none
    confidence: float
    n_tokens: int


@dataclass(frozen=True)
class BatchTiming:
    """Seconds one batch took; every batch belongs to one (subset, bucket) group."""

    subset: str
    bucket: str
    wall_s: float  # audio loading + mel + encode + decode
    load_s: float
    mel_s: float
    encode_s: float
    decode_s: float


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 else None


@dataclass(frozen=True)
class Metrics:
    """Corpus-level accuracy and speed of a group of utterances; rates are properties."""

    n_utterances: int = 0
    audio_s: float = 0.0
    ref_words: int = 0
    word_errors: int = 0
    oracle_word_errors: int = 0
    ref_chars: int = 0
    char_errors: int = 0
    n_tokens: int = 0
    wall_s: float = 0.0
    load_s: float = 0.0
    mel_s: float = 0.0
    encode_s: float = 0.0
    decode_s: float = 0.0

    @property
    def wer(self) -> float | None:  # None: no reference words
        return _ratio(self.word_errors, self.ref_words)

    @property
    def oracle_wer(self) -> float | None:
        return _ratio(self.oracle_word_errors, self.ref_words)

    @property
    def cer(self) -> float | None:
        return _ratio(self.char_errors, self.ref_chars)

    @property
    def overhead_s(self) -> float:  # loading, mel, batching
        return max(0.0, self.wall_s - self.encode_s - self.decode_s)

    @property
    def rtf(self) -> float | None:
        return _ratio(self.wall_s, self.audio_s)

    @property
    def rtfx(self) -> float | None:
        return _ratio(self.audio_s, self.wall_s)

    @property
    def encode_ms(self) -> float | None:  # per utterance
        return _ratio(1000 * self.encode_s, self.n_utterances)

    @property
    def decode_ms(self) -> float | None:
        return _ratio(1000 * self.decode_s, self.n_utterances)

    @property
    def overhead_ms(self) -> float | None:
        return _ratio(1000 * self.overhead_s, self.n_utterances)

    @property
    def tokens_per_s(self) -> float | None:  # decoder tokens emitted per decode second
        return _ratio(self.n_tokens, self.decode_s)


DERIVED = ("wer", "oracle_wer", "cer", "overhead_s", "rtf", "rtfx", "encode_ms", "decode_ms", "overhead_ms",
           "tokens_per_s")


@dataclass(frozen=True)
class EvalReport:
    """Everything one `evaluate` run measured (`report_to_dict` gives its JSON form)."""

    model: str
    engine: str  # "pdd" or "ar"
    preset: str | None  # the PDD preset `options` equals, if any
    options: DecodingOptions | None  # PDD options used; None for the AR baseline
    device: str
    dtype: str
    batch_size: int
    n_examples: int  # examples given (after `limit`)
    skipped: dict[str, int]  # reason ("too_long", "audio_error", "empty_audio") -> count
    overall: Metrics
    by_subset: dict[str, Metrics]
    by_bucket: dict[str, Metrics]  # in BUCKETS order; empty buckets left out
    by_subset_bucket: dict[str, dict[str, Metrics]]
    utterances: tuple[Utterance, ...]  # in input order
    timings: tuple[BatchTiming, ...] = ()


def summarize(rows: Sequence[Utterance], timings: Sequence[BatchTiming] = ()) -> Metrics:
    """Adds up a group's edit counts (corpus-level rates) and its batches' seconds."""
    return Metrics(
        n_utterances=len(rows), audio_s=sum(r.duration for r in rows),
        ref_words=sum(r.ref_words for r in rows), word_errors=sum(r.errors for r in rows),
        oracle_word_errors=sum(r.oracle_errors for r in rows), ref_chars=sum(r.ref_chars for r in rows),
        char_errors=sum(r.char_errors for r in rows), n_tokens=sum(r.n_tokens for r in rows),
        wall_s=sum(t.wall_s for t in timings), load_s=sum(t.load_s for t in timings),
        mel_s=sum(t.mel_s for t in timings), encode_s=sum(t.encode_s for t in timings),
        decode_s=sum(t.decode_s for t in timings),
    )


def _summarize_where(rows: Sequence[Utterance], timings: Sequence[BatchTiming], subset: str | None = None,
                     bucket: str | None = None) -> Metrics:
    def keep(s: str, b: str) -> bool:
        return (subset is None or s == subset) and (bucket is None or b == bucket)

    return summarize([r for r in rows if keep(r.subset, r.bucket)], [t for t in timings if keep(t.subset, t.bucket)])


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
    by_subset_bucket = {s: {b: _summarize_where(rows, timings, s, b) for b in buckets
                            if any(r.subset == s and r.bucket == b for r in rows)} for s in subsets}
    return EvalReport(
        model=model.name, engine=model.engine, preset=(options.preset_name if options else None), options=options,
        device=str(model.device), dtype=str(model.dtype).removeprefix("torch."),
        batch_size=eval_options.batch_size, n_examples=n_examples, skipped=dict(skipped),
        overall=summarize(rows, timings), by_subset={s: _summarize_where(rows, timings, subset=s) for s in subsets},
        by_bucket={b: _summarize_where(rows, timings, bucket=b) for b in buckets},
        by_subset_bucket=by_subset_bucket, utterances=rows, timings=timings,
    )


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


# ---------------------------------------------------------------- JSON form and its schema


def _metrics_dict(m: Metrics) -> dict[str, Any]:
    return asdict(m) | {name: getattr(m, name) for name in DERIVED}


def _options_dict(options: DecodingOptions | None) -> dict[str, Any] | None:
    return None if options is None else asdict(options) | {"schedule": list(options.schedule)}


def report_to_dict(report: EvalReport) -> dict[str, Any]:
    """The report as JSON-safe builtins (no NaN, tuples as lists), matching REPORT_SCHEMA."""
    return {
        "schema": SCHEMA_VERSION, "model": report.model, "engine": report.engine, "preset": report.preset,
        "options": _options_dict(report.options), "device": report.device, "dtype": report.dtype,
        "batch_size": report.batch_size,
        "counts": {"examples": report.n_examples, "evaluated": len(report.utterances),
                   "skipped": dict(report.skipped)},
        "overall": _metrics_dict(report.overall),
        "by_subset": {s: _metrics_dict(m) for s, m in report.by_subset.items()},
        "by_bucket": {b: _metrics_dict(m) for b, m in report.by_bucket.items()},
        "by_subset_bucket": {s: {b: _metrics_dict(m) for b, m in d.items()}
                             for s, d in report.by_subset_bucket.items()},
        "utterances": [asdict(u) | {"candidates": list(u.candidates)} for u in report.utterances],
    }


_INT = {"type": "integer", "minimum": 0}
_SECONDS = {"type": "number", "minimum": 0}
_RATE = {"type": ["number", "null"], "minimum": 0}  # null: zero denominator
_STR = {"type": "string"}


def _object(properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(properties), "properties": properties,
            "additionalProperties": False} | extra


_METRICS_SCHEMA = _object({f.name: _INT if f.type == "int" else _SECONDS for f in fields(Metrics)}
                          | {name: _RATE for name in DERIVED} | {"overhead_s": _SECONDS})
_BUCKETS_SCHEMA = {"type": "object", "properties": {b: _METRICS_SCHEMA for b in BUCKETS},
                   "additionalProperties": False}
_UTTERANCE_SCHEMA = _object(
    {f.name: _INT if f.type == "int" else _SECONDS if f.type == "float" else _STR for f in fields(Utterance)}
    | {"bucket": {"type": "string", "enum": list(BUCKETS)}, "confidence": {"type": "number"},
       "candidates": {"type": "array", "items": _STR}})
_OPTIONS_SCHEMA = {"type": ["object", "null"], "required": ["k", "steps", "schedule"],
                   "properties": {"k": _INT, "steps": _INT, "schedule": {"type": "array", "items": _SECONDS}}}

REPORT_SCHEMA: dict[str, Any] = _object({
    "schema": {"const": SCHEMA_VERSION},
    "model": _STR, "engine": _STR, "preset": {"type": ["string", "null"]}, "options": _OPTIONS_SCHEMA,
    "device": _STR, "dtype": _STR, "batch_size": {"type": "integer", "minimum": 1},
    "counts": _object({"examples": _INT, "evaluated": _INT,
                       "skipped": {"type": "object", "additionalProperties": _INT}}),
    "overall": _METRICS_SCHEMA,
    "by_subset": {"type": "object", "additionalProperties": _METRICS_SCHEMA},
    "by_bucket": _BUCKETS_SCHEMA,
    "by_subset_bucket": {"type": "object", "additionalProperties": _BUCKETS_SCHEMA},
    "utterances": {"type": "array", "items": _UTTERANCE_SCHEMA},
}, **{"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "whisfusion evaluation report"})
"""JSON Schema (draft 2020-12) of `report_to_dict`'s output; `validate_report_dict` checks it."""

_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str), "null": lambda v: v is None,
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
}


def _problems(value: Any, schema: dict[str, Any], where: str) -> list[str]:
    """What is wrong with `value` under the subset of JSON Schema that REPORT_SCHEMA uses."""
    types = schema.get("type")
    if types is not None and not any(_JSON_TYPES[t](value) for t in ([types] if isinstance(types, str) else types)):
        return [f"{where}: expected {types}, got {type(value).__name__} {value!r:.40}"]
    if "const" in schema and value != schema["const"]:
        return [f"{where}: expected {schema['const']!r}, got {value!r:.40}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r:.40} not in {schema['enum']}"]
    if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
        return [f"{where}: {value} < {schema['minimum']}"]
    out = []
    if isinstance(value, dict):
        out += [f"{where}: missing {key!r}" for key in schema.get("required", []) if key not in value]
        props, extra = schema.get("properties", {}), schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                out += _problems(item, props[key], f"{where}.{key}")
            elif extra is False:
                out.append(f"{where}: unexpected {key!r}")
            elif isinstance(extra, dict):
                out += _problems(item, extra, f"{where}.{key}")
    if isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            out += _problems(item, schema["items"], f"{where}[{i}]")
    return out


def validate_report_dict(d: dict[str, Any]) -> None:
    """Checks `d` against REPORT_SCHEMA.

    Raises:
        ValueError: listing every problem found (path: what is wrong).
    """
    problems = _problems(d, REPORT_SCHEMA, "$")
    if problems:
        raise ValueError(f"{len(problems)} problem(s) in the report: " + "; ".join(problems[:20]))

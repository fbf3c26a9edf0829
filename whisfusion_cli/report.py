"""What an evaluation measured: per-utterance rows, batch timings, corpus-level metrics grouped
by subset and duration bucket, and the report's JSON form and schema.

Rates are corpus-level, total edits / total reference words (or characters), never a mean of
per-utterance rates. The oracle WER takes, for every utterance, the PDD candidate with the fewest
word errors (the AR baseline has one: oracle = WER).

Speed comes from the model's stopwatch deltas around each batch: encode, decode, and overhead =
wall - encode - decode, where wall spans loading the batch's audio (ffmpeg), the log-mel and the
batching. RTF = wall / audio seconds, RTFx its inverse; decoder tokens/s = tokens emitted /
decode seconds.

Buckets are closed on the right, (0, 10], (10, 20], (20, 30] s: exactly 10.0 s is in "0-10", and
30.0 s (the longest one encoder window holds) in "20-30".

Torch-free.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from .config import DecodingOptions
from .data import MAX_DURATION_S

__all__ = ["BUCKETS", "DERIVED", "REPORT_SCHEMA", "SCHEMA_VERSION", "BatchTiming", "EvalReport", "Metrics",
           "Utterance", "bucket_of", "report_to_dict", "summarize", "summarize_where", "validate_report_dict"]

SCHEMA_VERSION = "whisfusion.eval/1"
BUCKETS: dict[str, float] = {"0-10": 10.0, "10-20": 20.0, "20-30": 30.0}  # name -> upper edge in s, inclusive


def bucket_of(duration: float) -> str:
    """The duration bucket, closed on the right: 10.0 s -> "0-10", 10.01 s -> "10-20".

    Raises:
        ValueError: a negative duration or one over 30 s.
    """
    if not 0.0 <= duration <= MAX_DURATION_S:
        raise ValueError(f"duration {duration} s is outside [0, {MAX_DURATION_S}]")
    return next(name for name, upper in BUCKETS.items() if duration <= upper)


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


def summarize_where(rows: Sequence[Utterance], timings: Sequence[BatchTiming], subset: str | None = None,
                     bucket: str | None = None) -> Metrics:
    def keep(s: str, b: str) -> bool:
        return (subset is None or s == subset) and (bucket is None or b == bucket)

    return summarize([r for r in rows if keep(r.subset, r.bucket)], [t for t in timings if keep(t.subset, t.bucket)])



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

"""Reusing an earlier run's work: a long file's finished windows, and transcripts already written.

Both are trusted only under the same *run key*: a digest of the model (its name, and for a model
folder the sizes and times of its files), the settings that change the text (decoding options,
windowing, word timestamps, language) and the media file (its size and the SHA-256 of its first
and last MiB; not its time, so a copied file still matches).

* **Sidecar** `<output stem>.partial.jsonl`, beside the file's outputs: a header line
  {"whisfusion_partial": 1, "key": ..., "duration": ...}, then one line per finished window
  {"i", "start", "end", "span_s", "text", "confidence", "n_tokens", "words"}, appended and flushed
  after every batch while the file is transcribed, removed once its outputs are written. A rerun
  continues from the windows it holds; one under another key is ignored and replaced; a torn
  last line (a kill mid-write) is dropped.
* **JSON**: `format_json` records the run key, so a rerun asking for another format writes it
  from `<stem>.json` (segments, words, times to the millisecond) instead of transcribing again.

PDD samples with a generator seeded per batch, so a window's draw depends on its batch: a resumed
file's text is the uninterrupted run's when the batches line up (one file, the same batch size:
kept windows are whole batches), else an equally likely draw.

Stdlib only (torch-free): records are plain dicts, turned into results by transcribe.py.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .transcript import Transcript, Word, parse_json, write_atomic

__all__ = ["PARTIAL_SUFFIX", "Kept", "append_windows", "load_json", "load_sidecar", "partial_path",
           "restart_sidecar", "result_fields", "run_key", "same_window", "window_row"]

PARTIAL_SUFFIX = ".partial.jsonl"
FORMAT_VERSION = 1  # the sidecar's header says which layout follows
HASH_BYTES = 1 << 20  # media bytes hashed at each end of the file
WEIGHT_SUFFIXES = frozenset({".safetensors", ".bin", ".pt"})  # a model folder's weight files


def partial_path(stem: Path) -> Path:
    """Where the sidecar of the outputs `stem`.* goes: `stem`.partial.jsonl."""
    return stem.with_name(stem.name + PARTIAL_SUFFIX)


def media_fingerprint(path: Path) -> dict[str, Any]:
    """The media file's size and the SHA-256 of its first and last HASH_BYTES."""
    digest = hashlib.sha256()
    size = path.stat().st_size
    with path.open("rb") as f:
        digest.update(f.read(HASH_BYTES))
        if size > HASH_BYTES:
            f.seek(max(HASH_BYTES, size - HASH_BYTES))
            digest.update(f.read(HASH_BYTES))
    return {"size": size, "sha256": digest.hexdigest()}


def model_fingerprint(name: str) -> list[list[Any]]:
    """[file name, size, mtime_ns] of the weights and config.json in the model folder `name` ([] for a
    hub repo id or no name), so weights retrained in place do not pass for the old ones."""
    folder = Path(name)
    if not name or not folder.is_dir():
        return []
    files = [p for p in sorted(folder.iterdir()) if p.suffix in WEIGHT_SUFFIXES or p.name == "config.json"]
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files if p.is_file()]


def run_key(model_name: str, settings: Mapping[str, Any], media: Path) -> str:
    """The digest that says two runs give the same text for `media` (see the module docstring).

    Raises:
        OSError: the media file cannot be read.
    """
    parts = {"model": model_name, "weights": model_fingerprint(model_name), "settings": settings,
             "media": media_fingerprint(media)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class Kept:
    """What a sidecar holds under the right key."""

    windows: dict[int, dict[str, Any]]  # window index -> its line (start, end, span_s, text, ...)
    duration: float  # seconds of audio in the file

    @property
    def done_s(self) -> float:
        """Audio seconds the kept windows cover (each window's span runs from the previous one's end)."""
        return sum(float(w["span_s"]) for w in self.windows.values())


def load_sidecar(path: Path, key: str) -> Kept | None:
    """The windows kept in `path` under `key`; None if there is none, or it is unreadable or stale."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        header = json.loads(lines[0]) if lines else {}
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if header.get("whisfusion_partial") != FORMAT_VERSION or header.get("key") != key:
        return None
    windows: dict[int, dict[str, Any]] = {}
    for line in lines[1:]:
        try:
            row = json.loads(line)
            windows[int(row["i"])] = row
        except (ValueError, KeyError, TypeError):  # a torn line: the run was killed while writing it
            continue
    return Kept(windows, float(header.get("duration", 0.0)))


def restart_sidecar(path: Path, key: str, duration: float, kept: Kept | None) -> None:
    """Rewrites `path` to hold only the header and the `kept` windows (none: removes it), so appends
    follow whole lines and a stale sidecar is gone."""
    if not kept or not kept.windows:
        path.unlink(missing_ok=True)
        return
    write_atomic(path, _header(key, duration) + "".join(_line(r) for _, r in sorted(kept.windows.items())))


def append_windows(path: Path, key: str, duration: float, rows: Iterable[Mapping[str, Any]]) -> None:
    """Appends finished windows' lines (header first if `path` is new) and flushes them to disk.

    Raises:
        OSError: the sidecar cannot be written (the caller goes on without it).
    """
    text = "".join(_line(r) for r in rows)
    if not text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8", newline="") as f:
        if f.tell() == 0:
            f.write(_header(key, duration))
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def load_json(path: Path, key: str) -> Transcript | None:
    """The transcript in `path` if this package wrote it under `key`; None otherwise."""
    try:
        transcript = parse_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return transcript if transcript.run_key == key else None


def window_row(i: int, start: float, end: float, span_s: float, result: Any) -> dict[str, Any]:
    """The sidecar line of window `i` decoded as `result` (an asr.WindowResult: its text, confidence,
    token count and words, times from the window's start)."""
    return {"i": i, "start": start, "end": end, "span_s": span_s, "text": result.text,
            "confidence": result.confidence, "n_tokens": result.n_tokens,
            "words": [[w.word, w.start, w.end, w.probability] for w in result.words]}


def result_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """The WindowResult fields a sidecar line keeps (the k candidates are not kept)."""
    return {"text": row["text"], "confidence": row["confidence"], "n_tokens": int(row.get("n_tokens", 0)),
            "words": tuple(Word(*w) for w in row.get("words", ()))}


def same_window(start: float, end: float, row: Mapping[str, Any]) -> bool:
    """Whether a kept line is the window [start, end) of this run's windowing."""
    return abs(start - float(row["start"])) < 1e-6 and abs(end - float(row["end"])) < 1e-6


def _header(key: str, duration: float) -> str:
    return _line({"whisfusion_partial": FORMAT_VERSION, "key": key, "duration": round(duration, 6)})


def _line(row: Mapping[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"

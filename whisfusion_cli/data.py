"""Speech/text examples from JSONL manifests and LibriSpeech-layout folders.

A manifest line is `{"audio": path, "text": ..., "duration": seconds}` (relative audio paths are
resolved against the manifest's folder). A LibriSpeech root holds
`<subset>/<speaker>/<chapter>/*.flac` with one `<speaker>-<chapter>.trans.txt` per chapter.
Bad rows are skipped and counted, never fatal.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import WhisfusionError

if TYPE_CHECKING:
    import numpy as np

MAX_DURATION_S = 30.0  # one encoder window


@dataclass(frozen=True)
class Example:
    """One utterance."""

    audio: Path
    text: str
    duration: float | None = None  # seconds; None when the source does not say
    subset: str = ""  # e.g. "test-clean", or the manifest's stem


def _check(ex: Example, skipped: Counter) -> bool:
    if not ex.text.strip():
        skipped["empty_text"] += 1
    elif not ex.audio.is_file():
        skipped["missing_audio"] += 1
    elif ex.duration is not None and not 0 < ex.duration <= MAX_DURATION_S:
        skipped["bad_duration"] += 1
    else:
        return True
    return False


def subset_of(row: dict, field: str | None, groups: Sequence[tuple[str, str]], default: str) -> str:
    """A manifest row's subset: `default` without `field`; else the row's `field` up to its first ':'
    (dev-real's speakers name their corpus so), renamed by the first of `groups` (NAME, PATTERN) whose
    glob PATTERN it matches (a leading '!' matches what the rest does not)."""
    if field is None:
        return default
    value = str(row.get(field, "")).split(":")[0]
    for name, pattern in groups:
        if fnmatchcase(value, pattern.removeprefix("!")) != pattern.startswith("!"):
            return name
    return value


def read_manifest(path: str | Path, subset_by: str | None = None,
                  groups: Sequence[tuple[str, str]] = ()) -> tuple[list[Example], Counter]:
    """Examples of a JSONL manifest and the count of skipped rows by reason; each example's subset is
    the manifest's stem, or with `subset_by` a field of its row (`subset_of`)."""
    path = Path(path)
    if not path.is_file():
        raise WhisfusionError(f"{path}: no such manifest")
    examples, skipped = [], Counter()
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            audio = Path(row["audio"])
            duration = row.get("duration")
            ex = Example(audio if audio.is_absolute() else path.parent / audio, str(row.get("text") or ""),
                         None if duration is None else float(duration), subset_of(row, subset_by, groups, path.stem))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            skipped["bad_row"] += 1
            continue
        if _check(ex, skipped):
            examples.append(ex)
    return examples, skipped


def librispeech_subsets(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any(p.glob("*/*/*.trans.txt")))


def read_librispeech(root: str | Path, subsets: list[str] | None = None) -> tuple[list[Example], Counter]:
    """Examples of a LibriSpeech-layout root (all subsets found, or the ones named)."""
    root = Path(root)
    if not root.is_dir():
        raise WhisfusionError(f"{root}: no such LibriSpeech folder")
    names = subsets or librispeech_subsets(root)
    examples, skipped = [], Counter()
    for subset in names:
        if not (root / subset).is_dir():
            raise WhisfusionError(f"{root / subset}: no such subset (found: {', '.join(librispeech_subsets(root))})")
        for trans in sorted((root / subset).glob("*/*/*.trans.txt")):
            for line in trans.read_text().splitlines():
                key, _, text = line.strip().partition(" ")
                ex = Example(trans.parent / f"{key}.flac", text, None, subset)
                if key and _check(ex, skipped):
                    examples.append(ex)
    return examples, skipped


def read_sources(sources: list[str | Path]) -> tuple[list[Example], Counter]:
    """Mixes any number of manifests (*.jsonl) and LibriSpeech roots (folders)."""
    examples, skipped = [], Counter()
    for src in sources:
        exs, sk = read_manifest(src) if str(src).endswith((".jsonl", ".json")) else read_librispeech(src)
        examples += exs
        skipped += sk
    return examples, skipped


def split_examples(examples: list[Example], val_fraction: float,
                   seed: int = 0) -> tuple[list[Example], list[Example]]:
    """A deterministic held-out split: (train, val), each in the input order.

    The `round(n * val_fraction)` examples (at least one when the fraction is > 0 and n > 1) whose
    hash of (seed, audio path, text) ranks lowest go to validation, so the split depends on the
    examples themselves, not on their order or on the machine.
    """
    import hashlib

    if val_fraction <= 0 or len(examples) < 2:
        return list(examples), []
    n_val = min(len(examples) - 1, max(1, round(len(examples) * val_fraction)))
    rank = sorted(range(len(examples)), key=lambda i: hashlib.sha1(
        f"{seed}\0{examples[i].audio}\0{examples[i].text}".encode()).hexdigest())
    held = set(rank[:n_val])
    return ([ex for i, ex in enumerate(examples) if i not in held],
            [ex for i, ex in enumerate(examples) if i in held])


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The shuffled example order of one epoch: the same on every rank, machine and resume."""
    import random

    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def micro_batch_span(micro: int, batch_size: int, rank: int = 0, world_size: int = 1) -> tuple[int, int]:
    """Positions [start, stop) in an epoch's order of one rank's share of global micro-batch `micro`.

    Global micro-batch m is positions [m * batch_size * world_size, (m + 1) * ...); rank r takes
    the r-th `batch_size` slice of it (DistributedSampler-like, without padding: an epoch's tail
    that does not fill a whole global micro-batch is dropped, so every rank steps in lockstep).
    """
    start = (micro * world_size + rank) * batch_size
    return start, start + batch_size


LONG_PAUSE_S = 0.5  # the silence between clips joined into a long evaluation window


def long_windows(durations: list[float], low: float = 25.0, high: float = 30.0,
                 pause_s: float = LONG_PAUSE_S) -> list[list[int]]:
    """Clips grouped into long windows of `low`..`high` seconds (pauses included), first fit in order.

    Each window takes the earliest unused clip, then every later unused clip that still fits, until
    it reaches `low` seconds; the dense 25-30 s windows most of a long file is cut into, made from
    short clips whose references are known. A window that cannot reach `low` keeps what it has.
    """
    unused = list(range(len(durations)))
    windows: list[list[int]] = []
    while unused:
        window = [unused.pop(0)]
        length = durations[window[0]]
        i = 0
        while length < low and i < len(unused):
            more = pause_s + durations[unused[i]]
            if length + more <= high:
                length += more
                window.append(unused.pop(i))
            else:
                i += 1
        windows.append(window)
    return windows


def join_clips(clips: Sequence[tuple[np.ndarray, str]]) -> list[tuple[np.ndarray, str]]:
    """(audio, text) clips at 16 kHz joined by `long_windows` into 25-30 s windows with LONG_PAUSE_S
    of silence between clips: each window's audio and its clips' texts, in order."""
    import numpy as np

    from .audio import SAMPLE_RATE

    gap = np.zeros(round(LONG_PAUSE_S * SAMPLE_RATE), np.float32)
    return [(np.concatenate([x for i in window for x in (gap, clips[i][0])][1:]),
             " ".join(clips[i][1] for i in window))
            for window in long_windows([len(audio) / SAMPLE_RATE for audio, _ in clips])]


def join_long(examples: Sequence[Example], out_dir: Path) -> list[Example]:
    """The examples as `clips/<subset>`, then each subset's clips, and all of them when there are
    several subsets, joined by `join_clips` (16 kHz WAVs written to `out_dir`) as `long/<subset>`
    and `long/all`. Clips that cannot be read are left out of the windows (the evaluation counts
    them as it loads them)."""
    from .audio import SAMPLE_RATE, load_audio, write_wav
    from .errors import AudioError

    audio: dict[Path, np.ndarray] = {}
    for ex in examples:
        try:
            audio[ex.audio] = load_audio(ex.audio)
        except AudioError:
            pass
    subsets = list(dict.fromkeys(ex.subset for ex in examples))
    parts = [(s, [ex for ex in examples if ex.subset == s and ex.audio in audio]) for s in subsets]
    if len(subsets) > 1:
        parts.append(("all", [ex for ex in examples if ex.audio in audio]))
    out = [replace(ex, subset=f"clips/{ex.subset}") for ex in examples]
    for name, part in parts:
        for n, (joined, text) in enumerate(join_clips([(audio[ex.audio], ex.text) for ex in part])):
            path = write_wav(out_dir / f"long-{name.replace('/', '_')}-{n:04d}.wav", joined)
            out.append(Example(path, text, len(joined) / SAMPLE_RATE, f"long/{name}"))
    return out

"""Files in, transcripts out: media discovery, windows, cross-file batches, atomic writes.

A pipeline of named steps driven by one generator (`transcribe_files`) whose events feed the
CLI's progress bar: audio of the next files is decoded by ffmpeg in background threads while
the GPU works, windows (≤ 30 s, cut at pauses) from one or many files fill each batch, and a
file's outputs are written (atomically) as soon as its last window is decoded.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .asr import ASRModel, WhisfusionASR, WhisperASR, WindowResult, load_model
from .audio import SAMPLE_RATE, load_audio
from .config import DecodingOptions
from .errors import AudioError, WhisfusionError
from .segment import SegmentOptions, Window, split_windows
from .transcript import Segment, Transcript, output_paths, write_transcript

__all__ = ["ASRModel", "WhisfusionASR", "WhisperASR", "WindowResult", "load_model", "MEDIA_EXTENSIONS",
           "Job", "TranscribeOptions", "collect_jobs", "transcribe_files", "decode_with_backoff"]
log = logging.getLogger("whisfusion_cli")

MEDIA_EXTENSIONS = frozenset({
    ".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".oga", ".opus", ".wma", ".aif", ".aiff", ".amr",
    ".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".wmv", ".mpg", ".mpeg", ".ts", ".3gp",
})
PREFETCH_FILES = 2  # files decoded by ffmpeg ahead of the GPU


@dataclass(frozen=True)
class Job:
    """One input file and where its outputs go (`stem` + ".txt", ".srt", ...)."""

    source: Path
    stem: Path


@dataclass(frozen=True)
class TranscribeOptions:
    formats: tuple[str, ...] = ("txt",)
    overwrite: bool = False
    batch_size: int = 16  # windows per decoder batch (each x k candidates)
    write: bool = True  # False: only yield transcripts (e.g. the CLI prints to stdout)
    decoding: DecodingOptions | None = None  # None: the model's default preset
    segment: SegmentOptions = field(default_factory=SegmentOptions)


@dataclass(frozen=True)
class FileStarted:
    job: Job
    duration: float  # seconds of audio


@dataclass(frozen=True)
class WindowsDone:
    job: Job
    seconds: float  # audio seconds just transcribed


@dataclass(frozen=True)
class FileDone:
    job: Job
    transcript: Transcript | None  # None when skipped
    paths: tuple[Path, ...] = ()
    skipped: bool = False
    warning: str | None = None
    write_s: float = 0.0


@dataclass(frozen=True)
class FileFailed:
    job: Job
    error: str


Event = FileStarted | WindowsDone | FileDone | FileFailed


def collect_jobs(inputs: Sequence[str | Path], output_dir: str | Path | None = None) -> list[Job]:
    """Files as given, folders searched recursively for media (sorted); outputs beside each input
    or under `output_dir`, mirroring the tree below each input folder.

    Raises:
        AudioError: an input does not exist.
    """
    jobs: list[Job] = []
    out = Path(output_dir) if output_dir is not None else None
    for raw in inputs:
        src = Path(raw)
        if src.is_dir():
            files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_EXTENSIONS)
            jobs += [Job(f, (out / f.relative_to(src) if out else f).with_suffix("")) for f in files]
        elif src.is_file():
            jobs.append(Job(src, (out / src.name if out else src).with_suffix("")))
        else:
            raise AudioError(f"{src}: no such file or folder")
    seen: set[Path] = set()
    jobs = [j for j in jobs if not (j.source.resolve() in seen or seen.add(j.source.resolve()))]
    return _distinct_stems(jobs)


def _distinct_stems(jobs: list[Job]) -> list[Job]:
    """Keeps the media suffix in the stem of files that would share outputs (clip.mp3 and clip.wav
    write clip.mp3.txt and clip.wav.txt), so no transcript overwrites another's.

    Raises:
        WhisfusionError: two inputs still map to the same outputs (same name, mirrored to one -o).
    """
    counts = Counter(j.stem for j in jobs)
    jobs = [Job(j.source, j.stem.with_name(j.source.name)) if counts[j.stem] > 1 else j for j in jobs]
    owners: dict[Path, Path] = {}
    for j in jobs:
        if owners.setdefault(j.stem, j.source) != j.source:
            raise WhisfusionError(f"{owners[j.stem]} and {j.source} would write the same outputs "
                                  f"{j.stem}.*; transcribe them in separate runs")
    return jobs


def outputs_exist(job: Job, formats: Iterable[str]) -> bool:
    return all(p.exists() for p in output_paths(job.stem, formats).values())


def decode_with_backoff(model: ASRModel, windows: list[np.ndarray],
                        options: DecodingOptions | None) -> list[WindowResult]:
    """Decodes a batch; on CUDA out-of-memory, halves it and retries (down to one window)."""
    try:
        return model.decode_windows(windows, options)
    except torch.cuda.OutOfMemoryError:
        if len(windows) == 1:
            raise
        torch.cuda.empty_cache()
        half = len(windows) // 2
        log.warning("CUDA out of memory at %d windows: retrying as %d + %d", len(windows), half,
                    len(windows) - half)
        return (decode_with_backoff(model, windows[:half], options)
                + decode_with_backoff(model, windows[half:], options))


@dataclass(eq=False)  # hashed by identity
class _FileState:
    job: Job
    audio: np.ndarray
    windows: list[Window]
    results: dict[int, WindowResult] = field(default_factory=dict)
    load_s: float = 0.0


def _load(job: Job) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    return load_audio(job.source), time.perf_counter() - t0


def _prefetch(jobs: list[Job]) -> Iterator[tuple[Job, Future]]:
    """Yields (job, future of (audio, seconds)) with up to PREFETCH_FILES decodes running ahead."""
    with ThreadPoolExecutor(max_workers=PREFETCH_FILES) as pool:
        futures: list[tuple[Job, Future]] = []
        for job in jobs:
            futures.append((job, pool.submit(_load, job)))
            if len(futures) > PREFETCH_FILES:
                yield futures.pop(0)
        yield from futures


def _finish(state: _FileState, model: ASRModel, options: TranscribeOptions) -> FileDone | FileFailed:
    segments = tuple(Segment(i, w.start, w.end, state.results[i].text, state.results[i].confidence)
                     for i, w in enumerate(state.windows))
    decoding = options.decoding or model.options()  # None: the model's default preset (PDD) or AR
    preset = None if decoding is None or model.engine != "pdd" else _preset_label(decoding)
    transcript = Transcript(segments, len(state.audio) / SAMPLE_RATE, model=model.name, preset=preset,
                            timings={"load_s": round(state.load_s, 4)})
    warning = None if state.windows else ("no speech found (silent or empty audio)"
                                          + (": wrote empty outputs" if options.write else ""))
    if not options.write:
        return FileDone(state.job, transcript, (), warning=warning)
    t0 = time.perf_counter()
    try:
        paths = write_transcript(transcript, state.job.stem, options.formats)
    except OSError as e:
        return FileFailed(state.job, f"cannot write outputs: {e.strerror or e}")
    return FileDone(state.job, transcript, tuple(paths), warning=warning, write_s=time.perf_counter() - t0)


def _preset_label(options: DecodingOptions) -> str:
    return options.preset_name or f"k={options.k},steps={options.steps}"


def _run_batch(queue: list[tuple[_FileState, int]], model: ASRModel,
               options: TranscribeOptions) -> Iterator[Event]:
    """Decodes the queued windows (in place: the queue is emptied) and finishes completed files."""
    batch = list(queue)
    queue.clear()
    results = decode_with_backoff(model, [s.windows[i].slice(s.audio) for s, i in batch], options.decoding)
    for (state, i), result in zip(batch, results):
        state.results[i] = result
        yield WindowsDone(state.job, state.windows[i].duration)
    for state in dict.fromkeys(s for s, _ in batch):
        if len(state.results) == len(state.windows):
            yield _finish(state, model, options)


def transcribe_files(model: ASRModel, jobs: list[Job], options: TranscribeOptions) -> Iterator[Event]:
    """Transcribes every job; a failing file yields FileFailed and the rest continue.

    Files whose outputs all exist are skipped unless `options.overwrite` (a rerun resumes).
    """
    todo = [j for j in jobs if options.overwrite or not options.write or not outputs_exist(j, options.formats)]
    for job in jobs:
        if job not in todo:
            yield FileDone(job, None, skipped=True)
    queue: list[tuple[_FileState, int]] = []
    for job, future in _prefetch(todo):
        try:
            audio, load_s = future.result()
        except WhisfusionError as e:
            yield FileFailed(job, str(e))
            continue
        state = _FileState(job, audio, split_windows(audio, options.segment), load_s=load_s)
        yield FileStarted(job, len(audio) / SAMPLE_RATE)
        if not state.windows:
            yield _finish(state, model, options)
        queue += [(state, i) for i in range(len(state.windows))]
        while len(queue) >= options.batch_size:
            rest = queue[options.batch_size:]
            del queue[options.batch_size:]
            yield from _run_batch(queue, model, options)
            queue += rest
    if queue:
        yield from _run_batch(queue, model, options)

"""Files in, transcripts out: media discovery, windows, cross-file batches, atomic writes.

A pipeline of named steps driven by one generator (`transcribe_files`) whose events feed the
CLI's progress bar: audio of the next files is decoded by ffmpeg in background threads while
the GPU works, windows (≤ 30 s, cut at pauses) from one or many files fill each batch, and a
file's outputs are written (atomically) as soon as its last window is decoded.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from .asr import ASRModel, WhisfusionASR, WhisperASR, WindowResult, load_model
from .audio import SAMPLE_RATE, load_audio
from .checkpoint import resolve_device
from .config import DecodingOptions
from .errors import AudioError, ConfigError, WhisfusionError
from .segment import SegmentOptions, Window, split_windows
from .transcript import Segment, SubtitleOptions, Transcript, output_paths, window_segments, write_transcript

__all__ = ["ASRModel", "WhisfusionASR", "WhisperASR", "WindowResult", "load_model", "MEDIA_EXTENSIONS",
           "Job", "TranscribeOptions", "STDIN", "check_device", "set_language", "spool_stdin", "find_jobs",
           "collect_jobs", "transcribe_files", "decode_with_backoff"]
log = logging.getLogger("whisfusion_cli")

MEDIA_EXTENSIONS = frozenset({
    ".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".oga", ".opus", ".wma", ".aif", ".aiff", ".amr",
    ".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".wmv", ".mpg", ".mpeg", ".ts", ".3gp",
})
PREFETCH_FILES = 2  # files decoded by ffmpeg ahead of the GPU
STDIN = Path("-")  # the input that means "read the media from standard input"
STDIN_STEM = "stdin"  # its outputs: stdin.txt, stdin.srt, ... (in -o or the working folder)
ENGLISH = frozenset({"en", "english"})


@dataclass(frozen=True)
class Job:
    """One input file and where its outputs go (`stem` + ".txt", ".srt", ...)."""

    source: Path
    stem: Path
    label: str = ""  # how messages name the input when its path would mislead ("-": piped media)

    def named(self, message: str) -> str:
        """`message` with the input's path given as the user knows it."""
        return message.replace(str(self.source), self.label) if self.label else message


@dataclass(frozen=True)
class TranscribeOptions:
    formats: tuple[str, ...] = ("txt",)
    overwrite: bool = False
    batch_size: int | None = None  # windows per decoder batch (each x k candidates); None: sized by memory
    write: bool = True  # False: only yield transcripts (e.g. the CLI prints to stdout)
    decoding: DecodingOptions | None = None  # None: the model's default preset
    segment: SegmentOptions = field(default_factory=SegmentOptions)
    language: str = "en"  # written into each transcript (see `set_language`)
    word_timestamps: bool = False  # time every word; segments become sentence-sized, cues follow words
    subtitles: SubtitleOptions = field(default_factory=SubtitleOptions)  # srt/vtt cue layout


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


def check_device(device: str) -> torch.device:
    """The --device string as a torch.device this machine can run on.

    Raises:
        ConfigError: a device name torch does not know (gpu), or one this machine lacks (mps, cuda:3).
        CheckpointError: cuda asked for without a CUDA GPU.
    """
    try:
        dev = resolve_device(device)
    except RuntimeError:  # torch.device("gpu"): "Expected one of cpu, cuda, ... device type"
        raise ConfigError(f"unknown device {device!r}; choose auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    mps = dev.type == "mps" and torch.backends.mps.is_available()
    if dev.type not in ("cpu", "cuda") and not mps:
        raise ConfigError(f"device {device!r} is not available here; choose auto, cpu, cuda or cuda:N")
    return dev


def set_language(model: ASRModel, language: str) -> str:
    """Checks that `model` transcribes `language` and returns its code; prompts a multilingual
    Whisper baseline with it.

    Raises:
        ConfigError: a language other than English for an English-only model (every whisfusion
            model, the bundled one included), or one a multilingual Whisper does not know.
    """
    code = language.strip().lower()
    if code in ENGLISH:
        return "en"
    if isinstance(model, WhisperASR) and model.net.decoder.config.is_multilingual:
        try:
            model.prompt = model.tokenizer.whisper_prompt(True, code)
        except WhisfusionError:  # no <|code|> token
            raise ConfigError(f"unknown language {language!r}; give a Whisper language code (de, fr, ...)") \
                from None
        return code
    raise ConfigError(f"language {language!r} is not supported: this model transcribes English only (en)")


def spool_stdin(stream: BinaryIO, folder: str | Path) -> Path:
    """Copies the media piped to standard input into `folder`/stdin (ffmpeg reads it from there).

    Raises:
        AudioError: nothing was piped in.
    """
    path = Path(folder) / STDIN_STEM
    with path.open("wb") as f:
        shutil.copyfileobj(stream, f, 1 << 20)
    if path.stat().st_size == 0:
        raise AudioError("-: standard input is empty (pipe media in: cat clip.flac | whisfusion "
                         "transcribe -)")
    return path


def find_jobs(inputs: Sequence[str | Path], output_dir: str | Path | None = None,
              stdin: Path | None = None) -> tuple[list[Job], list[str]]:
    """Files as given, folders searched recursively for media (sorted); outputs beside each input
    or under `output_dir`, mirroring the tree below each input folder. The input "-" is the file
    `stdin` (see `spool_stdin`), written as stdin.* in `output_dir` or the working folder.

    Returns:
        The jobs, and one message per input that does not exist (the others still run).

    Raises:
        WhisfusionError: two inputs would write the same outputs.
    """
    jobs: list[Job] = []
    missing: list[str] = []
    out = Path(output_dir) if output_dir is not None else None
    for raw in inputs:
        src = Path(raw)
        if src == STDIN and stdin is not None:
            jobs.append(Job(stdin, (out or Path.cwd()) / STDIN_STEM, str(STDIN)))
        elif src.is_dir():
            files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in MEDIA_EXTENSIONS)
            jobs += [Job(f, (out / f.relative_to(src) if out else f).with_suffix("")) for f in files]
        elif src.is_file():
            jobs.append(Job(src, (out / src.name if out else src).with_suffix("")))
        else:
            missing.append(f"{src}: no such file or folder")
    seen: set[Path] = set()
    jobs = [j for j in jobs if not (j.source.resolve() in seen or seen.add(j.source.resolve()))]
    return _distinct_stems(jobs), missing


def collect_jobs(inputs: Sequence[str | Path], output_dir: str | Path | None = None) -> list[Job]:
    """`find_jobs` for callers that want every input to exist.

    Raises:
        AudioError: an input does not exist.
    """
    jobs, missing = find_jobs(inputs, output_dir)
    if missing:
        raise AudioError(missing[0])
    return jobs


def _distinct_stems(jobs: list[Job]) -> list[Job]:
    """Keeps the media suffix in the stem of files that would share outputs (clip.mp3 and clip.wav
    write clip.mp3.txt and clip.wav.txt), so no transcript overwrites another's.

    Raises:
        WhisfusionError: two inputs still map to the same outputs (same name, mirrored to one -o).
    """
    counts = Counter(j.stem for j in jobs)
    jobs = [replace(j, stem=j.stem.with_name(j.source.name)) if counts[j.stem] > 1 else j for j in jobs]
    owners: dict[Path, Path] = {}
    for j in jobs:
        if owners.setdefault(j.stem, j.source) != j.source:
            raise WhisfusionError(f"{owners[j.stem]} and {j.source} would write the same outputs "
                                  f"{j.stem}.*; transcribe them in separate runs")
    return jobs


def outputs_exist(job: Job, formats: Iterable[str]) -> bool:
    return all(p.exists() for p in output_paths(job.stem, formats).values())


def decode_with_backoff(model: ASRModel, windows: list[np.ndarray], options: DecodingOptions | None,
                        word_timestamps: bool = False, vad: str = "energy") -> list[WindowResult]:
    """Decodes a batch; on CUDA out-of-memory, halves it and retries (down to one window)."""
    try:
        if word_timestamps:
            return model.decode_windows(windows, options, word_timestamps=True, vad=vad)
        return model.decode_windows(windows, options)
    except torch.cuda.OutOfMemoryError:
        if len(windows) == 1:
            raise
        torch.cuda.empty_cache()
        half = len(windows) // 2
        log.warning("CUDA out of memory at %d windows: retrying as %d + %d", len(windows), half,
                    len(windows) - half)
        return (decode_with_backoff(model, windows[:half], options, word_timestamps, vad)
                + decode_with_backoff(model, windows[half:], options, word_timestamps, vad))


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
    segments: list[Segment] = []
    for i, w in enumerate(state.windows):
        r = state.results[i]
        segments += window_segments(len(segments), w.start, w.end, r.text, r.confidence, r.words,
                                    options.subtitles.max_silence_s)
    decoding = options.decoding or model.options()  # None: the model's default preset (PDD) or AR
    preset = None if decoding is None or model.engine != "pdd" else _preset_label(decoding)
    transcript = Transcript(segments, len(state.audio) / SAMPLE_RATE, language=options.language,
                            model=model.name, preset=preset, timings={"load_s": round(state.load_s, 4)})
    warning = None if state.windows else ("no speech found (silent or empty audio)"
                                          + (": wrote empty outputs" if options.write else ""))
    if not options.write:
        return FileDone(state.job, transcript, (), warning=warning)
    t0 = time.perf_counter()
    try:
        paths = write_transcript(transcript, state.job.stem, options.formats, options.subtitles)
    except OSError as e:
        return FileFailed(state.job, _write_error(state.job, e))
    return FileDone(state.job, transcript, tuple(paths), warning=warning, write_s=time.perf_counter() - t0)


def _write_error(job: Job, e: OSError) -> str:
    """One line naming the input and the output path that could not be written."""
    where = Path(e.filename2 or e.filename or job.stem.parent)
    if where.name.startswith(".") and where.name.endswith(".tmp"):  # write_atomic's temp file: its folder
        where = where.parent
    return job.named(f"{job.source}: cannot write outputs to {where}: {e.strerror or e}")


def _preset_label(options: DecodingOptions) -> str:
    return options.preset_name or f"k={options.k},steps={options.steps}"


def _run_batch(queue: list[tuple[_FileState, int]], model: ASRModel,
               options: TranscribeOptions) -> Iterator[Event]:
    """Decodes the queued windows (in place: the queue is emptied) and finishes completed files."""
    batch = list(queue)
    queue.clear()
    results = decode_with_backoff(model, [s.windows[i].slice(s.audio) for s, i in batch], options.decoding,
                                  options.word_timestamps, options.segment.vad)
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
    batch_size = options.batch_size or model.batch_size(options.decoding, options.segment.max_window_s)
    log.debug("decoding %d window(s) per batch", batch_size)
    for job, future in _prefetch(todo):
        try:
            audio, load_s = future.result()
        except WhisfusionError as e:
            yield FileFailed(job, job.named(str(e)))
            continue
        state = _FileState(job, audio, split_windows(audio, options.segment), load_s=load_s)
        yield FileStarted(job, len(audio) / SAMPLE_RATE)
        if not state.windows:
            yield _finish(state, model, options)
        queue += [(state, i) for i in range(len(state.windows))]
        while len(queue) >= batch_size:
            rest = queue[batch_size:]
            del queue[batch_size:]
            yield from _run_batch(queue, model, options)
            queue += rest
    if queue:
        yield from _run_batch(queue, model, options)

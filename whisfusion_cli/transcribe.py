"""Files in, transcripts out: windows, cross-file batches, resumable long files, atomic writes.

A pipeline of named steps driven by one generator (`transcribe_files`) whose events feed the
CLI's progress bar: audio of the next files is decoded by ffmpeg in background threads while
the GPU works (and every file's duration is probed ahead, so progress is in audio seconds of the
whole run), windows (≤ 30 s, cut at pauses) from one or many files fill each batch, and a file's
outputs are written (atomically) as soon as its last window is decoded. Until then its finished
windows are appended to a sidecar after every batch, so an interrupted run continues where it
stopped; a file whose json exists gets other formats written from it (resume.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .asr import ASRModel, WhisfusionASR, WhisperASR, WindowResult, load_model
from .audio import SAMPLE_RATE, load_audio, media_duration
from .checkpoint import resolve_device
from .config import DecodingOptions, resolve_decoding_options
from .errors import ConfigError, WhisfusionError
from .jobs import MEDIA_EXTENSIONS, STDIN, Job, collect_jobs, find_jobs, spool_stdin
from .progress import AudioClock, Progress, window_spans
from .resume import (
    Kept,
    append_windows,
    load_json,
    load_sidecar,
    partial_path,
    restart_sidecar,
    result_fields,
    run_key,
    same_window,
    window_row,
)
from .segment import SegmentOptions, Window, split_windows
from .transcript import Segment, SubtitleOptions, Transcript, output_paths, window_segments, write_transcript

__all__ = ["ASRModel", "WhisfusionASR", "WhisperASR", "WindowResult", "load_model", "MEDIA_EXTENSIONS",
           "Job", "TranscribeOptions", "STDIN", "check_device", "set_language", "spool_stdin", "find_jobs",
           "collect_jobs", "transcribe_files", "decode_with_backoff", "kept_partials", "Progress"]
log = logging.getLogger("whisfusion_cli")

PREFETCH_FILES = 2  # files decoded by ffmpeg ahead of the GPU
ENGLISH = frozenset({"en", "english"})


@dataclass(frozen=True)
class TranscribeOptions:
    formats: tuple[str, ...] = ("txt",)
    overwrite: bool = False  # redo files whose outputs exist (a kept sidecar is still continued)
    batch_size: int | None = None  # windows per decoder batch (each x k candidates); None: sized by memory
    write: bool = True  # False: only yield transcripts (e.g. the CLI prints to stdout); no sidecars
    decoding: DecodingOptions | None = None  # None: the model's default preset
    segment: SegmentOptions = field(default_factory=SegmentOptions)
    language: str = "en"  # written into each transcript (see `set_language`)
    word_timestamps: bool = False  # time every word; segments become sentence-sized, cues follow words
    subtitles: SubtitleOptions = field(default_factory=SubtitleOptions)  # srt/vtt cue layout


@dataclass(frozen=True)
class FileStarted:
    job: Job
    duration: float  # seconds of audio
    resumed_s: float = 0.0  # of them, covered by windows an interrupted run kept (not decoded again)


@dataclass(frozen=True)
class WindowsDone:
    job: Job
    seconds: float  # audio seconds just transcribed (the window's own length)


@dataclass(frozen=True)
class FileDone:
    job: Job
    transcript: Transcript | None  # None when skipped
    paths: tuple[Path, ...] = ()
    skipped: bool = False
    warning: str | None = None
    write_s: float = 0.0
    reused: bool = False  # the formats it lacked were written from its json: nothing decoded


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


@dataclass(frozen=True)
class ModelSpec:
    """A model to load and the options to check against it: what `transcribe` and `eval` load, and
    each `--ray` replica (cluster.py)."""

    model: str  # a checkpoint directory (the same path on every node) or a Hugging Face repo id
    device: str = "auto"  # in a GPU replica, "auto" and "cuda" are the GPU Ray gave it
    dtype: str = "auto"
    preset: str | None = None
    overrides: tuple[tuple[str, Any], ...] = ()  # DecodingOptions fields (config.decoding_overrides' items)
    language: str = "en"
    word_timestamps: bool = False

    def load(self) -> tuple[ASRModel, DecodingOptions | None, str]:
        """The model, the decoding options resolved against it (None: its default) and the language code.

        Raises:
            WhisfusionError: the model cannot be loaded, or the options or language do not fit it.
        """
        asr = load_model(self.model, check_device(self.device), self.dtype)
        cfg = asr.cfg if isinstance(asr, WhisfusionASR) else None  # the model's own presets
        options = resolve_decoding_options(self.preset, dict(self.overrides), cfg)
        if isinstance(asr, WhisfusionASR):
            asr.check_options(options or asr.options(), self.word_timestamps)
        return asr, options, set_language(asr, self.language)


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


def _settings(model: ASRModel, options: TranscribeOptions) -> dict[str, Any]:
    """What changes a file's text besides the model and the media: part of every run key."""
    decoding = options.decoding or model.options()
    return {"engine": model.engine, "segment": asdict(options.segment), "language": options.language,
            "word_timestamps": options.word_timestamps, "max_silence_s": options.subtitles.max_silence_s,
            "decoding": None if decoding is None else  # the preset's name is a label only
            {f.name: getattr(decoding, f.name) for f in fields(decoding) if f.compare}}


def _key(job: Job, model: ASRModel, options: TranscribeOptions, settings: dict[str, Any]) -> str:
    """The job's run key, or "" when it has no earlier work to reuse: outputs not written (stdout),
    piped media (a new spool file every run), or a file that cannot be read now."""
    if not options.write or job.label == str(STDIN):
        return ""
    try:
        return run_key(model.name, settings, job.source)
    except OSError:
        return ""


def _reuse(job: Job, model: ASRModel, options: TranscribeOptions,
           settings: dict[str, Any]) -> FileDone | FileFailed | None:
    """A job this run need not decode: all its outputs exist (skipped, unless overwrite), or its json
    does under this run's key (the missing formats are written from it). None: transcribe it."""
    if not options.write or options.overwrite:
        return None
    missing = [fmt for fmt, path in output_paths(job.stem, options.formats).items() if not path.exists()]
    if not missing:
        return FileDone(job, None, skipped=True)
    json_path = output_paths(job.stem, ("json",))["json"]
    key = _key(job, model, options, settings) if json_path.exists() else ""
    transcript = load_json(json_path, key) if key else None
    if transcript is None:
        return None
    t0 = time.perf_counter()
    try:
        paths = write_transcript(transcript, job.stem, missing, options.subtitles)
    except OSError as e:
        return FileFailed(job, _write_error(job, e))
    return FileDone(job, transcript, tuple(paths), write_s=time.perf_counter() - t0, reused=True)


def kept_partials(model: ASRModel, jobs: list[Job],
                  options: TranscribeOptions) -> list[tuple[Job, float, float]]:
    """(job, audio seconds kept, duration) of each job whose finished windows wait in a sidecar for a
    rerun with the same model and options (e.g. after Ctrl-C)."""
    settings, kept = _settings(model, options), []
    for job in jobs:
        path = partial_path(job.stem)
        key = _key(job, model, options, settings) if path.exists() else ""
        sidecar = load_sidecar(path, key) if key else None
        if sidecar is not None and sidecar.windows:
            kept.append((job, sidecar.done_s, sidecar.duration))
    return kept


@dataclass(eq=False)  # hashed by identity
class _FileState:
    job: Job
    audio: np.ndarray
    windows: list[Window]
    results: dict[int, WindowResult] = field(default_factory=dict)
    load_s: float = 0.0
    key: str = ""  # the run key ("": none, see _key)
    keep: bool = False  # finished windows go to the sidecar (off when it cannot be written)
    spans: list[float] = field(default_factory=list)  # audio seconds each window counts for (Progress)

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    def done_s(self) -> float:
        return sum(self.spans[i] for i in self.results) if self.windows else 0.0


def _start(job: Job, audio: np.ndarray, load_s: float, model: ASRModel, options: TranscribeOptions,
           settings: dict[str, Any]) -> _FileState:
    """The file's windows, with those an interrupted run kept in its sidecar already done (a stale
    sidecar is removed)."""
    windows = split_windows(audio, options.segment)
    key = _key(job, model, options, settings)
    state = _FileState(job, audio, windows, load_s=load_s, key=key, keep=bool(key),
                       spans=window_spans(windows, len(audio) / SAMPLE_RATE))
    if not state.keep:
        return state
    path = partial_path(job.stem)
    kept = load_sidecar(path, state.key)
    rows = {i: r for i, r in (kept.windows.items() if kept else ())
            if i < len(windows) and same_window(windows[i].start, windows[i].end, r)}
    state.results.update({i: WindowResult(**result_fields(r)) for i, r in rows.items()})
    try:
        restart_sidecar(path, state.key, state.duration, Kept(rows, state.duration))
    except OSError as e:
        _cannot_keep(state, e)
    return state


def _keep(state: _FileState, indices: list[int]) -> None:
    """Appends the windows just decoded to the file's sidecar (best effort: a failure is logged)."""
    if not state.keep:
        return
    rows = [window_row(i, state.windows[i].start, state.windows[i].end, state.spans[i], state.results[i])
            for i in indices]
    try:
        append_windows(partial_path(state.job.stem), state.key, state.duration, rows)
    except OSError as e:
        _cannot_keep(state, e)


def _cannot_keep(state: _FileState, e: OSError) -> None:
    state.keep = False
    log.warning("%s: cannot keep finished windows for a resume in %s (%s); going on without",
                state.job.named(str(state.job.source)), partial_path(state.job.stem), e.strerror or e)


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A thread pool whose queued work is cancelled when the pipeline stops early (Ctrl-C)."""
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _load(job: Job) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    return load_audio(job.source), time.perf_counter() - t0


def _prefetch(jobs: list[Job]) -> Iterator[tuple[Job, Future]]:
    """Yields (job, future of (audio, seconds)) with up to PREFETCH_FILES decodes running ahead."""
    with _pool(PREFETCH_FILES) as pool:
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
    transcript = Transcript(segments, state.duration, language=options.language, model=model.name,
                            preset=preset, timings={"load_s": round(state.load_s, 4)}, run_key=state.key)
    warning = None if state.windows else ("no speech found (silent or empty audio)"
                                          + (": wrote empty outputs" if options.write else ""))
    if not options.write:
        return FileDone(state.job, transcript, (), warning=warning)
    t0 = time.perf_counter()
    try:
        paths = write_transcript(transcript, state.job.stem, options.formats, options.subtitles)
    except OSError as e:
        return FileFailed(state.job, _write_error(state.job, e))
    if state.key:  # the outputs hold it all now
        with contextlib.suppress(OSError):
            partial_path(state.job.stem).unlink(missing_ok=True)
    return FileDone(state.job, transcript, tuple(paths), warning=warning, write_s=time.perf_counter() - t0)


def _write_error(job: Job, e: OSError) -> str:
    """One line naming the input and the output path that could not be written."""
    where = Path(e.filename2 or e.filename or job.stem.parent)
    if where.name.startswith(".") and where.name.endswith(".tmp"):  # write_atomic's temp file: its folder
        where = where.parent
    return job.named(f"{job.source}: cannot write outputs to {where}: {e.strerror or e}")


def _preset_label(options: DecodingOptions) -> str:
    return options.preset_name or f"k={options.k},steps={options.steps}"


def _run_batch(queue: list[tuple[_FileState, int]], model: ASRModel, options: TranscribeOptions,
               clock: AudioClock) -> Iterator[Event]:
    """Decodes the queued windows (in place: the queue is emptied), keeps them in their files'
    sidecars, and finishes completed files."""
    batch = list(queue)
    queue.clear()
    results = decode_with_backoff(model, [s.windows[i].slice(s.audio) for s, i in batch], options.decoding,
                                  options.word_timestamps, options.segment.vad)
    fresh: dict[_FileState, list[int]] = {}
    for (state, i), result in zip(batch, results):
        state.results[i] = result
        clock.done_s += state.spans[i]
        fresh.setdefault(state, []).append(i)
    for state, indices in fresh.items():  # kept before any event: a consumer may stop at one
        if len(state.results) < len(state.windows):
            _keep(state, indices)
    for state, i in batch:
        yield WindowsDone(state.job, state.windows[i].duration)
    for state in fresh:
        if len(state.results) == len(state.windows):
            yield _finish(state, model, options)
    clock.report()


def transcribe_files(model: ASRModel, jobs: list[Job], options: TranscribeOptions,
                     on_progress: Callable[[Progress], None] | None = None) -> Iterator[Event]:
    """Transcribes every job; a failing file yields FileFailed and the rest continue.

    Files whose outputs all exist are skipped unless `options.overwrite` (a rerun resumes); one
    whose json exists under the same model and options gets its missing formats written from it; a
    file's windows kept in its sidecar by an interrupted run are not decoded again (resume.py).
    `on_progress` gets the audio seconds done and in all (progress.Progress, with an ETA) after
    every file started or failed and every batch.
    """
    settings = _settings(model, options)
    todo: list[Job] = []
    for job in jobs:
        done = _reuse(job, model, options, settings)
        if done is None:
            todo.append(job)
        else:
            yield done
    queue: list[tuple[_FileState, int]] = []
    batch_size = options.batch_size or model.batch_size(options.decoding, options.segment.max_window_s)
    log.debug("decoding %d window(s) per batch", batch_size)
    with _pool(1) as prober:
        clock = AudioClock({job: prober.submit(media_duration, job.source) for job in todo}, on_progress)
        for job, future in _prefetch(todo):
            try:
                audio, load_s = future.result()
            except WhisfusionError as e:
                clock.exact(job, None)
                yield FileFailed(job, job.named(str(e)))
                clock.report()
                continue
            state = _start(job, audio, load_s, model, options, settings)
            clock.exact(job, state.duration)
            clock.resumed_s += state.done_s()
            clock.done_s += state.done_s()
            yield FileStarted(job, state.duration, state.done_s())
            if len(state.results) == len(state.windows):  # no speech, or every window kept
                clock.done_s += state.duration - state.done_s()
                yield _finish(state, model, options)
            queue += [(state, i) for i in range(len(state.windows)) if i not in state.results]
            clock.report()
            while len(queue) >= batch_size:
                rest = queue[batch_size:]
                del queue[batch_size:]
                yield from _run_batch(queue, model, options, clock)
                queue += rest
        if queue:
            yield from _run_batch(queue, model, options, clock)

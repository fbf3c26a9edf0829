"""Progress of a transcription run in audio seconds, with an ETA from the run's own rate.

The total is every file's duration as soon as it is known: probed from the headers in the
background (ffprobe; a WAV's frame count), exact once ffmpeg has decoded the file. A window
counts from the previous window's end (the file's start) to its own end, the last one to the
file's end, so a file's windows add up to its duration and the bar reaches the total.
Stdlib only (torch-free).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

__all__ = ["AudioClock", "Progress", "window_spans"]


class _Span(Protocol):
    start: float
    end: float


@dataclass(frozen=True)
class Progress:
    """Audio seconds of the files this run transcribes: done so far, and in all.

    `total_s` grows as durations become known; files skipped or written from their json are not
    counted, failed ones drop out.
    """

    done_s: float
    total_s: float
    resumed_s: float = 0.0  # of done_s: kept by an interrupted run, not decoded now
    elapsed_s: float = 0.0  # wall seconds since the run started

    @property
    def eta_s(self) -> float | None:
        """Seconds left at this run's rate of audio seconds decoded per wall second; None before any."""
        decoded = self.done_s - self.resumed_s
        if decoded <= 0 or self.elapsed_s <= 0:
            return None
        return max(0.0, self.total_s - self.done_s) * self.elapsed_s / decoded


def window_spans(windows: Sequence[_Span], duration: float) -> list[float]:
    """Seconds each window counts for: from the previous window's end to its own, the last one to
    the file's end ([] for no windows: the file counts whole when it is finished)."""
    ends = [w.end for w in windows[:-1]] + [duration] if windows else []
    return [b - a for a, b in zip([0.0, *ends[:-1]], ends)]


class AudioClock:
    """Audio seconds done and to do, reported to `on_progress`; `probes` are futures of durations
    (None: unknown) per file."""

    def __init__(self, probes: dict[Hashable, Future], on_progress: Callable[[Progress], None] | None = None):
        self.t0 = time.perf_counter()
        self.probes = probes
        self.on_progress = on_progress
        self.known: dict[Hashable, float] = {}
        self.done_s = self.resumed_s = 0.0

    def exact(self, file: Hashable, seconds: float | None) -> None:
        """The file's duration as decoded (None: it failed, and drops out of the total)."""
        self.probes.pop(file, None)
        if seconds is None:
            self.known.pop(file, None)
        else:
            self.known[file] = seconds

    def report(self) -> None:
        """Calls `on_progress` with the progress now (durations probed since the last call included)."""
        if self.on_progress is not None:
            self.on_progress(self.progress())

    def progress(self) -> Progress:
        for file, future in list(self.probes.items()):
            if future.done():
                del self.probes[file]
                seconds = None if future.cancelled() or future.exception() else future.result()
                if seconds:
                    self.known[file] = seconds
        return Progress(self.done_s, sum(self.known.values()), self.resumed_s, time.perf_counter() - self.t0)

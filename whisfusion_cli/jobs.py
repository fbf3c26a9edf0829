"""Inputs to jobs: media files found in the given files and folders, and where each one's outputs go.

Outputs go beside each input or under an output folder that mirrors the input folders; files that
would share outputs get distinct names; media piped to standard input is spooled to a file first.
Stdlib only (torch-free).
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

from .errors import AudioError, WhisfusionError

__all__ = ["MEDIA_EXTENSIONS", "STDIN", "STDIN_STEM", "Job", "collect_jobs", "find_jobs", "spool_stdin"]

MEDIA_EXTENSIONS = frozenset({
    ".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".oga", ".opus", ".wma", ".aif", ".aiff", ".amr",
    ".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".wmv", ".mpg", ".mpeg", ".ts", ".3gp",
})
STDIN = Path("-")  # the input that means "read the media from standard input"
STDIN_STEM = "stdin"  # its outputs: stdin.txt, stdin.srt, ... (in -o or the working folder)


@dataclass(frozen=True)
class Job:
    """One input file and where its outputs go (`stem` + ".txt", ".srt", ...)."""

    source: Path
    stem: Path
    label: str = ""  # how messages name the input when its path would mislead ("-": piped media)

    def named(self, message: str) -> str:
        """`message` with the input's path given as the user knows it."""
        return message.replace(str(self.source), self.label) if self.label else message



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

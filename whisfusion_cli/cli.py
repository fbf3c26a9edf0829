"""The `whisfusion` command: thin typer commands over the library; the only module that prints.

Start-up imports no torch (typer completion re-runs the program on every TAB): commands import
the library inside their bodies. Progress and logs go to stderr so stdout can carry a transcript.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from .config import PRESETS, DecodingOptions, TrainConfig, decoding_overrides, resolve_decoding_options
from .errors import ConfigError, WhisfusionError
from .segment import SegmentOptions
from .transcript import SubtitleOptions, parse_formats


class _FlagsTakeNoValue:
    """Help shows flags bare: this typer labels them "<bool>" as if they took a value (--quiet true)."""

    def get_params(self, ctx: Any) -> list:
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class Command(_FlagsTakeNoValue, TyperCommand):
    pass


class Group(_FlagsTakeNoValue, TyperGroup):
    pass


app = typer.Typer(name="whisfusion", cls=Group, rich_markup_mode="rich", no_args_is_help=True,
                  context_settings={"help_option_names": ["-h", "--help"]}, pretty_exceptions_show_locals=False,
                  help="Fast non-autoregressive speech transcription: a Whisper encoder + a masked-diffusion "
                       "decoder, decoded in a fixed number of parallel steps (Whisfusion, arXiv 2508.07048).")
err = Console(stderr=True)
out = Console(soft_wrap=True, highlight=False, width=None if sys.stdout.isatty() else 160)  # pipes: no squeeze


def fail(message: str, code: int = 1) -> typer.Exit:
    """Prints a one-line error (no traceback) and returns the Exit to raise."""
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def default_model() -> str | None:
    """The model bundled with the package, if this install has one."""
    from . import BUNDLED_MODEL

    return str(BUNDLED_MODEL) if (BUNDLED_MODEL / "config.json").is_file() else None


def setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.ERROR if quiet else logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(console=err, show_path=False)])


def package_version() -> str:
    """The installed distribution's version, else the package's __version__ (a source checkout)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("whisfusion")
    except PackageNotFoundError:
        return getattr(sys.modules[__package__ or "whisfusion_cli"], "__version__", "unknown")


def version_callback(value: bool) -> None:
    if value:
        out.print(f"whisfusion {package_version()}", markup=False)
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                          help="Show the version and exit.")] = False,
) -> None:
    """Transcribe speech with Whisfusion."""


ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Model directory or Hugging Face repo id; a plain Whisper checkpoint runs the "
                          "autoregressive baseline. Default: the bundled model.")]
PresetOpt = Annotated[Optional[str], typer.Option(
    "--preset", "-p", help=f"{', '.join(f'{n} (k={p.k}, N={p.steps})' for n, p in PRESETS.items())}: the "
                           "paper's PDD presets; a model may tune them in its config.json (the bundled one: fast and "
                           "balanced N=4/8 steps, accurate a balanced draft verified by Whisper's decoder; see its "
                           "MODEL_CARD.md). Default: the model's.")]
SelectOpt = Annotated[Optional[str], typer.Option(
    "--select", help="How the k candidates become one text: confidence (the most confident), consensus "
                     "(the one closest to the others), vote (their word-level vote) or rescore (the one "
                     "Whisper's AR decoder finds likeliest; models that ship it); overrides the preset.")]
VerifyOpt = Annotated[Optional[float], typer.Option(
    "--verify", help="Whisper's AR decoder checks the text in a few parallel passes: a "
                                       "token stays if its AR probability is at least this share of the AR's "
                                       "best token's, else the AR's replaces it; 1.0 = Whisper's greedy "
                                       "transcript exactly, 0 = off. Overrides the preset.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA if available), cuda, cuda:N or cpu.")]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16 or fp32.")]
_S = SubtitleOptions()  # subtitle defaults are read from the dataclass, never retyped
_SEG = SegmentOptions()


def check_vad(vad: str) -> SegmentOptions:
    """The window options for `--vad`; ConfigError if unknown or Silero VAD is not installed."""
    from .vad import silero_available

    segment = SegmentOptions(vad=vad)  # type: ignore[arg-type]  # checked in __post_init__
    if vad == "silero" and not silero_available():
        raise ConfigError("--vad silero needs the silero-vad package: pip install silero-vad")
    return segment


@app.command(cls=Command)
def transcribe(
    inputs: Annotated[list[Path], typer.Argument(help="Media files and/or folders (searched recursively).",
                                                 show_default=False)],
    model: ModelOpt = None,
    preset: PresetOpt = None,
    k: Annotated[Optional[int], typer.Option("--k", help="Candidates per window (overrides the preset).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Decoder passes N (overrides the preset).")] = None,
    schedule: Annotated[Optional[str], typer.Option(
        "--schedule", help="Re-mask fractions, one per step, e.g. 1.0,0.9,0.8.")] = None,
    select: SelectOpt = None,
    verify: VerifyOpt = None,
    formats: Annotated[str, typer.Option("--format", "-f", help="txt, srt, vtt, json, tsv, comma-separated, "
                                                                 "or all.")] = "txt",
    output_dir: Annotated[Optional[Path], typer.Option(
        "--output-dir", "-o", help="Write outputs here (mirroring input folders) instead of beside each input.")] = None,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", min=1, help="Windows decoded together (each x k candidates); default: as many as "
                                    "fit in memory (a share of free RAM, at most 1.5 GB, or of free GPU "
                                    "memory).")] = None,  # TranscribeOptions.batch_size (torch-free here)
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo files whose outputs exist (a file's "
                                                                "kept windows are still reused).")] = False,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Sampling seed (PDD).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress or summary (errors and "
                                                          "Ctrl-C's one line still print).")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Timing breakdown per stage.")] = False,
    language: Annotated[str, typer.Option(
        "--language", help="Language spoken: whisfusion models (the bundled one too) are English-only; a "
                           "multilingual Whisper baseline takes its codes (de, fr, ...).")] = "en",
    word_timestamps: Annotated[bool, typer.Option(
        "--word-timestamps", help="Time every word (Whisper's AR decoder aligns the text): json gets words, "
                                  "tsv a row per word, srt/vtt cues follow the words; segments are "
                                  "sentence-sized.")] = False,
    max_line_width: Annotated[int, typer.Option(
        "--max-line-width", help="srt/vtt: characters per line.")] = _S.max_line_width,
    max_line_count: Annotated[int, typer.Option(
        "--max-line-count", help="srt/vtt: lines per cue.")] = _S.max_line_count,
    max_cue_seconds: Annotated[float, typer.Option(
        "--max-cue-seconds", help="srt/vtt: longest cue in seconds.")] = _S.max_cue_seconds,
    ray: Annotated[Optional[str], typer.Option(
        "--ray", metavar="ADDRESS", help="Spread the files over model replicas on a Ray cluster: local "
                                         "(start one here: a replica per GPU, or --workers CPU replicas), "
                                         "auto (the cluster this machine joined with ray start) or "
                                         'ray://HEAD:10001. Needs pip install "whisfusion\\[ray]".')] = None,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", min=1, help="--ray: model replicas (default: one per GPU; without GPUs one per 4 "
                                 "cores, each with its share of the cores' threads).")] = None,
    highlight_words: Annotated[bool, typer.Option(
        "--highlight-words", help="srt/vtt with --word-timestamps: karaoke cues, each word underlined "
                                  "while it is spoken.")] = _S.highlight_words,
    vad: Annotated[str, typer.Option(
        "--vad", help="What finds speech for window cuts and the silences words and cues keep out of: "
                      "energy (a loudness rule) or silero (Silero VAD, pip install silero-vad; "
                      "far better in noise or music).")] = _SEG.vad,
) -> None:
    """Transcribe media files or folders to txt/srt/vtt/json/tsv.

    With one file, no -o and txt, the transcript goes to stdout. The input - reads the media from
    standard input (cat clip.flac | whisfusion transcribe -); a file named -x goes after -- (-- -x).
    Progress is in audio seconds of all inputs, the ETA from this run's rate.
    Files whose outputs exist are skipped; rerun the same command after Ctrl-C or a crash to resume.
    A long file's finished windows wait beside its outputs in NAME.partial.jsonl until they are written.
    A format added later is written from NAME.json without decoding (same model, options and media).
    Exit code: 0 all ok, 1 some files failed or are missing, 2 usage error, 130 interrupted (Ctrl-C).
    """
    setup_logging(quiet, verbose)
    with interrupts():
        try:
            fmts = parse_formats(formats)
            subtitles = SubtitleOptions(max_line_width, max_line_count, max_cue_seconds,
                                        highlight_words=highlight_words)
            segment = check_vad(vad)
            overrides = decoding_overrides(k, steps, schedule, seed, select, verify)
            options = resolve_decoding_options(preset, overrides)  # checked now; against the model below
            model = model or default_model()
            if model is None:
                raise fail("no bundled model in this install; pass --model DIR|REPO "
                           "(a whisfusion checkpoint, or a Whisper one for the AR baseline)", 2)
            check_flag_values(inputs)
            if workers is not None and ray is None:
                raise fail("--workers needs --ray (e.g. --ray local --workers 4)", 2)
            from .transcribe import STDIN, TranscribeOptions, check_device

            dev = check_device(device) if ray is None else device  # --ray: each replica checks its own
        except WhisfusionError as e:
            raise fail(str(e), 2) from None
        with contextlib.ExitStack() as stack:
            jobs, missing = gather_inputs(inputs, output_dir, stack)
            to_stdout = (len(jobs) == 1 and not missing and output_dir is None and fmts == ("txt",)
                         and not inputs[0].is_dir())
            asr, options, lang = (None, options, language) if ray is not None else \
                load_checked(model, dev, dtype, preset, overrides, language, word_timestamps)
            redo = overwrite or to_stdout or list(inputs) == [STDIN]  # piped media: no earlier run to resume
            topts = TranscribeOptions(fmts, redo, batch_size, not to_stdout, options, language=lang,
                                      word_timestamps=word_timestamps, subtitles=subtitles, segment=segment)
            events = None if ray is None else start_cluster(
                stack, ray, workers, model, device, dtype, preset, overrides, language, word_timestamps,
                quiet).transcribe(jobs, topts)
            failures = run_jobs(asr, jobs, topts, quiet, verbose, to_stdout, missing, events)
        raise typer.Exit(1 if failures else 0)


@contextlib.contextmanager
def interrupts() -> Iterator[None]:
    """Ctrl-C before the pipeline runs (loading torch or the model): one line, exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        err.print("[yellow]interrupted:[/] nothing written", highlight=False)
        raise typer.Exit(130) from None


FLAG_VALUES = frozenset({"true", "false", "yes", "no", "on", "off"})


def check_flag_values(inputs: list[Path]) -> None:
    """Catches `--quiet true`: flags take no value, so `true` would otherwise be read as an input."""
    for path in inputs:
        if str(path).lower() in FLAG_VALUES and not path.exists():
            raise WhisfusionError(f"{path}: no such file or folder; flags take no value "
                                  "(write --quiet, not --quiet true)")


def gather_inputs(inputs: list[Path], output_dir: Path | None,
                  stack: contextlib.ExitStack) -> tuple[list, list[str]]:
    """The jobs (media piped to stdin is spooled to a temp folder that lives as long as `stack`) and
    one message per missing input, printed here: all missing is a usage error, some a failure."""
    from .transcribe import STDIN, find_jobs, spool_stdin

    try:
        stdin = None
        if STDIN in inputs:
            stream = typer.get_binary_stream("stdin")
            if stream.isatty():
                raise WhisfusionError("-: standard input is a terminal; pipe media in (cat clip.flac | "
                                      "whisfusion transcribe -), or give a file named -x as -- -x")
            spool_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="whisfusion-"))
            stdin = spool_stdin(stream, spool_dir)
        jobs, missing = find_jobs(inputs, output_dir, stdin)
        if jobs:
            check_output_dir(output_dir)
    except WhisfusionError as e:
        raise fail(str(e), 2) from None
    if not jobs:
        for message in missing[:-1]:
            err.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
        raise fail(missing[-1] if missing else "no media files found in the given folders", 2)
    for message in missing:
        err.print(f"[red]failed:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return jobs, missing


def load_checked(model: str, device: object, dtype: str, preset: str | None, overrides: dict,
                 language: str = "en", word_timestamps: bool = False) -> tuple[Any, DecodingOptions | None, str]:
    """Loads the model and checks the decoding options and language against it (exit 2 if not)."""
    from .transcribe import ModelSpec

    try:
        return ModelSpec(model, str(device), dtype, preset, tuple(overrides.items()), language,
                         word_timestamps).load()
    except WhisfusionError as e:
        raise fail(str(e), 2) from None


def start_cluster(stack: contextlib.ExitStack, address: str, workers: int | None, model: str, device: str,
                  dtype: str, preset: str | None, overrides: dict, language: str, word_timestamps: bool,
                  quiet: bool) -> Any:
    """Joins (or starts) the Ray cluster and loads a replica per worker; it stops with `stack`.
    No Ray or no cluster: one line, exit 1; a model or options the replicas reject: exit 2."""
    from .cluster import Cluster, ClusterError, ClusterOptions, ModelSpec

    spec = ModelSpec(model, device, dtype, preset, tuple(overrides.items()), language, word_timestamps)
    try:
        with err.status(f"starting Ray replicas ({address})") if not quiet else contextlib.nullcontext():
            return stack.enter_context(Cluster(ClusterOptions(address, workers), spec))
    except ClusterError as e:
        raise fail(str(e), 1) from None
    except WhisfusionError as e:
        raise fail(str(e), 2) from None


def check_output_dir(output_dir: Path | None) -> None:
    if output_dir is None:
        return
    import os

    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WhisfusionError(f"{output_dir}: cannot create output folder ({e.strerror})") from None
    if not os.access(output_dir, os.W_OK):
        raise WhisfusionError(f"{output_dir}: output folder is not writable")


def run_jobs(asr: object, jobs: list, topts: object, quiet: bool, verbose: bool, to_stdout: bool,
             missing: Sequence[str] = (), events: Iterable | None = None) -> int:
    """Drives transcribe_files (or `events`: a Ray cluster's, by whole files) with a progress bar in audio
    seconds; returns the number of failed (or missing) files. Ctrl-C: one line saying what was kept, exit 130."""
    from .transcribe import FileDone, FileFailed, FileStarted, transcribe_files

    t0 = time.perf_counter()
    stats = {"files": 0, "skipped": 0, "audio_s": 0.0, "load_s": 0.0, "write_s": 0.0}
    failed: list[str] = list(missing)
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[audio]}"),
               TextColumn("{task.percentage:>3.0f}%"), EtaColumn())
    with Progress(*columns, console=err, disable=quiet or not err.is_terminal, transient=True) as progress:
        bar = progress.add_task(f"{len(jobs)} file(s)", total=None, audio="", eta_at=None)

        def on_progress(p: Any) -> None:  # a transcribe.Progress: audio seconds done and in all
            stats["audio_s"] = p.done_s - p.resumed_s
            eta = p.eta_s
            progress.update(bar, completed=p.done_s, total=p.total_s or None,
                            audio=f"{clock(p.done_s)}/{clock(p.total_s)}",
                            eta_at=None if eta is None else time.monotonic() + eta)

        interrupted = False
        try:
            by_file = events is not None  # a cluster's files report when they start and end
            events = transcribe_files(asr, jobs, topts, on_progress) if events is None else events  # type: ignore
            for event in events:
                if by_file and isinstance(event, FileStarted):
                    cluster_progress(progress, bar, event.duration, 0.0, stats)
                elif by_file and isinstance(event, FileDone) and event.transcript is not None and not event.skipped:
                    cluster_progress(progress, bar, 0.0, event.transcript.duration, stats)
                if isinstance(event, FileStarted):
                    progress.update(bar, description=event.job.source.name[-40:])
                    if event.resumed_s and not quiet:
                        progress.console.print(f"{escape(str(event.job.source))}: resuming at "
                                               f"{clock(event.resumed_s)} of {clock(event.duration)}",
                                               highlight=False, soft_wrap=True)
                elif isinstance(event, FileFailed):
                    failed.append(event.error)
                    err.print(f"[red]failed:[/] {escape(event.error)}", highlight=False, soft_wrap=True)
                elif isinstance(event, FileDone):
                    report_done(event, stats, to_stdout)
        except KeyboardInterrupt:  # Ctrl-C: the finished windows are in their sidecars already
            interrupted = True
    if interrupted:
        err.print(f"[yellow]interrupted:[/] {escape(interrupted_line(asr, jobs, topts, stats, to_stdout))}",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(130)
    if not quiet and (verbose or not to_stdout):
        print_summary(stats, failed, time.perf_counter() - t0, asr, verbose)
    return len(failed)


def cluster_progress(progress: Progress, bar: Any, started_s: float, done_s: float, stats: dict) -> None:
    """A Ray run's bar, by whole files: the total grows by each file started, the audio done by each finished."""
    task = progress.tasks[0]
    total, done = (task.total or 0) + started_s, task.completed + done_s
    stats["audio_s"] += done_s
    progress.update(bar, total=total or None, completed=done, audio=f"{clock(done)}/{clock(total)}")


class EtaColumn(ProgressColumn):
    """Time left at the run's audio-seconds rate (the library's estimate), counting down between updates."""

    def render(self, task: Task) -> Text:
        at = task.fields.get("eta_at")
        left = "-:--" if at is None else clock(max(0.0, at - time.monotonic()))
        return Text(f"eta {left}", style="progress.remaining")


def clock(seconds: float) -> str:
    """12:30, or 1:02:03 from an hour on."""
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def interrupted_line(asr: object, jobs: list, topts: object, stats: dict, to_stdout: bool) -> str:
    """What Ctrl-C left: files written, and the partial files a rerun continues."""
    from .transcribe import kept_partials

    if to_stdout:
        return "nothing written"
    kept = kept_partials(asr, jobs, topts)  # type: ignore[arg-type]
    line = f"{stats['files']} file{'' if stats['files'] == 1 else 's'} written"
    if kept:
        done, total = sum(k[1] for k in kept), sum(k[2] for k in kept)
        line += (f", {len(kept)} partial file{'' if len(kept) == 1 else 's'} kept for resume "
                 f"({clock(done)} of {clock(total)} done)")
    return line + "; rerun the same command to continue"


def report_done(event: object, stats: dict, to_stdout: bool) -> None:
    if event.skipped:  # type: ignore[attr-defined]
        stats["skipped"] += 1
        return
    stats["files"] += 1
    if not event.reused:  # type: ignore[attr-defined]
        stats["load_s"] += event.transcript.timings.get("load_s", 0.0)  # type: ignore[attr-defined]
    stats["write_s"] += event.write_s  # type: ignore[attr-defined]
    if event.warning:  # type: ignore[attr-defined]
        err.print(f"[yellow]warning:[/] {escape(f'{event.job.source}: {event.warning}')}",  # type: ignore
                  highlight=False, soft_wrap=True)
    if to_stdout:
        out.print(event.transcript.text, markup=False)  # type: ignore[attr-defined]


def print_summary(stats: dict, failed: list, wall: float, asr: object, verbose: bool) -> None:
    table = Table(title="whisfusion transcribe", show_header=True, header_style="bold")
    for col in ("files", "skipped", "failed", "audio (h)", "wall (s)", "RTFx"):
        table.add_column(col, justify="right")
    rtfx = stats["audio_s"] / wall if wall > 0 else 0.0
    table.add_row(str(stats["files"]), str(stats["skipped"]), str(len(failed)),
                  f"{stats['audio_s'] / 3600:.3f}", f"{wall:.2f}", f"{rtfx:.1f}")
    err.print(table)
    if verbose and asr is not None:  # --ray: the stages ran in the replicas
        totals = dict(getattr(asr, "stopwatch").totals)
        err.print("timing (s): " + ", ".join(
            f"{k} {v:.3f}" for k, v in {"ffmpeg decode": stats["load_s"], "log-mel": totals.get("mel", 0.0),
                                        "encoder": totals.get("encode", 0.0),
                                        "decoder": totals.get("decode", 0.0),
                                        **({"word timing": totals["align"]} if "align" in totals else {}),
                                        "write": stats["write_s"]}.items()), highlight=False, soft_wrap=True)
    if failed:
        err.print(f"[red]{len(failed)} file(s) failed[/] (listed above)", highlight=False)


@app.command(cls=Command)
def bench(
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", help="Whisfusion checkpoint to time; default: random weights of the paper's shapes "
                              "(--encoder + --decoder).")] = None,
    baseline: Annotated[Optional[str], typer.Option(
        "--baseline", help="Whisper checkpoint for the AR baseline; default: random Whisper of the same "
                           "encoder, forced to a realistic token count.")] = None,
    presets: Annotated[str, typer.Option("--presets", help="PDD presets to time.")] = "fast,balanced,accurate",
    durations: Annotated[str, typer.Option("--durations", help="Clip seconds, one per duration bucket.")] = "5,15,25",
    long_form: Annotated[float, typer.Option("--long-form", help="Minutes of audio for the end-to-end "
                                                                 "run (0: skip).")] = 0.0,
    encoder: Annotated[str, typer.Option("--encoder", help="Encoder shape for random weights.")] = "whisper-base",
    decoder: Annotated[str, typer.Option("--decoder", help="Decoder shape for random weights.")] = "smdm-170m",
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed repeats (median).")] = 10,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the record here.")] = None,
) -> None:
    """Time both engines side by side on one device: latency per bucket, tokens/s, long-form RTFx."""
    import json

    from .asr import WhisfusionASR
    from .bench import BenchOptions, ar_baseline, random_models, record_to_dict, run_bench, summarize
    from .checkpoint import resolve_dtype
    from .transcribe import check_device, load_model

    try:
        opts = BenchOptions(presets=tuple(p.strip() for p in presets.split(",") if p.strip()),
                            durations=tuple(float(d) for d in durations.split(",")),
                            long_form_min=long_form, repeats=repeats)
        for p in opts.presets:
            DecodingOptions.from_preset(p)
        dev = check_device(device)
        dt = resolve_dtype(dtype, dev)
        pdd_asr, ar_asr = random_models(encoder, decoder, dev, dt)
        weights = "random"
        if model or baseline:
            pdd_asr = load_model(model, dev, dt) if model else pdd_asr
            if baseline:
                ar_asr = load_model(baseline, dev, dt)
            elif isinstance(pdd_asr, WhisfusionASR):  # a random AR decoder on the model's own encoder
                ar_asr = ar_baseline(pdd_asr)
            weights = f"model={model or 'random'} baseline={baseline or 'random'}"
    except (WhisfusionError, ValueError) as e:
        raise fail(str(e), 2) from None
    with err.status("benchmarking") as status:
        rec = run_bench(pdd_asr, ar_asr, opts, weights, lambda m: status.update(m),  # type: ignore[arg-type]
                        ar_forced=not baseline, pdd_random=not model)
    record = record_to_dict(rec) | {"summary": summarize(rec)}
    table = Table(title=f"whisfusion bench ({rec.meta['device']}, {rec.meta['dtype']}, {weights} weights)")
    table.add_column("engine", no_wrap=True)
    for col in ("clip (s)", "total ms", "encoder ms", "decoder ms", "overhead ms", "dec tokens/s"):
        table.add_column(col, justify="right")
    for r in rec.latency:
        table.add_row(r["engine"], f"{r['duration_s']:g}", f"{r['total_ms']:.1f}", f"{r['encoder_ms']:.1f}",
                      f"{r['decoder_ms']:.1f}", f"{r['overhead_ms']:.1f}", f"{r['decoder_tokens_per_s']:.0f}")
    out.print(table)
    for r in rec.long_form:
        out.print(f"long-form {r['engine']}: {r['audio_s'] / 60:g} min in {r['wall_s']:.2f} s, RTFx {r['rtfx']}")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(record, indent=2) + "\n")


_T = TrainConfig.__dataclass_fields__  # CLI defaults are read from the dataclass, never retyped


def _default(name: str) -> object:
    return _T[name].default


@app.command(cls=Command)
def train(
    data: Annotated[list[str], typer.Option("--data", "-d", help="Training source, repeatable: a JSONL manifest "
                                                                 "or a LibriSpeech-layout folder.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Run directory: last/, best/, metrics.jsonl.")],
    stage: Annotated[str, typer.Option("--stage", help="1: adapters only, t~U(0,1); 2: whole decoder, LLRD, "
                                                       "t~U(0.7,1); scratch: fresh decoder + adapters.")] = "1",
    init: Annotated[Optional[str], typer.Option("--init", help="Whisfusion checkpoint to continue from "
                                                               "(e.g. stage 1's best/).")] = None,
    encoder: Annotated[Optional[str], typer.Option("--encoder", help="Whisper checkpoint (dir or repo) for a "
                                                                     "fresh model.")] = None,
    decoder_config: Annotated[str, typer.Option("--decoder-config", help="Named decoder (smdm-170m, smdm-small, "
                                                                         "...) or whisper-mdm.")] = _default("decoder_config"),  # type: ignore
    smdm_init: Annotated[Optional[str], typer.Option("--smdm-init", help="SMDM weights for a fresh decoder.")] = None,
    tokenizer: Annotated[Optional[str], typer.Option("--tokenizer", help="tokenizer.json to reuse; default: "
                                                                         "train a BPE on the texts.")] = None,
    vocab: Annotated[int, typer.Option("--vocab", help="Size of the trained tokenizer.")] = _default("vocab_size"),  # type: ignore
    val_data: Annotated[Optional[list[str]], typer.Option("--val-data", help="Held-out sources.")] = None,
    val_fraction: Annotated[float, typer.Option("--val-fraction", help="Held out of DATA when no --val-data.")] = _default("val_fraction"),  # type: ignore
    cache_dir: Annotated[Optional[str], typer.Option("--cache-dir", help="Encoder feature cache (shareable).")] = None,
    steps: Annotated[Optional[int], typer.Option("--steps", help="Optimizer steps (overrides --epochs).")] = None,
    epochs: Annotated[int, typer.Option("--epochs")] = _default("epochs"),  # type: ignore
    batch_size: Annotated[int, typer.Option("--batch-size", help="Clips per micro-batch per process.")] = _default("batch_size"),  # type: ignore
    grad_accum: Annotated[int, typer.Option("--grad-accum")] = _default("grad_accum"),  # type: ignore
    lr: Annotated[float, typer.Option("--lr", help="Peak LR (the top block's in stage 2).")] = _default("lr"),  # type: ignore
    warmup_steps: Annotated[int, typer.Option("--warmup-steps")] = _default("warmup_steps"),  # type: ignore
    llrd: Annotated[float, typer.Option("--llrd", help="Stage-2 layer-wise LR decay.")] = _default("llrd"),  # type: ignore
    val_every: Annotated[int, typer.Option("--val-every")] = _default("val_every"),  # type: ignore
    save_every: Annotated[int, typer.Option("--save-every")] = _default("save_every"),  # type: ignore
    seed: Annotated[int, typer.Option("--seed")] = _default("seed"),  # type: ignore
    device: DeviceOpt = "auto",
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUTPUT/last (model, optimizer, "
                                                          "schedule, RNG, data position).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Train a whisfusion model (the paper's curriculum); run under torchrun for several GPUs."""
    from .train import CacheProgress, StepInfo, ValInfo, run_training

    setup_logging(quiet, False)
    try:
        cfg = TrainConfig(tuple(data), str(output), stage, init, encoder, decoder_config, smdm_init,  # type: ignore
                          tokenizer, vocab, tuple(val_data or ()), val_fraction, cache_dir, steps, epochs,
                          batch_size, grad_accum, lr, warmup_steps=warmup_steps, llrd=llrd, val_every=val_every,
                          save_every=save_every, seed=seed, device=device, resume=resume)
    except WhisfusionError as e:
        raise fail(str(e), 2) from None
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=err, disable=quiet) as progress:
        cache_task = progress.add_task("encoding", total=None, info="")
        step_task = progress.add_task("training", total=None, info="", visible=False)

        def on_event(event: object) -> None:
            if isinstance(event, CacheProgress):
                progress.update(cache_task, completed=event.done, total=event.total)
            elif isinstance(event, StepInfo):
                progress.update(step_task, visible=True, completed=event.step, total=event.total_steps,
                                info=f"loss {event.loss:.3f}  {event.tokens_per_s:,.0f} tok/s  lr {event.lr:.2e}")
            elif isinstance(event, ValInfo):
                wer = "-" if event.wer is None else f"{100 * event.wer:.2f}%"
                progress.console.print(f"step {event.step}: val loss {event.loss:.4f}, WER {wer}"
                                       f"{' (best)' if event.is_best else ''}", highlight=False)

        try:
            best = run_training(cfg, on_event)
        except WhisfusionError as e:
            raise fail(str(e), 2) from None
    if not quiet:
        err.print(f"checkpoint: {best}", highlight=False)


eval_app = typer.Typer(cls=Group, help="Measure WER/CER, oracle WER, RTF and per-stage ms the way the paper "
                                       "does (Tables 3, 4, 6), for whisfusion and the AR baseline alike.",
                       context_settings={"help_option_names": ["-h", "--help"]}, no_args_is_help=True)
app.add_typer(eval_app, name="eval")


def run_eval(examples: list, skipped: Counter, model: str | None, preset: str | None, limit: int | None,
             batch_size: int, device: str, dtype: str, json_out: Path | None, select: str | None = None,
             verify: float | None = None) -> None:
    """Loads the model, evaluates with a progress bar, prints the tables, writes the JSON.

    Exits 1 with one line when no utterance could be scored (all missing, unreadable or too long).
    """
    import json

    from .evaluate import EvalOptions, evaluate
    from .report import report_to_dict

    model = model or default_model()
    if model is None:
        raise fail("no bundled model in this install; pass --model DIR|REPO", 2)
    if not examples:
        raise fail(nothing_scored(skipped), 1)
    try:
        overrides = decoding_overrides(select=select, verify=verify)
        resolve_decoding_options(preset, overrides)  # bad options: exit 2 before the model loads
    except WhisfusionError as e:
        raise fail(str(e), 2) from None
    asr, options, _ = load_checked(model, device, dtype, preset, overrides)
    try:
        eopts = EvalOptions(batch_size=batch_size, limit=limit, options=options)
    except WhisfusionError as e:
        raise fail(str(e), 2) from None
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeRemainingColumn(), console=err, transient=True) as progress:
        task = progress.add_task("evaluating", total=None)
        report = evaluate(asr, examples, eopts, lambda done, total: progress.update(task, completed=done,
                                                                                    total=total))
    if not report.overall.n_utterances:
        raise fail(nothing_scored(skipped + Counter(report.skipped)), 1)
    print_eval(report)
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report_to_dict(report), indent=2, allow_nan=False) + "\n")


def nothing_scored(skipped: Counter) -> str:
    """The one line for an evaluation that scored no utterance, with the skip reasons."""
    reasons = ", ".join(f"{reason} {n}" for reason, n in skipped.items() if n)
    return "no utterance could be scored" + (f" (skipped: {reasons})" if reasons else " (none to evaluate)")


def print_eval(report: object) -> None:
    r = report
    table = Table(title=f"{r.model} ({r.engine}{', ' + r.preset if r.preset else ''}, {r.device})",  # type: ignore
                  box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("set", no_wrap=True)
    for col in ("utts", "hours", "WER%", "orcl%", "CER%", "RTFx", "enc ms", "dec ms", "oth ms", "tok/s"):
        table.add_column(col, justify="right", no_wrap=True)

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}"

    def num(x: float | None, fmt: str = ".1f") -> str:
        return "-" if x is None else format(x, fmt)

    groups = [("all", r.overall)] + [(s, m) for s, m in r.by_subset.items()] + \
             [(f"  {b} s", m) for b, m in r.by_bucket.items() if m.n_utterances]  # type: ignore
    for name, m in groups:
        table.add_row(name, str(m.n_utterances), f"{m.audio_s / 3600:.2f}", pct(m.wer), pct(m.oracle_wer), pct(m.cer),
                      num(m.rtfx), num(m.encode_ms), num(m.decode_ms), num(m.overhead_ms), num(m.tokens_per_s, ".0f"))
    out.print(table)
    if r.skipped:  # type: ignore[attr-defined]
        err.print("skipped: " + ", ".join(f"{k} {v}" for k, v in r.skipped.items()), highlight=False)  # type: ignore


LimitOpt = Annotated[Optional[int], typer.Option("--limit", min=0, help="Only the first N utterances.")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="Write the full report (schema "
                                                                 "whisfusion.eval/1) here.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Utterances per batch.")]


@eval_app.command("librispeech", cls=Command)
def eval_librispeech(
    root: Annotated[Path, typer.Argument(help="A LibriSpeech-layout folder (<subset>/<spk>/<chapter>/*.flac).")],
    subset: Annotated[Optional[str], typer.Option("--subset", help="Comma-separated subsets, e.g. "
                                                                   "test-clean,test-other; default: all found.")] = None,
    model: ModelOpt = None, preset: PresetOpt = None, select: SelectOpt = None, verify: VerifyOpt = None,
    limit: LimitOpt = None, batch_size: BatchOpt = 16, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto",
    json_out: JsonOpt = None,
) -> None:
    """Evaluate on LibriSpeech-layout data: WER/CER per subset and per duration bucket."""
    from .data import read_librispeech

    try:
        examples, skipped = read_librispeech(root, subset.split(",") if subset else None)
    except WhisfusionError as e:
        raise fail(str(e), 2) from None
    run_eval(examples, skipped, model, preset, limit, batch_size, device, dtype, json_out, select, verify)


@eval_app.command("manifest", cls=Command)
def eval_manifest(
    manifest: Annotated[Path, typer.Argument(help='A JSONL file of {"audio", "text", "duration"} rows.')],
    model: ModelOpt = None, preset: PresetOpt = None, select: SelectOpt = None, verify: VerifyOpt = None,
    limit: LimitOpt = None, batch_size: BatchOpt = 16, device: DeviceOpt = "auto", dtype: DtypeOpt = "auto",
    json_out: JsonOpt = None,
    subset_by: Annotated[Optional[str], typer.Option(
        "--subset-by", help="Report per value of this row field (up to its first ':'), e.g. speaker.")] = None,
    group: Annotated[Optional[list[str]], typer.Option(
        "--group", help="NAME=GLOB: rename --subset-by values matching GLOB ('!GLOB': not matching) to NAME; "
                        "the first match wins. Repeatable.")] = None,
    long_windows: Annotated[bool, typer.Option(
        "--long-windows", help="Also score each subset's clips (and all of them) joined into 25-30 s windows "
                               "with 0.5 s pauses, the windows a long file is cut into: rows long/...")] = False,
) -> None:
    """Evaluate on any JSONL manifest, e.g. dev-real's native and non-native parts and their long windows:
    --subset-by speaker --group 'non-native=*speechocean762*' --group 'native=*' --long-windows."""
    import tempfile

    from .data import join_long, read_manifest

    try:
        groups = [tuple(g.split("=", 1)) for g in group or []]
        if any(len(g) != 2 or not all(g) for g in groups) or (groups and not subset_by):
            raise WhisfusionError("--group takes NAME=GLOB, with --subset-by FIELD")
        examples, skipped = read_manifest(manifest, subset_by, groups)
    except WhisfusionError as e:
        raise fail(str(e), 2) from None
    with tempfile.TemporaryDirectory(prefix="whisfusion-long-") as tmp:
        if long_windows:
            examples = join_long(examples[:limit], Path(tmp))
        run_eval(examples, skipped, model, preset, None if long_windows else limit, batch_size, device, dtype,
                 json_out, select, verify)


def main() -> None:
    app(prog_name="whisfusion")

"""Tests for the `whisfusion` command, end to end through the installed console script.

Inputs are made here with ffmpeg from the shared LibriSpeech clips (mp3, m4a, opus, mp4 with a
video stream, 8 kHz stereo wav, flac); outputs are read back with independent parsers (`srt`,
`webvtt-py`, json, tsv). A tiny random whisfusion checkpoint (junk text, every code path, fast)
drives the pipeline tests; real Whisper weights (AR baseline) drive the meaning-level ones.
Usage errors run in-process through typer's CliRunner.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import jiwer
import numpy as np
import pytest
import srt
import webvtt
from typer.testing import CliRunner

from whisfusion_cli.cli import app

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
# (output name, clip index in real_clips, ffmpeg output arguments): every container the issue names
CONVERSIONS = [
    ("clip.mp3", 0, ["-c:a", "libmp3lame", "-b:a", "64k"]),
    ("clip_aac.m4a", 1, ["-c:a", "aac", "-b:a", "64k"]),
    ("clip.opus.ogg", 2, ["-c:a", "libopus", "-b:a", "32k"]),
    ("video.mp4", 3, ["-c:a", "aac", "-c:v", "mpeg4", "-shortest"]),
    ("phone.wav", 0, ["-ar", "8000", "-ac", "2", "-c:a", "pcm_s16le"]),
    ("hifi.flac", 2, ["-ar", "44100", "-c:a", "flac"]),
]
KEY_PHRASES = ["stew for dinner", "his belly", "could wait no longer", "paced up and down"]  # per clip


def _ffmpeg(*args: str | Path) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *map(str, args)], check=True)


def _whisfusion(*args: str | Path, **kwargs) -> subprocess.CompletedProcess:
    """Runs the installed console script."""
    return subprocess.run(["whisfusion", *map(str, args)], check=False, capture_output=True, text=True,
                          timeout=300, **kwargs)


def _norm(text: str) -> str:
    """Lower case, hyphens as spaces, no punctuation, single spaces (for meaning-level checks and WER)."""
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower().replace("-", " ")).replace("'", "").split())


def _tiny_checkpoint(tiny_tokenizer, path: Path, **cfg_overrides) -> Path:
    """conftest's `tiny_model` (random test-tiny weights, a trained-looking adapter) as a checkpoint."""
    import torch

    from whisfusion_cli.checkpoint import save_whisfusion
    from whisfusion_cli.config import DecoderConfig, EncoderConfig, WhisfusionConfig
    from whisfusion_cli.model import Whisfusion

    cfg = WhisfusionConfig(EncoderConfig.from_name("test-tiny"),
                           DecoderConfig.from_name("test-tiny", vocab_size=tiny_tokenizer.vocab_size),
                           eos_id=tiny_tokenizer.eos_id)
    torch.manual_seed(0)
    net = Whisfusion(cfg.encoder, cfg.decoder).eval()
    for block in net.decoder.transformer.h:
        torch.nn.init.normal_(block.cross_attn.out.weight, std=0.02)
    return save_whisfusion(net, replace(cfg, **cfg_overrides), tiny_tokenizer, path)


@pytest.fixture(scope="session")
def tiny_ckpt(tiny_tokenizer, tmp_path_factory) -> Path:
    return _tiny_checkpoint(tiny_tokenizer, tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="session")
def media(real_clips, tmp_path_factory) -> dict[str, tuple[Path, float, int]]:
    """name -> (converted file, duration of its source clip in s, clip index)."""
    from whisfusion_cli.audio import load_audio

    folder = tmp_path_factory.mktemp("media")
    files = {}
    for name, i, codec in CONVERSIONS:
        src = real_clips[i][0]
        video = ["-f", "lavfi", "-i", "testsrc=size=96x64:rate=10"] if name.endswith(".mp4") else []
        _ffmpeg("-i", src, *video, *codec, folder / name)
        files[name] = (folder / name, len(load_audio(src)) / SR, i)
    return files


def _seconds(t: webvtt.models.Timestamp) -> float:
    return t.hours * 3600 + t.minutes * 60 + t.seconds + t.milliseconds / 1000


def _check_times(spans: list[tuple[float, float]], duration: float) -> None:
    """Every span inside [0, duration], in time order, none overlapping the one before."""
    for start, end in spans:
        assert 0.0 <= start <= end <= duration + 1e-3, (start, end, duration)
    assert all(a[1] <= b[0] + 1e-3 for a, b in itertools.pairwise(spans)), spans


def _check_outputs(stem: Path, formats: tuple[str, ...] = ("txt", "srt", "vtt", "json", "tsv")) -> dict:
    """Parses each output of one input with an independent parser; returns the json."""
    data = json.loads(Path(f"{stem}.json").read_text(encoding="utf-8"))
    assert set(data) - {"run_key"} == {"text", "segments", "language", "model", "preset", "duration", "timings"}
    assert isinstance(data.get("run_key", ""), str)  # what made it: a rerun adds formats from it
    assert all(isinstance(data[key], str) for key in ("text", "language", "model"))
    assert data["preset"] is None or isinstance(data["preset"], str)
    assert isinstance(data["duration"], float) and data["duration"] > 0
    assert all(isinstance(k, str) and isinstance(v, (float, type(None))) for k, v in data["timings"].items())
    for i, seg in enumerate(data["segments"]):
        assert {"id", "start", "end", "text"} <= set(seg) <= {"id", "start", "end", "text", "confidence"}
        assert seg["id"] == i and isinstance(seg["text"], str)
        assert isinstance(seg["start"], float) and isinstance(seg["end"], float)
    duration = data["duration"]
    _check_times([(s["start"], s["end"]) for s in data["segments"]], duration)
    assert data["text"] == " ".join(s["text"].strip() for s in data["segments"] if s["text"].strip())
    if "srt" in formats:
        cues = list(srt.parse(Path(f"{stem}.srt").read_text(encoding="utf-8")))
        _check_times([(c.start.total_seconds(), c.end.total_seconds()) for c in cues], duration)
        assert _norm(" ".join(c.content for c in cues)) == _norm(data["text"])
    if "vtt" in formats:
        captions = webvtt.read(f"{stem}.vtt").captions
        _check_times([(_seconds(c.start_time), _seconds(c.end_time)) for c in captions], duration)
        assert _norm(" ".join(c.text for c in captions)) == _norm(data["text"])
    if "tsv" in formats:
        header, *rows = Path(f"{stem}.tsv").read_text(encoding="utf-8").split("\n")[:-1]
        assert header == "start\tend\ttext" and len(rows) == len(data["segments"])
        cols = [row.split("\t") for row in rows]
        assert all(len(c) == 3 and c[0].isdigit() and c[1].isdigit() for c in cols)
        _check_times([(int(c[0]) / 1000, int(c[1]) / 1000) for c in cols], duration)
    if "txt" in formats:
        assert _norm(Path(f"{stem}.txt").read_text(encoding="utf-8")) == _norm(data["text"])
    return data


def test_every_container_end_to_end_with_the_tiny_model(media, tiny_ckpt, tmp_path) -> None:
    out = tmp_path / "out"
    proc = _whisfusion("transcribe", next(iter(media.values()))[0].parent, "-o", out, "-f", "all",
                       "-m", tiny_ckpt, "--batch-size", "4")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for name, (path, duration, _) in media.items():
        data = _check_outputs(out / path.stem)
        assert data["duration"] == pytest.approx(duration, abs=0.1), name  # resampled, downmixed, whole
        assert data["model"] == str(tiny_ckpt) and data["preset"] == "balanced"
        assert len(data["segments"]) == 1 and data["segments"][0]["end"] <= data["duration"]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p.stem}.{f}" for p, _, _ in media.values()
                                                           for f in ("txt", "srt", "vtt", "json", "tsv"))


def test_every_container_keeps_the_words(media, real_clips, weights_dir, tmp_path) -> None:
    out = tmp_path / "out"
    proc = _whisfusion("transcribe", *(p for p, _, _ in media.values()), "-o", out, "-f", "txt,json",
                       "-m", weights_dir / "whisper-tiny.en", "-q")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    for name, (path, _, clip) in media.items():
        data = _check_outputs(out / path.stem, ("txt", "json"))
        assert KEY_PHRASES[clip] in _norm(data["text"]), (name, data["text"])
        assert data["preset"] is None  # the AR baseline has no PDD preset


def _make_folder(media, real_clips, folder: Path) -> tuple[list[Path], list[Path]]:
    """12 files: 9 good (3 in a subfolder), 2 corrupt, 1 video without audio. Returns (good, bad)."""
    good = [shutil.copy(p, folder / p.name) for p, _, _ in media.values()]
    (folder / "sub").mkdir()
    good += [shutil.copy(p, folder / "sub" / p.name) for p, _ in real_clips[1:]]
    corrupt = folder / "noise [bold].mp3"  # rich markup in a name must print as is
    corrupt.write_bytes(np.random.default_rng(0).bytes(20_000))
    truncated = folder / "sub" / "truncated.flac"
    truncated.write_bytes(real_clips[0][0].read_bytes()[:3000])
    silent_video = folder / "no_audio.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=96x64:rate=10:duration=1", "-c:v", "mpeg4", silent_video)
    return [Path(p) for p in good], [corrupt, truncated, silent_video]


def _failure_lines(stderr: str, bad: list[Path]) -> list[str]:
    """The `failed:` lines; each must name exactly one bad file, and each bad file must be named."""
    lines = [ln for ln in stderr.splitlines() if ln.startswith("failed:")]
    assert all(sum(str(b) in ln for b in bad) == 1 for ln in lines), lines
    assert all(any(str(b) in ln for ln in lines) for b in bad), stderr
    return lines


def test_folder_with_bad_files_reports_them_and_a_rerun_skips_the_rest(media, real_clips, tiny_ckpt,
                                                                       tmp_path) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    good, bad = _make_folder(media, real_clips, folder)
    assert len(good) == 9 and len([p for p in folder.rglob("*") if p.is_file()]) == 12
    proc = _whisfusion("transcribe", folder, "-o", out, "-f", "txt,json", "-m", tiny_ckpt, "--batch-size",
                       "4")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "╭" not in proc.stderr
    _failure_lines(proc.stderr, bad)
    assert "no audio stream" in proc.stderr
    for p in good:
        _check_outputs(out / p.relative_to(folder).with_suffix(""), ("txt", "json"))
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert len([p for p in written if p.is_file()]) == 18
    time.sleep(0.05)
    proc = _whisfusion("transcribe", folder, "-o", out, "-f", "txt,json", "-m", tiny_ckpt, "-q")
    assert proc.returncode == 1
    assert len(_failure_lines(proc.stderr, bad)) == len(proc.stderr.splitlines()) == 3  # -q: failures only
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == written  # nothing rewritten, nothing added


def _check_no_partial_outputs(out: Path) -> set[Path]:
    """Every visible file is a complete, parseable output; leftovers are only hidden temp files.

    Returns the stems whose five outputs are all present.
    """
    visible = [p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")]
    hidden = [p for p in out.rglob(".*")]
    assert all(re.fullmatch(r"\..+\.(txt|srt|vtt|json|tsv)\.[0-9a-f]+\.tmp", p.name) for p in hidden), hidden
    for p in visible:  # a lone file (its siblings not written yet) must still be whole
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".json":
            assert json.loads(text)["segments"]
        elif p.suffix == ".srt":
            assert list(srt.parse(text))
        elif p.suffix == ".vtt":
            assert webvtt.from_string(text).captions
        elif p.suffix == ".tsv":
            assert text.startswith("start\tend\ttext\n") and text.count("\n") == 2
        else:
            assert p.suffix == ".txt" and text.endswith("\n"), p
    stems = {p.with_suffix("") for p in visible}
    formats = ("txt", "srt", "vtt", "json", "tsv")
    complete = {s for s in stems if all(s.with_suffix(f".{f}").exists() for f in formats)}
    for s in complete:
        _check_outputs(s)
    return complete


def _visible(out: Path) -> set[Path]:
    return {p for p in out.rglob("*") if p.is_file() and not p.name.startswith(".")}


def _run_and_kill(folder: Path, out: Path, tiny_ckpt: Path, delay: float | None) -> None:
    """Starts a run and SIGKILLs it (and its ffmpeg children) `delay` s after its first new output,
    or right after it when `delay` is None."""
    before = _visible(out)
    proc = subprocess.Popen(["whisfusion", "transcribe", str(folder), "-o", str(out), "-f", "all", "-m",
                             str(tiny_ckpt), "--batch-size", "1", "-q"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not _visible(out) - before:
            assert proc.poll() is None and time.monotonic() < deadline, "finished or hung before any output"
            time.sleep(0.005)
        time.sleep(delay or 0.0)
        assert proc.poll() is None, "the run ended before it could be killed: make the folder bigger"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_mid_run_leaves_only_complete_outputs(real_clips, tiny_ckpt, tmp_path) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for i in range(8):  # 32 files: busy for seconds after the first output
        for path, _ in real_clips:
            shutil.copy(path, folder / f"{i:02d}_{path.name}")
    every = {out / p.stem for p in folder.iterdir()}
    _run_and_kill(folder, out, tiny_ckpt, None)
    first = _check_no_partial_outputs(out)
    assert _visible(out) and first < every
    first_mtimes = {s: s.with_suffix(".json").stat().st_mtime_ns for s in first}
    delay = random.Random().uniform(0.0, 1.5)
    _run_and_kill(folder, out, tiny_ckpt, delay)
    second = _check_no_partial_outputs(out)
    assert first <= second < every, delay
    proc = _whisfusion("transcribe", folder, "-o", out, "-f", "all", "-m", tiny_ckpt, "-q")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert _check_no_partial_outputs(out) == every
    assert {s: s.with_suffix(".json").stat().st_mtime_ns for s in first} == first_mtimes  # resumed


def test_ar_baseline_on_real_clips_is_right_in_every_format(librispeech, real_clips, weights_dir,
                                                           tmp_path) -> None:
    out = tmp_path / "out"
    proc = _whisfusion("transcribe", librispeech, "-o", out, "-f", "txt,srt,vtt,json",
                       "-m", weights_dir / "whisper-base")
    assert proc.returncode == 0, proc.stderr
    hyps, refs = [], []
    for path, ref in real_clips:
        stem = out / path.relative_to(librispeech).with_suffix("")
        data = _check_outputs(stem, ("txt", "srt", "vtt", "json"))
        assert data["model"] == str(weights_dir / "whisper-base") and data["preset"] is None
        hyps.append(_norm(data["text"]))
        refs.append(_norm(ref))
    assert "could wait no longer" in hyps[2] and "full hour" in hyps[3] and "paced up and down" in hyps[3]
    assert "stew for dinner" in hyps[0] and "turnips and carrots" in hyps[0] and "belly" in hyps[1]
    assert jiwer.wer(refs, hyps) <= 0.10, list(zip(refs, hyps))


def test_one_file_to_txt_goes_to_stdout_only(real_clips, weights_dir, tmp_path) -> None:
    clip = Path(shutil.copy(real_clips[2][0], tmp_path / "clip.flac"))
    proc = _whisfusion("transcribe", clip, "-m", weights_dir / "whisper-tiny.en", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _norm(proc.stdout) == "he could wait no longer"
    assert proc.stderr.strip() == ""  # no summary table when stdout carries the transcript
    assert list(tmp_path.iterdir()) == [clip]


def test_word_timestamps_in_every_format(real_clips, weights_dir, tmp_path) -> None:
    clip = real_clips[0][0]  # 10.4 s: "He hoped there would be stew for dinner, turnips and carrots ..."
    result = runner.invoke(app, ["transcribe", str(clip), "-m", str(weights_dir / "whisper-tiny.en"), "-o",
                                 str(tmp_path), "-f", "json,srt,vtt,tsv", "--word-timestamps", "-q",
                                 "--max-line-width", "24", "--max-line-count", "1", "--max-cue-seconds", "3"])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / f"{clip.stem}.json").read_text())
    words = [w for s in data["segments"] for w in s["words"]]
    assert [w["word"].strip(" ,.").lower() for w in words][:5] == ["he", "hoped", "there", "would", "be"]
    assert all(set(w) == {"word", "start", "end", "probability"} for w in words)
    assert all(s["start"] == s["words"][0]["start"] and s["end"] == s["words"][-1]["end"] for s in data["segments"])
    _check_times([(w["start"], w["end"]) for w in words], 10.44)
    subs = list(srt.parse((tmp_path / f"{clip.stem}.srt").read_text()))
    captions = webvtt.read(str(tmp_path / f"{clip.stem}.vtt")).captions
    assert len(subs) == len(captions) > 3
    assert all(len(s.content) <= 24 and "\n" not in s.content for s in subs)
    assert all((s.end - s.start).total_seconds() <= 3.0 for s in subs)
    _check_times([(s.start.total_seconds(), s.end.total_seconds()) for s in subs], 10.44)
    assert [c.text for c in captions] == [s.content for s in subs]
    assert [_seconds(c.start_time) for c in captions] == pytest.approx([s.start.total_seconds() for s in subs])
    rows = (tmp_path / f"{clip.stem}.tsv").read_text().splitlines()
    assert len(rows) == 1 + len(words)


def test_highlight_words_with_silero_vad_give_karaoke_cues(real_clips, weights_dir, tmp_path) -> None:
    pytest.importorskip("silero_vad")
    clip = real_clips[1][0]  # "Stuff it into you, his belly counselled him."
    result = runner.invoke(app, ["transcribe", str(clip), "-m", str(weights_dir / "whisper-tiny.en"), "-o",
                                 str(tmp_path), "-f", "json,srt,vtt", "--word-timestamps", "--highlight-words",
                                 "--vad", "silero", "-q"])
    assert result.exit_code == 0, result.output
    words = [w["word"].strip() for s in json.loads((tmp_path / f"{clip.stem}.json").read_text())["segments"]
             for w in s["words"]]
    assert "stuff" in " ".join(words).lower()
    subs = list(srt.parse((tmp_path / f"{clip.stem}.srt").read_text()))
    captions = webvtt.read(str(tmp_path / f"{clip.stem}.vtt")).captions
    assert len(subs) == len(captions) > len(words) / 2
    for texts in ([s.content for s in subs], [c.raw_text for c in captions]):
        assert [t.split("<u>")[1].split("</u>")[0] for t in texts if "<u>" in t] == words
    _check_times([(s.start.total_seconds(), s.end.total_seconds()) for s in subs], 3.28)


def test_quiet_success_prints_nothing_to_stderr(real_clips, tiny_ckpt, tmp_path) -> None:
    proc = _whisfusion("transcribe", real_clips[2][0], "-o", tmp_path, "-f", "srt", "-m", tiny_ckpt, "-q")
    assert (proc.returncode, proc.stderr, proc.stdout) == (0, "", "")
    assert (tmp_path / f"{real_clips[2][0].stem}.srt").is_file()
    loud = _whisfusion("transcribe", real_clips[2][0], "-o", tmp_path / "loud", "-f", "srt", "-m", tiny_ckpt)
    assert loud.returncode == 0 and "files" in loud.stderr  # the summary table, so -q is what silenced it


runner = CliRunner()


@pytest.mark.parametrize("args, needle", [
    (["{tmp}/missing.wav"], "missing.wav: no such file or folder"),
    (["{tmp}/miss [/red] ing.wav"], "miss [/red] ing.wav: no such file or folder"),  # not rich markup
    (["{clip}", "--preset", "turbo"], "unknown preset 'turbo'; choose from fast, balanced, accurate"),
    (["{clip}", "--schedule", "0.5,x"], "bad schedule '0.5,x'"),
    (["{clip}", "--schedule", "0.5,0.4"], "schedule must start at 1.0"),
    (["{clip}", "--format", "txt,docx"], "unknown output format 'docx'"),
    (["{clip}", "-o", "{tmp}/file.txt/out"], "cannot create output folder"),
    (["{tmp}/empty_dir"], "no media files found"),
    (["{clip}", "--max-line-width", "0"], "subtitle limits must be positive"),
    (["{clip}", "--word-timestamps"], "ships no rescorer (Whisper's AR decoder), which word timestamps need"),
    (["{clip}", "--vad", "webrtc"], "vad must be 'energy' or 'silero'"),
])
def test_usage_errors_are_one_line_with_exit_2(args, needle, real_clips, tiny_ckpt, tmp_path) -> None:
    (tmp_path / "file.txt").write_text("a regular file\n")
    (tmp_path / "empty_dir").mkdir()
    before = sorted(tmp_path.rglob("*"))
    args = [a.format(tmp=tmp_path, clip=real_clips[2][0]) for a in args]
    result = runner.invoke(app, ["transcribe", *args, "-m", str(tiny_ckpt)])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert needle in result.stderr and result.stdout == ""
    assert sorted(tmp_path.rglob("*")) == before


def test_silent_audio_writes_empty_outputs_and_warns(tiny_ckpt, tmp_path) -> None:
    silent = tmp_path / "silent.wav"
    _ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "3", "-c:a", "pcm_s16le", silent)
    result = runner.invoke(app, ["transcribe", str(silent), "-m", str(tiny_ckpt), "-o", str(tmp_path / "out"),
                                 "-f", "all"])
    assert result.exit_code == 0, result.output
    (warning,) = [ln for ln in result.stderr.splitlines() if ln.startswith("warning:")]
    assert str(silent) in warning and "no speech found" in warning and "wrote empty outputs" in warning
    stem = tmp_path / "out" / "silent"
    data = _check_outputs(stem)
    assert (data["text"], data["segments"], data["duration"]) == ("", [], 3.0)
    assert [Path(f"{stem}.{f}").read_text() for f in ("txt", "srt", "vtt", "tsv")] == [
        "", "", "WEBVTT\n\n", "start\tend\ttext\n"]


def test_help_lists_the_presets() -> None:
    result = runner.invoke(app, ["transcribe", "--help"])
    assert result.exit_code == 0
    for name in ("fast (k=5, N=3)", "balanced (k=10, N=4)", "accurate (k=15, N=4)"):
        assert name in result.stdout
    assert "Files whose outputs exist are skipped" in result.stdout  # docstring lines are not hard-wrapped


def test_help_says_the_batch_is_sized_by_memory() -> None:
    result = runner.invoke(app, ["transcribe", "--help"])
    assert result.exit_code == 0
    assert "fit in memory" in " ".join(result.stdout.split())


def test_overrides_apply_to_the_models_own_default_preset(real_clips, tiny_tokenizer, tmp_path) -> None:
    ckpt = _tiny_checkpoint(tiny_tokenizer, tmp_path / "fast-model", default_preset="fast")
    clip = real_clips[2][0]
    result = runner.invoke(app, ["transcribe", str(clip), "-m", str(ckpt), "-o", str(tmp_path), "-f", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / f"{clip.stem}.json").read_text())["preset"] == "fast"
    result = runner.invoke(app, ["transcribe", str(clip), "-m", str(ckpt), "-o", str(tmp_path), "-f", "json",
                                 "--seed", "3", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / f"{clip.stem}.json").read_text())["preset"] == "fast"  # a seed keeps the preset
    result = runner.invoke(app, ["transcribe", str(clip), "-m", str(ckpt), "-o", str(tmp_path), "-f", "json",
                                 "--k", "3", "--overwrite"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / f"{clip.stem}.json").read_text())["preset"] == "k=3,steps=3"  # fast, k=3


def test_model_tuned_presets_are_used_and_labelled(real_clips, tiny_tokenizer, tmp_path) -> None:
    ckpt = _tiny_checkpoint(tiny_tokenizer, tmp_path / "tuned")
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["presets"] = {"accurate": {"k": 2, "steps": 2, "schedule": [1.0, 0.5]}}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    clip = real_clips[2][0]
    for extra, label, k in ((["-p", "accurate"], "accurate", 2), (["-p", "accurate", "--k", "3"], "k=3,steps=2", 3),
                            (["-p", "fast"], "fast", 5)):
        result = runner.invoke(app, ["transcribe", str(clip), "-m", str(ckpt), "-o", str(tmp_path), "-f", "json",
                                     "--overwrite", *extra])
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / f"{clip.stem}.json").read_text())["preset"] == label
    from whisfusion_cli.asr import load_model

    asr = load_model(ckpt, device="cpu")
    assert (asr.options("accurate").k, asr.options("accurate").steps, asr.options("fast").steps) == (2, 2, 3)
    assert asr.options("accurate", k=3).preset_name is None and asr.options("accurate", seed=4).preset_name == "accurate"


@pytest.mark.slow
def test_bundled_model_transcribes_a_real_clip_without_model_flag(real_clips) -> None:
    from whisfusion_cli.cli import default_model

    if default_model() is None:
        pytest.skip("this install has no bundled model")
    clip = next(c for c, text in real_clips if text.startswith("FOR A FULL HOUR"))
    exe = shutil.which("whisfusion")
    cmd = [exe] if exe else [sys.executable, "-m", "whisfusion_cli"]
    proc = subprocess.run([*cmd, "transcribe", str(clip)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    words = jiwer.wer("for a full hour he had paced up and down waiting but he could wait no longer",
                      re.sub(r"[^a-z ]", "", proc.stdout.lower()))
    assert words <= 0.35, proc.stdout  # measured 0 errors in 17 words (v2, accurate, the default); junk fails


def test_completions_are_current(tmp_path) -> None:
    subprocess.run(["bash", str(ROOT / "scripts" / "gen_completions.sh"), str(tmp_path)], check=True,
                   timeout=60)
    for name in ("whisfusion.bash", "_whisfusion", "whisfusion.fish"):
        fresh, committed = (tmp_path / name).read_text(), (ROOT / "completions" / name).read_text()
        assert fresh == committed, f"completions/{name} is stale: run scripts/gen_completions.sh"
    assert "_WHISFUSION_COMPLETE" in (tmp_path / "whisfusion.bash").read_text()


def test_start_up_and_tab_completion_are_torch_free() -> None:
    code = "import sys, whisfusion_cli.cli; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "False"
    code = ("import atexit, sys; "
            "atexit.register(lambda: print('TORCH', 'torch' in sys.modules, file=sys.stderr)); "
            "from whisfusion_cli.cli import main; main()")
    env = dict(os.environ, _WHISFUSION_COMPLETE="complete_bash", COMP_WORDS="whisfusion transcribe --pre",
               COMP_CWORD="2")
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env)
    assert "--preset" in proc.stdout and "TORCH False" in proc.stderr, (proc.stdout, proc.stderr)


def test_bundled_presets_are_the_recipes() -> None:
    """The shipped config.json carries the presets the recipe chose (recipes/synthetic/presets.json)."""
    from whisfusion_cli.cli import default_model

    if default_model() is None:
        pytest.skip("this install has no bundled model")
    shipped = json.loads((Path(default_model()) / "config.json").read_text())["presets"]
    chosen = json.loads((ROOT / "recipes" / "synthetic" / "presets.json").read_text())
    assert shipped == chosen
    assert [shipped[p]["steps"] == len(shipped[p]["schedule"]) for p in shipped] == [True] * 3


def test_preset_help_says_what_the_bundled_models_presets_do():
    """--preset's help names the bundled model's own passes and that accurate is a verified draft, as its
    config.json sets them (a retrained model with other presets must update the help)."""
    import json

    from whisfusion_cli import BUNDLED_MODEL
    from whisfusion_cli.cli import PresetOpt

    presets = json.loads((BUNDLED_MODEL / "config.json").read_text())["presets"]
    help_text = PresetOpt.__metadata__[0].help
    assert f"N={presets['fast']['steps']}/{presets['balanced']['steps']} steps" in help_text
    accurate = presets["accurate"]
    assert accurate["verify"] < 1 and accurate["steps"] == presets["balanced"]["steps"] and \
        "accurate a balanced draft verified by Whisper's decoder" in help_text

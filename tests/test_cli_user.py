"""User-facing behaviour of the `whisfusion` command (issue 22): --version, bad --device and
--language, missing inputs, evaluations that score nothing, flags in --help, write errors, stdin.

Everything runs on a tiny random whisfusion checkpoint (junk text, every code path, fast) and
short clips made here; most commands run in-process through typer's CliRunner, the pipes
through the real program.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from whisfusion_cli.cli import app

SR = 16000
runner = CliRunner()


def _whisfusion(*args: str | Path, **kwargs) -> subprocess.CompletedProcess:
    """Runs the program as a user would (python -m, so no console script is needed)."""
    return subprocess.run([sys.executable, "-m", "whisfusion_cli", *map(str, args)], capture_output=True,
                          timeout=300, check=False, env=dict(os.environ, OMP_NUM_THREADS="1"), **kwargs)


def _write_wav(path: Path, seconds: float = 2.0, seed: int = 0) -> Path:
    """A 16 kHz 16-bit mono WAV of a chirp in noise (not silence, so it is one window to decode)."""
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * (200 + 400 * t) * t) + 0.05 * rng.standard_normal(len(t))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def _one_error_line(result, code: int = 2) -> str:
    """The command exited `code` with exactly one line on stderr, `error: ...`, and no traceback."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


@pytest.fixture(scope="module")
def tiny_ckpt(tiny_tokenizer, tmp_path_factory) -> Path:
    """conftest's tiny random whisfusion model, saved as a checkpoint directory (test_cli's)."""
    from test_cli import _tiny_checkpoint

    return _tiny_checkpoint(tiny_tokenizer, tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("clips")
    return [_write_wav(folder / f"clip{i}.wav", 1.5 + i, seed=i) for i in range(2)]


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny tensors on a busy machine: one thread (conftest)."""


# ---------------------------------------------------------------- 1. --version


def test_version_prints_the_installed_version_and_exits_0() -> None:
    proc = _whisfusion("--version", text=True)
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr
    assert proc.stdout == f"whisfusion {importlib.metadata.version('whisfusion')}\n"


def test_version_falls_back_to_the_package_version(monkeypatch) -> None:
    import whisfusion_cli

    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    monkeypatch.setattr(whisfusion_cli, "__version__", "9.8.7", raising=False)
    result = runner.invoke(app, ["--version"])
    assert (result.exit_code, result.stdout) == (0, "whisfusion 9.8.7\n")


# ---------------------------------------------------------------- 2. --device


@pytest.mark.parametrize("device", ["gpu", "mps", "tpu", "cuda:7"])
def test_a_device_torch_cannot_use_is_one_line_with_exit_2(device, clips, tiny_ckpt, tmp_path) -> None:
    import torch

    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    result = runner.invoke(app, ["transcribe", str(clips[0]), "-m", str(tiny_ckpt), "-o", str(tmp_path / "out"),
                                 "--device", device])
    assert device.split(":")[0] in _one_error_line(result)
    assert not (tmp_path / "out").exists()


def test_eval_rejects_a_bad_device_too(clips, tiny_ckpt, tmp_path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": str(clips[0]), "text": "a chirp", "duration": 1.5}) + "\n")
    result = runner.invoke(app, ["eval", "manifest", str(manifest), "-m", str(tiny_ckpt), "--device", "gpu"])
    assert "unknown device 'gpu'" in _one_error_line(result)


# ---------------------------------------------------------------- 3. --language


@pytest.mark.parametrize("language", ["de", "fr", "German"])
def test_a_language_other_than_english_is_one_line_with_exit_2(language, clips, tiny_ckpt, tmp_path) -> None:
    result = runner.invoke(app, ["transcribe", str(clips[0]), "-m", str(tiny_ckpt), "-o", str(tmp_path),
                                 "--language", language])
    assert "English only" in _one_error_line(result) and language in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("language", ["en", "English", "EN"])
def test_english_is_accepted_and_recorded(language, clips, tiny_ckpt, tmp_path) -> None:
    result = runner.invoke(app, ["transcribe", str(clips[0]), "-m", str(tiny_ckpt), "-o", str(tmp_path),
                                 "-f", "json", "--language", language])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "clip0.json").read_text())["language"] == "en"


def test_a_multilingual_whisper_baseline_takes_the_language(weights_dir) -> None:
    from whisfusion_cli.errors import ConfigError
    from whisfusion_cli.transcribe import load_model, set_language

    multilingual = load_model(weights_dir / "whisper-base", "cpu")
    assert set_language(multilingual, "DE") == "de"
    assert multilingual.tokenizer.token_id("<|de|>") in multilingual.prompt
    with pytest.raises(ConfigError, match="unknown language 'xx'"):
        set_language(multilingual, "xx")
    with pytest.raises(ConfigError, match="English only"):
        set_language(load_model(weights_dir / "whisper-tiny.en", "cpu"), "de")


# ---------------------------------------------------------------- 4. missing inputs


def test_a_missing_input_is_reported_and_the_others_are_transcribed(clips, tiny_ckpt, tmp_path) -> None:
    out, missing = tmp_path / "out", tmp_path / "missing.wav"
    result = runner.invoke(app, ["transcribe", str(clips[0]), str(missing), str(clips[1]), "-m", str(tiny_ckpt),
                                 "-o", str(out), "-q"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [f"failed: {missing}: no such file or folder"]
    assert sorted(p.name for p in out.iterdir()) == ["clip0.txt", "clip1.txt"]


def test_only_missing_inputs_is_a_usage_error_naming_each(tiny_ckpt, tmp_path) -> None:
    a, b = tmp_path / "a.wav", tmp_path / "b.flac"
    result = runner.invoke(app, ["transcribe", str(a), str(b), "-m", str(tiny_ckpt)])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [f"error: {a}: no such file or folder", f"error: {b}: no such file or folder"]


# ---------------------------------------------------------------- 5. eval that scores nothing


def test_eval_where_no_audio_can_be_read_exits_1_with_one_line(tiny_ckpt, tmp_path) -> None:
    rows = []
    for i in range(3):
        bad = tmp_path / f"bad{i}.flac"
        bad.write_bytes(np.random.default_rng(i).bytes(4000))
        rows.append(json.dumps({"audio": bad.name, "text": "some words", "duration": 2.0 if i else None}))
    (tmp_path / "bad.jsonl").write_text("\n".join(rows) + "\n")
    result = runner.invoke(app, ["eval", "manifest", str(tmp_path / "bad.jsonl"), "-m", str(tiny_ckpt),
                                 "--json", str(tmp_path / "report.json")])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.stderr
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert errors == ["error: no utterance could be scored (skipped: audio_error 3)"], result.stderr
    assert result.stdout == "" and not (tmp_path / "report.json").exists()  # no empty report


def test_eval_where_every_audio_is_missing_exits_1_before_loading(tmp_path) -> None:
    rows = [json.dumps({"audio": f"gone{i}.wav", "text": "words"}) for i in range(2)]
    (tmp_path / "m.jsonl").write_text("\n".join(rows) + "\n")
    result = runner.invoke(app, ["eval", "manifest", str(tmp_path / "m.jsonl"), "-m", str(tmp_path / "no-model")])
    assert "no utterance could be scored (skipped: missing_audio 2)" in _one_error_line(result, 1)


# ---------------------------------------------------------------- 6. flags


@pytest.mark.parametrize("command, flag", [([], "--version"), (["transcribe"], "--quiet"),
                                           (["transcribe"], "--overwrite"), (["eval", "manifest"], "--help"),
                                           (["train"], "--resume"), (["bench"], "--help")])
def test_help_shows_flags_without_a_value(command, flag) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert flag in result.stdout and "<bool>" not in result.stdout


def test_flags_are_flags(clips, tiny_ckpt, tmp_path) -> None:
    result = runner.invoke(app, ["transcribe", "-q", "--overwrite", str(clips[0]), "-m", str(tiny_ckpt),
                                 "-o", str(tmp_path), "-f", "srt"])
    assert (result.exit_code, result.stderr) == (0, ""), result.output
    assert (tmp_path / "clip0.srt").is_file()


@pytest.mark.parametrize("args", [["--quiet", "true"], ["-q", "False"], ["--overwrite", "yes"]])
def test_a_value_after_a_flag_is_a_usage_error_not_an_input(args, clips, tiny_ckpt, tmp_path) -> None:
    result = runner.invoke(app, ["transcribe", *args, str(clips[0]), "-m", str(tiny_ckpt), "-o", str(tmp_path)])
    assert "flags take no value" in _one_error_line(result) and args[1] in result.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- 7. write errors


def test_an_output_that_cannot_be_written_is_named(clips, tiny_ckpt, tmp_path) -> None:
    out = tmp_path / "out"
    (out / "clip0.srt").mkdir(parents=True)  # a folder where the subtitles should go
    result = runner.invoke(app, ["transcribe", str(clips[0]), str(clips[1]), "-m", str(tiny_ckpt), "-o", str(out),
                                 "-f", "txt,srt", "-q"])
    assert result.exit_code == 1, result.output
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"failed: {clips[0]}: cannot write outputs to {out / 'clip0.srt'}: "), line
    assert (out / "clip1.srt").is_file()


def test_permission_denied_names_the_folder(clips, tiny_ckpt, tmp_path, monkeypatch) -> None:
    real_open = os.open

    def denied(path, *args, **kwargs):  # what a non-root user gets creating write_atomic's temp file
        if str(path).endswith(".tmp"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    result = runner.invoke(app, ["transcribe", str(clips[0]), "-m", str(tiny_ckpt), "-o", str(tmp_path), "-q",
                                 "-f", "json"])
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == [f"failed: {clips[0]}: cannot write outputs to {tmp_path}: Permission denied"]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs a non-root POSIX user")
def test_a_read_only_folder_is_named(clips, tiny_ckpt, tmp_path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    clip = folder / "clip.wav"
    clip.write_bytes(clips[0].read_bytes())
    folder.chmod(0o555)
    try:
        result = runner.invoke(app, ["transcribe", str(clip), "-m", str(tiny_ckpt), "-f", "srt", "-q"])
    finally:
        folder.chmod(0o755)
    assert result.exit_code == 1, result.output
    assert f"cannot write outputs to {folder}: Permission denied" in result.stderr


# ---------------------------------------------------------------- 8. stdin


def test_stdin_is_transcribed_like_the_file(clips, tiny_ckpt) -> None:
    by_path = runner.invoke(app, ["transcribe", str(clips[1]), "-m", str(tiny_ckpt)])
    assert by_path.exit_code == 0, by_path.output
    piped = runner.invoke(app, ["transcribe", "-", "-m", str(tiny_ckpt)], input=clips[1].read_bytes())
    assert (piped.exit_code, piped.stderr.strip()) == (0, ""), piped.output  # no summary: stdout has the text
    assert piped.stdout == by_path.stdout and piped.stdout.endswith("\n")


def test_stdin_outputs_are_named_stdin(clips, tiny_ckpt, tmp_path) -> None:
    for _ in range(2):  # piped media is new each time: never skipped as done
        result = runner.invoke(app, ["transcribe", "-", "-m", str(tiny_ckpt), "-o", str(tmp_path), "-f", "json",
                                     "-q"], input=clips[0].read_bytes())
        assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "stdin.json").read_text())["duration"] == pytest.approx(1.5)
    assert [p.name for p in tmp_path.iterdir()] == ["stdin.json"]


def test_empty_stdin_is_a_usage_error(tiny_ckpt) -> None:
    result = runner.invoke(app, ["transcribe", "-", "-m", str(tiny_ckpt)], input=b"")
    assert "standard input is empty" in _one_error_line(result)


def test_a_file_named_with_a_dash_goes_after_double_dash(clips, tiny_ckpt, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-clip.wav").write_bytes(clips[0].read_bytes())
    result = runner.invoke(app, ["transcribe", "-m", str(tiny_ckpt), "-o", "out", "-f", "json", "--", "-clip.wav"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "-clip.json").is_file()


def test_a_flac_piped_into_the_program(clips, tiny_ckpt, tmp_path) -> None:
    """cat clip.flac | whisfusion transcribe -: a real pipe, and media that needs ffmpeg."""
    flac = tmp_path / "clip.flac"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(clips[1]), "-c:a", "flac", str(flac)], check=True)
    expected = runner.invoke(app, ["transcribe", str(flac), "-m", str(tiny_ckpt)])
    assert expected.exit_code == 0, expected.output
    proc = _whisfusion("transcribe", "-", "-m", tiny_ckpt, input=flac.read_bytes())
    assert (proc.returncode, proc.stderr.strip()) == (0, b""), proc.stderr.decode()
    assert proc.stdout.decode() == expected.stdout


def test_piped_junk_is_named_as_stdin(tiny_ckpt) -> None:
    result = runner.invoke(app, ["transcribe", "-", "-m", str(tiny_ckpt), "-q"], input=b"not media at all\n" * 50)
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines() == ["failed: -: not a media file ffmpeg can read"]


# ---------------------------------------------------------------- 9. long jobs: Ctrl-C, resume, json


def _count_decodes(monkeypatch, stop: int | None = None) -> list[int]:
    """Records the windows of each decode call of the real model; raises KeyboardInterrupt (what Ctrl-C
    raises) at call `stop`."""
    from whisfusion_cli.asr import WhisfusionASR

    calls: list[int] = []
    decode = getattr(WhisfusionASR.decode_windows, "__wrapped__", WhisfusionASR.decode_windows)  # unpatched

    def counted(self, windows, *args, **kwargs):
        if len(calls) == stop:
            raise KeyboardInterrupt
        calls.append(len(windows))
        return decode(self, windows, *args, **kwargs)

    counted.__wrapped__ = decode  # type: ignore[attr-defined]
    monkeypatch.setattr(WhisfusionASR, "decode_windows", counted)
    return calls


def test_ctrl_c_keeps_finished_windows_and_the_same_command_continues(tiny_ckpt, tmp_path,
                                                                       monkeypatch) -> None:
    from test_progress import speech

    talk = speech(tmp_path / "talk.wav", 4)  # 4 windows, decoded one per batch
    out = tmp_path / "out"
    args = ["transcribe", str(talk), "-m", str(tiny_ckpt), "-o", str(out), "-f", "txt,json",
            "--batch-size", "1", "-p", "fast"]
    _count_decodes(monkeypatch, stop=2)
    result = runner.invoke(app, args)
    assert result.exit_code == 130, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert result.stderr.splitlines() == ["interrupted: 0 files written, 1 partial file kept for resume "
                                          "(0:06 of 0:16 done); rerun the same command to continue"]
    assert sorted(p.name for p in out.iterdir()) == ["talk.partial.jsonl"]  # no output, not even half of one
    assert len((out / "talk.partial.jsonl").read_text().splitlines()) == 1 + 2  # header + 2 windows

    calls = _count_decodes(monkeypatch)
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert calls == [1, 1] and "resuming at 0:06 of 0:16" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["talk.json", "talk.txt"]  # the sidecar is gone
    calls = _count_decodes(monkeypatch)
    whole = runner.invoke(app, [*args[:5], str(tmp_path / "whole"), *args[6:]])
    assert whole.exit_code == 0 and calls == [1, 1, 1, 1]
    assert (out / "talk.txt").read_text() == (tmp_path / "whole" / "talk.txt").read_text()

    calls = _count_decodes(monkeypatch)
    result = runner.invoke(app, [*args[:7], "srt", *args[8:], "-q"])  # srt added later
    assert (result.exit_code, result.stderr, calls) == (0, "", [])  # written from talk.json
    assert (out / "talk.srt").read_text().count(" --> ") >= 1


def test_ctrl_c_while_loading_is_one_line_too(clips, tiny_ckpt, tmp_path, monkeypatch) -> None:
    import whisfusion_cli.transcribe as transcribe

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(transcribe, "load_model", interrupted)
    result = runner.invoke(app, ["transcribe", str(clips[0]), "-m", str(tiny_ckpt), "-o", str(tmp_path)])
    assert result.exit_code == 130 and result.stderr == "interrupted: nothing written\n", result.output

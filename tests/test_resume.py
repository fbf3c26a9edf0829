"""Tests for whisfusion_cli.resume and its use by transcribe_files: run keys, a long file's
finished windows kept through Ctrl-C and continued by the rerun, stale and torn sidecars, and a
format added later written from the json without decoding."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import srt

from test_progress import EchoModel, speech
from whisfusion_cli.audio import load_audio
from whisfusion_cli.config import DecodingOptions
from whisfusion_cli.resume import partial_path, run_key
from whisfusion_cli.segment import SAMPLE_RATE as SR
from whisfusion_cli.segment import split_windows
from whisfusion_cli.transcribe import (FileDone, FileStarted, Job, TranscribeOptions, kept_partials,
                                       transcribe_files)

N_WINDOWS = 8
OPTIONS = TranscribeOptions(("txt", "json"), batch_size=2)


class StopModel(EchoModel):
    """EchoModel that is interrupted (KeyboardInterrupt, as Ctrl-C raises) at decode call `stop`."""

    def __init__(self, stop: int | None = None) -> None:
        super().__init__()
        self.stop = stop

    def decode_windows(self, windows, options=None):
        if len(self.calls) == self.stop:
            raise KeyboardInterrupt
        return super().decode_windows(windows, options)


class NoDecoder(EchoModel):
    def decode_windows(self, windows, options=None):
        raise AssertionError("decoded: the json should have been used")


@pytest.fixture()
def talk(tmp_path) -> Job:
    return Job(speech(tmp_path / "talk.wav", N_WINDOWS), tmp_path / "out" / "talk")


def _interrupt(job: Job, stop: int, options: TranscribeOptions = OPTIONS) -> None:
    with pytest.raises(KeyboardInterrupt):
        list(transcribe_files(StopModel(stop), [job], options))  # type: ignore[arg-type]


def test_run_key_follows_model_settings_and_media_content(tmp_path) -> None:
    a = speech(tmp_path / "a.wav", 2)
    copy = shutil.copy(a, tmp_path / "copy.wav")
    other = speech(tmp_path / "b.wav", 2, seed=1)  # same length, other samples
    key = run_key("m", {"k": 1}, a)
    assert run_key("m", {"k": 1}, Path(copy)) == key  # the content counts, not the path or time
    others = (run_key("m2", {"k": 1}, a), run_key("m", {"k": 2}, a), run_key("m", {"k": 1}, other))
    assert len({key, *others}) == 4
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"x")
    before = run_key(str(model_dir), {}, a)
    (model_dir / "model.safetensors").write_bytes(b"yy")  # retrained in place
    assert run_key(str(model_dir), {}, a) != before


def test_ctrl_c_mid_file_keeps_its_finished_windows_and_the_rerun_continues(talk, tmp_path) -> None:
    windows = split_windows(load_audio(talk.source))
    duration = len(load_audio(talk.source)) / SR
    assert len(windows) == N_WINDOWS
    _interrupt(talk, stop=3)  # 3 batches of 2 windows done, the 4th interrupted
    sidecar = partial_path(talk.stem)
    header, *rows = [json.loads(line) for line in sidecar.read_text().splitlines()]
    assert header["duration"] == pytest.approx(duration) and [r["i"] for r in rows] == list(range(6))
    assert not list(talk.stem.parent.glob("talk.txt")) and not list(talk.stem.parent.glob("talk.json"))
    ((job, done_s, total_s),) = kept_partials(EchoModel(), [talk], OPTIONS)  # type: ignore[arg-type]
    assert job == talk and done_s == pytest.approx(windows[5].end) and total_s == pytest.approx(duration)

    rerun, seen = EchoModel(), []
    events = list(transcribe_files(rerun, [talk], OPTIONS, seen.append))  # type: ignore[arg-type]
    assert sum(rerun.calls) == N_WINDOWS - 6  # only the windows not kept
    (started,) = [e for e in events if isinstance(e, FileStarted)]
    assert started.resumed_s == pytest.approx(windows[5].end) and seen[-1].resumed_s == started.resumed_s
    assert seen[-1].done_s == pytest.approx(duration) and not sidecar.exists()

    whole = Job(talk.source, tmp_path / "whole" / "talk")
    list(transcribe_files(EchoModel(), [whole], OPTIONS))  # type: ignore[arg-type]
    assert Path(f"{talk.stem}.txt").read_text() == Path(f"{whole.stem}.txt").read_text()
    segments = json.loads(Path(f"{talk.stem}.json").read_text())["segments"]
    assert segments == json.loads(Path(f"{whole.stem}.json").read_text())["segments"]
    assert [e.skipped for e in transcribe_files(NoDecoder(), [talk], OPTIONS)] == [True]  # type: ignore


@pytest.mark.parametrize("change", ["options", "media"])
def test_a_sidecar_from_other_options_or_media_is_ignored_and_replaced(change, talk) -> None:
    _interrupt(talk, stop=2, options=TranscribeOptions(OPTIONS.formats, batch_size=2,
                                                       decoding=DecodingOptions(k=2)))
    options = OPTIONS
    if change == "options":
        options = TranscribeOptions(OPTIONS.formats, batch_size=2, decoding=DecodingOptions(k=3))
    else:
        speech(talk.source, N_WINDOWS, seed=5)  # the file was replaced (same length)
    _interrupt(talk, stop=1, options=options)  # one batch under the new key...
    rows = partial_path(talk.stem).read_text().splitlines()[1:]
    assert len(rows) == 2  # ...replaced the old sidecar's 4 windows
    model = EchoModel()
    list(transcribe_files(model, [talk], options))  # type: ignore[arg-type]
    k = 3 if change == "options" else 10
    assert sum(model.calls) == N_WINDOWS - 2
    assert all(line.endswith(f"/{k}") for line in Path(f"{talk.stem}.txt").read_text().splitlines())


def test_a_torn_last_line_is_dropped_and_the_sidecar_rewritten_whole(talk) -> None:
    _interrupt(talk, stop=2)
    sidecar = partial_path(talk.stem)
    with sidecar.open("a") as f:
        f.write('{"i": 4, "start": 1')  # killed while writing it
    _interrupt(talk, stop=1)  # continues from 4 windows, keeps 2 more
    rows = [json.loads(line) for line in sidecar.read_text().splitlines()[1:]]  # every line whole
    assert [r["i"] for r in rows] == list(range(6))


def test_a_format_added_later_is_written_from_the_json_without_decoding(talk, tmp_path) -> None:
    list(transcribe_files(EchoModel(), [talk], TranscribeOptions(("json",))))  # type: ignore[arg-type]
    events = list(transcribe_files(NoDecoder(), [talk], TranscribeOptions(("json", "srt", "txt"))))  # type: ignore
    (done,) = events
    assert isinstance(done, FileDone) and done.reused and not done.skipped
    assert done.paths == (Path(f"{talk.stem}.srt"), Path(f"{talk.stem}.txt"))
    direct = Job(talk.source, tmp_path / "direct" / "talk")
    list(transcribe_files(EchoModel(), [direct], TranscribeOptions(("srt", "txt"))))  # type: ignore[arg-type]
    assert Path(f"{talk.stem}.txt").read_text() == Path(f"{direct.stem}.txt").read_text()
    ours, theirs = (list(srt.parse(Path(f"{s}.srt").read_text())) for s in (talk.stem, direct.stem))
    assert [c.content for c in ours] == [c.content for c in theirs]
    assert all(abs((a.start - b.start).total_seconds()) <= 0.001  # the json keeps times to the ms
               and abs((a.end - b.end).total_seconds()) <= 0.001 for a, b in zip(ours, theirs))


def test_a_json_from_other_options_or_without_a_key_is_not_reused(talk) -> None:
    list(transcribe_files(EchoModel(), [talk], TranscribeOptions(("json",))))  # type: ignore[arg-type]
    model = EchoModel()
    other = TranscribeOptions(("vtt",), decoding=DecodingOptions(k=3))
    (done,) = [e for e in transcribe_files(model, [talk], other) if isinstance(e, FileDone)]  # type: ignore
    assert not done.reused and sum(model.calls) == N_WINDOWS
    path = Path(f"{talk.stem}.json")
    data = json.loads(path.read_text())
    del data["run_key"]  # a json from an earlier version, or written by hand
    path.write_text(json.dumps(data))
    model = EchoModel()
    events = transcribe_files(model, [talk], TranscribeOptions(("tsv",)))  # type: ignore[arg-type]
    (done,) = [e for e in events if isinstance(e, FileDone)]
    assert not done.reused and sum(model.calls) == N_WINDOWS

"""WER/CER/oracle-WER/RTF evaluation: scripted and real runs, and their reports against the JSON schema."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from whisfusion_cli.asr import ASRModel, Stopwatch, WindowResult, load_model
from whisfusion_cli.audio import SAMPLE_RATE, load_audio
from whisfusion_cli.config import PRESETS, DecodingOptions
from whisfusion_cli.data import Example, read_librispeech
from whisfusion_cli.evaluate import EvalOptions, evaluate
from whisfusion_cli.report import REPORT_SCHEMA, report_to_dict, validate_report_dict

# ---------------------------------------------------------------- evaluate with a scripted model


class ScriptedModel(ASRModel):
    """Answers each window with its reference minus the first word; the candidates are scripted."""

    engine, name = "pdd", "scripted"

    def __init__(self, refs: dict[int, str], oracle_has_ref: bool = True):
        self.refs, self.oracle_has_ref = refs, oracle_has_ref  # window length in samples -> reference
        self.stopwatch = Stopwatch(torch.device("cpu"))
        self.calls: list[list[int]] = []

    def options(self, preset: str | None = None, **overrides) -> DecodingOptions:
        return PRESETS["fast"]

    def decode_windows(self, windows: Sequence[np.ndarray],
                       options: DecodingOptions | None = None) -> list[WindowResult]:
        self.calls.append([len(w) for w in windows])
        totals = self.stopwatch.totals
        totals["encode"] = totals.get("encode", 0.0) + 0.01 * len(windows)
        totals["decode"] = totals.get("decode", 0.0) + 0.02 * len(windows)
        out = []
        for w in windows:
            ref = self.refs[len(w)]
            hyp = ref.split(" ", 1)[1]
            candidates = (hyp, ref) if self.oracle_has_ref else (hyp, hyp)
            out.append(WindowResult(hyp, 0.5, candidates, len(hyp.split())))
        return out


@pytest.fixture(scope="module")
def clips(librispeech: Path) -> list[Example]:
    examples, skipped = read_librispeech(librispeech)
    assert len(examples) == 4 and not skipped
    return examples


@pytest.fixture(scope="module")
def refs_by_length(clips: list[Example]) -> dict[int, str]:
    return {len(load_audio(ex.audio)): ex.text for ex in clips}


def test_evaluate_scores_batches_and_orders(clips, refs_by_length):
    model = ScriptedModel(refs_by_length)
    seen: list[tuple[int, int]] = []
    report = evaluate(model, clips, EvalOptions(batch_size=2), progress=lambda d, t: seen.append((d, t)))
    assert [u.id for u in report.utterances] == [ex.audio.stem for ex in clips]  # input order
    assert all(u.errors == 1 and u.oracle_errors == 0 for u in report.utterances)
    assert report.overall.wer == pytest.approx(4 / report.overall.ref_words) and report.overall.oracle_wer == 0
    assert report.preset == "fast" and report.engine == "pdd" and report.skipped == {}
    # one clip is 10.4 s, three are under 10 s: batches stay within a bucket, longest first
    assert set(report.by_bucket) == {"0-10", "10-20"} and report.by_bucket["0-10"].n_utterances == 3
    assert len(model.calls) == 1 + 3  # warm-up + [10-20], [0-10 x 2], [0-10]
    assert all(c == sorted(c, reverse=True) for c in model.calls)
    assert report.overall.encode_s == pytest.approx(0.04) and report.overall.decode_s == pytest.approx(0.08)
    assert report.overall.wall_s > 0 and report.overall.overhead_s > 0  # ffmpeg loading at least
    assert seen[0] == (0, 4) and seen[-1] == (4, 4)
    assert report.by_subset_bucket["test-clean"]["0-10"] == report.by_bucket["0-10"]
    validate_report_dict(report_to_dict(report))


def test_oracle_equals_wer_when_candidates_are_the_chosen_text(clips, refs_by_length):
    report = evaluate(ScriptedModel(refs_by_length, oracle_has_ref=False), clips, EvalOptions(warmup=False))
    assert report.overall.oracle_wer == report.overall.wer > 0


def test_evaluate_skips_and_counts(clips, refs_by_length, tmp_path):
    examples = [replace(clips[0], subset="other"), clips[1],
                Example(tmp_path / "gone.flac", "x", None, "test-clean"),  # measured: unreadable
                Example(tmp_path / "gone2.flac", "x", 5.0, "test-clean"),  # given duration: fails in its batch
                replace(clips[2], duration=31.0), clips[3]]
    report = evaluate(ScriptedModel(refs_by_length), examples, EvalOptions(limit=5, warmup=False))
    assert report.n_examples == 5 and report.skipped == {"audio_error": 2, "too_long": 1}
    assert [u.id for u in report.utterances] == [clips[0].audio.stem, clips[1].audio.stem]
    assert set(report.by_subset) == {"other", "test-clean"}
    d = report_to_dict(report)
    validate_report_dict(d)
    assert d["counts"] == {"examples": 5, "evaluated": 2, "skipped": {"audio_error": 2, "too_long": 1}}


# ---------------------------------------------------------------- JSON schema


@pytest.fixture(scope="module")
def report_dict(clips, refs_by_length) -> dict:
    return report_to_dict(evaluate(ScriptedModel(refs_by_length), clips, EvalOptions(warmup=False)))


def test_report_dict_is_strict_json(report_dict):
    assert json.loads(json.dumps(report_dict, allow_nan=False)) == report_dict
    validate_report_dict(report_dict)


@pytest.mark.parametrize("damage", [
    lambda d: d.pop("overall"),
    lambda d: d["overall"].__setitem__("wer", math.nan),
    lambda d: d["overall"].__setitem__("word_errors", 1.5),
    lambda d: d["by_bucket"].__setitem__("30-40", d["overall"]),
    lambda d: d["utterances"][0].__setitem__("candidates", "one string"),
    lambda d: d.__setitem__("schema", "whisfusion.eval/0"),
    lambda d: d.__setitem__("extra", 1),
])
def test_validator_rejects_damaged_reports(report_dict, damage):
    broken = json.loads(json.dumps(report_dict))
    damage(broken)
    with pytest.raises(ValueError):
        validate_report_dict(broken)


def test_schema_is_valid_json_schema(report_dict):
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(REPORT_SCHEMA)
    jsonschema.validate(report_dict, REPORT_SCHEMA, cls=jsonschema.Draft202012Validator)


# ---------------------------------------------------------------- real models


def test_whisper_base_baseline_on_real_clips(weights_dir, clips):
    model = load_model(weights_dir / "whisper-base", device="cpu", dtype="fp32")
    report = evaluate(model, clips, EvalOptions(warmup=False))
    print(f"whisper-base: WER {report.overall.wer:.2%} CER {report.overall.cer:.2%} RTFx {report.overall.rtfx:.2f}")
    assert report.overall.wer <= 0.10
    assert report.overall.oracle_wer == report.overall.wer and report.options is None and report.preset is None
    assert all(u.candidates == () for u in report.utterances)
    assert "could wait no longer" in report.utterances[2].hyp_norm
    m = report.overall
    assert min(m.wall_s, m.encode_s, m.decode_s, m.rtf, m.rtfx, m.encode_ms, m.decode_ms, m.tokens_per_s) > 0
    assert m.wall_s >= m.encode_s + m.decode_s and m.n_tokens > 0
    validate_report_dict(report_to_dict(report))


def test_random_tiny_whisfusion_on_real_clips(tiny_model, clips):
    report = evaluate(tiny_model, clips, EvalOptions(batch_size=3, options=PRESETS["fast"], warmup=False))
    assert report.preset == "fast" and report.engine == "pdd" and len(report.utterances) == 4
    assert all(len(u.candidates) == PRESETS["fast"].k for u in report.utterances)
    assert all(u.oracle_errors <= u.errors for u in report.utterances)
    assert report.overall.oracle_wer <= report.overall.wer
    seconds = sum(len(load_audio(ex.audio)) for ex in clips) / SAMPLE_RATE
    assert report.overall.audio_s == pytest.approx(seconds)
    validate_report_dict(report_to_dict(report))


def test_eval_commands_write_a_valid_report(weights_dir, librispeech, tmp_path):
    import json

    from typer.testing import CliRunner

    from whisfusion_cli.cli import app
    from whisfusion_cli.report import validate_report_dict

    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["eval", "librispeech", str(librispeech), "--subset", "test-clean", "--model",
                                      str(weights_dir / "whisper-tiny.en"), "--limit", "2", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    validate_report_dict(report)
    assert report["counts"]["evaluated"] == 2 and report["engine"] == "ar"
    assert "test-clean" in result.output and "WER" in result.output
    missing = CliRunner().invoke(app, ["eval", "manifest", str(tmp_path / "none.jsonl"), "-m", str(weights_dir)])
    assert missing.exit_code == 2 and "no such manifest" in missing.output
    bad = CliRunner().invoke(app, ["eval", "librispeech", str(librispeech), "--subset", "dev-other",
                                   "-m", str(weights_dir / "whisper-tiny.en")])
    assert bad.exit_code == 2 and "no such subset" in bad.output


def test_manifest_subsets_groups_and_long_windows_in_one_run(weights_dir, real_clips, tmp_path):
    """`eval manifest --subset-by speaker --group ... --long-windows`: rows are grouped by a field (up to
    its ':'), renamed by the first matching glob, and each subset's clips (and all of them) are also
    scored joined into long windows; clips/... and long/... add up into clips and long."""
    import json

    from typer.testing import CliRunner

    from whisfusion_cli.cli import app
    from whisfusion_cli.data import join_long, read_manifest

    speakers = ["corpusA:1", "corpusB:7", "corpusA:2", "other:3"]
    rows = [{"audio": str(path), "text": text, "speaker": s} for (path, text), s in zip(real_clips, speakers)]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples, _ = read_manifest(manifest, "speaker", [("b", "corpusB"), ("rest", "!corpusA")])
    assert [e.subset for e in examples] == ["corpusA", "b", "corpusA", "rest"]
    assert [e.subset for e in read_manifest(manifest)[0]] == ["m"] * 4  # the manifest's stem by default

    joined = join_long(examples, tmp_path)
    longs = [e for e in joined if e.subset.startswith("long/")]
    assert [e.subset for e in joined[:4]] == ["clips/corpusA", "clips/b", "clips/corpusA", "clips/rest"]
    assert {e.subset for e in longs} == {"long/corpusA", "long/b", "long/rest", "long/all"}
    clip_s = {e.audio: len(load_audio(e.audio)) / SAMPLE_RATE for e in examples}
    for name in ("corpusA", "b", "rest", "all"):  # each clip once, joined with 0.5 s pauses, texts along
        part = [x for x in examples if name in ("all", x.subset)]
        windows = [e for e in longs if e.subset == f"long/{name}"]
        assert all(abs(len(load_audio(e.audio)) / SAMPLE_RATE - e.duration) < 1e-3 <= 30.0 - e.duration for e in windows)
        assert sum(e.duration for e in windows) == pytest.approx(
            sum(clip_s[x.audio] for x in part) + 0.5 * (len(part) - len(windows)), abs=1e-3)
        assert sorted(" ".join(e.text for e in windows).split()) == sorted(" ".join(x.text for x in part).split())
    assert len([e for e in longs if e.subset == "long/all"]) < len(examples)  # clips do share windows

    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["eval", "manifest", str(manifest), "-m", str(weights_dir / "whisper-tiny.en"),
                                      "--subset-by", "speaker", "--group", "native=!corpusB", "--long-windows",
                                      "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    subsets = report["by_subset"]
    assert list(subsets)[:3] == ["clips", "clips/native", "clips/corpusB"] and "long/all" in subsets
    assert subsets["clips"]["n_utterances"] == 4
    assert subsets["long"]["n_utterances"] == sum(subsets[s]["n_utterances"] for s in subsets if s.startswith("long/"))
    assert subsets["long/all"]["wer"] < 0.2  # Whisper tiny.en on joined LibriSpeech clips
    bad = CliRunner().invoke(app, ["eval", "manifest", str(manifest), "-m", str(weights_dir / "whisper-tiny.en"),
                                   "--group", "x=y"])
    assert bad.exit_code == 2 and "--subset-by" in bad.output

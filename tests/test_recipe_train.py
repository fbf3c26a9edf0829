"""The synthetic-speech recipe end to end at a tiny scale on the CPU: render (espeak-ng / flite) ->
stream_train.py (Whisper tiny.en turned into whisper-mdm, both stages) -> delta.py extract/apply ->
device_eval.py. Needs a TTS engine and the real Whisper weights; skips cleanly without them."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "synthetic"
sys.path.insert(0, str(RECIPE))

from test_recipe_synthetic import _book_file


@pytest.mark.slow
def test_recipe_renders_trains_ships_and_evaluates(tmp_path, weights_dir, monkeypatch):
    engines = [e for e in ("espeak-ng", "flite") if shutil.which(e)]
    if not engines:
        pytest.skip("no TTS engine: apt-get install espeak-ng flite")
    import delta
    import device_eval
    import make_dataset
    import stream_train

    from whisfusion_cli.checkpoint import load_weights

    data = tmp_path / "synth"
    make_dataset.main(["--books", str(_book_file(tmp_path)), "--out", str(data), "--hours", "0.01",
                       "--val-hours", "0.003", "--test-hours", "0.003", "--seed", "1", "--voices", *engines,
                       "--workers", "2", "--format", "wav"])
    progress = [json.loads(x) for x in (data / "progress.jsonl").read_text().splitlines()]
    for split, name in (("train", "train.jsonl"), ("val", "val.jsonl"), ("test_voices", "test_voices.jsonl")):
        rows = [json.loads(x) for x in (data / name).read_text().splitlines()]
        assert rows == [{k: v for k, v in r.items() if k != "split"} for r in sorted(
            (r for r in progress if r["split"] == split), key=lambda r: r["audio"])], split  # same rows

    whisper = weights_dir / "whisper-tiny.en"
    run = tmp_path / "run"
    stream_train.train(stream_train.parse_args([
        "--data", str(data), "--whisper", str(whisper), "--out", str(run), "--device", "cpu", "--batch", "4",
        "--min-clips", "4", "--max-steps", "6", "--stage1-frac", "0.5", "--log-every", "3", "--val-every", "1",
        "--val-clips", "2", "--minutes", "30"]))
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["final"] and log[-1]["step"] == 6 and log[-1]["stage2_from_step"] == 3
    assert "val_wer_4step" in log[-1] and log[-1]["val_loss_t0.9"] > 0

    from whisfusion_cli.checkpoint import init_from_whisper

    start, _, _ = init_from_whisper(whisper)
    before, after = start.state_dict(), load_weights(run / "model")
    emb = "decoder.embed_tokens.weight"
    mask_id = before[emb].shape[0] - 1
    assert torch.equal(after[emb][:mask_id].float(), before[emb][:mask_id].half().float())  # frozen rows
    assert not torch.equal(after[emb][mask_id].float(), before[emb][mask_id].half().float())  # [MASK] trains
    assert not torch.equal(after["decoder.layers.0.fc1.weight"].float(), before["decoder.layers.0.fc1.weight"].half().float())
    assert all(torch.equal(after[k].float(), v.half().float()) for k, v in before.items() if k.startswith("encoder."))

    again = tmp_path / "again"  # going on from the trained model (--init), fresh-weighted batches
    stream_train.train(stream_train.parse_args([
        "--data", str(data), "--init", str(run / "model"), "--out", str(again), "--device", "cpu", "--batch", "4",
        "--min-clips", "4", "--max-steps", "2", "--fresh", "0.5", "--log-every", "1", "--val-every", "100",
        "--val-clips", "1", "--minutes", "30"]))
    assert json.loads((again / "log.jsonl").read_text().splitlines()[-1])["step"] == 2
    went_on = load_weights(again / "model")
    assert not torch.equal(went_on["decoder.layers.0.fc1.weight"], after["decoder.layers.0.fc1.weight"])
    assert torch.equal(went_on[emb][:mask_id], after[emb][:mask_id])  # still frozen

    delta.extract(run / "model", tmp_path / "delta")
    presets = tmp_path / "presets.json"
    presets.write_text(json.dumps({"accurate": {"k": 3, "steps": 2, "schedule": [1.0, 0.5]},
                                   "fast": {"k": 2, "steps": 2, "schedule": [1.0, 0.5], "select": "rescore",
                                            "verify": 0.5}}))
    shipped = delta.apply(whisper, tmp_path / "delta", tmp_path / "shipped", presets, max_shard_bytes=15_000_000,
                          default_preset="accurate", rescorer=True)
    assert json.loads((shipped / "config.json").read_text())["default_preset"] == "accurate"
    assert list(shipped.glob("rescorer-*.safetensors"))  # Whisper's AR decoder ships beside it
    assert all(f.stat().st_size <= 15_000_000 for f in shipped.glob("*.safetensors"))
    rebuilt = load_weights(shipped)
    assert rebuilt.keys() == after.keys() and all(torch.equal(rebuilt[k], after[k]) for k in after)

    records = device_eval.main(["--models", str(shipped), "--data", str(data), "--splits", "test_voices",
                                "--limit", "2", "--settings", "accurate"])
    assert records and records[0]["setting"] == "accurate" and 0 <= records[0]["oracle_wer"] <= records[0]["wer"]
    assert set(records[0]["wer_by_voice"]) <= {"rhvoice-alan", "flite-awb"} and records[0]["wer_by_voice"]


def test_draw_favours_the_newest_clips():
    import stream_train

    gen = torch.Generator().manual_seed(0)
    idx = stream_train.draw(1000, 96, 0.5, gen)
    assert len(idx) == 96 and all(0 <= i < 1000 for i in idx)
    assert all(i >= 800 for i in idx[48:])  # the fresh half from the newest fifth
    assert min(idx[:48]) < 800  # the rest spread over the whole store
    assert stream_train.draw(3, 8, 1.0, gen) == [2] * 8  # a tiny store: its newest clip

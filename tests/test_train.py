import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from whisfusion_cli.audio import SAMPLE_RATE
from whisfusion_cli.audio import write_wav
from whisfusion_cli.checkpoint import load_whisfusion, save_whisfusion
from whisfusion_cli.config import DecoderConfig, EncoderConfig, WhisfusionConfig, WhisperMDMConfig
from whisfusion_cli.data import Example, epoch_order, micro_batch_span, split_examples
from whisfusion_cli.errors import ConfigError
from whisfusion_cli.model import DiffusionDecoder, Whisfusion
from whisfusion_cli.tokenizer import train_bpe_tokenizer
from whisfusion_cli.train import (
    StepInfo,
    TrainConfig,
    ValInfo,
    add_noise,
    noise_seed,
    param_groups,
    run_training,
    set_trainable,
)
from whisfusion_cli.whisper_mdm import WhisperMDMDecoder

WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight"]
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """16 clips (0.5-0.95 s, a tone pair each, so every canvas is 16 long) with two-word texts, a
    manifest, a random test-tiny checkpoint to start from and a feature cache shared by the tests."""
    root = tmp_path_factory.mktemp("train-corpus")
    rows = []
    for i in range(16):
        t = np.arange(int(SAMPLE_RATE * (0.5 + 0.03 * i))) / SAMPLE_RATE
        x = 0.3 * np.sin(2 * np.pi * (200 + 60 * (i % 8)) * t)
        x += 0.2 * np.sin(2 * np.pi * (900 + 120 * (i // 8)) * t)
        write_wav(root / f"clip{i:02d}.wav", x)
        text = f"{WORDS[i % 8].capitalize()} {WORDS[i // 8 + 2]}."
        rows.append({"audio": f"clip{i:02d}.wav", "text": text})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = train_bpe_tokenizer([r["text"] for r in rows] * 4, vocab_size=300)
    dec = DecoderConfig.from_name("test-tiny", vocab_size=tok.vocab_size)
    cfg = WhisfusionConfig(EncoderConfig.from_name("test-tiny"), dec, eos_id=tok.eos_id)
    torch.manual_seed(0)
    save_whisfusion(Whisfusion(cfg.encoder, cfg.decoder), cfg, tok, root / "init")
    return {"root": root, "manifest": root / "train.jsonl", "init": root / "init", "cache": root / "features"}


def tiny_cfg(corpus: dict[str, Path], output: Path, **overrides) -> TrainConfig:
    base = TrainConfig(data=(str(corpus["manifest"]),), output=str(output), init=str(corpus["init"]),
                       cache_dir=str(corpus["cache"]), steps=20, batch_size=4, lr=1e-2, warmup_steps=2,
                       val_fraction=0.25, val_every=10, save_every=10, log_every=1, device="cpu")
    return replace(base, **overrides)


def metrics(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def val_losses(output: Path) -> list[float]:
    return [m["val_loss"] for m in metrics(output) if m["event"] == "val"]


def test_stage1_trains_only_adapters_then_stage2_lowers_the_loss_with_llrd(corpus, tmp_path):
    events = []
    out1 = tmp_path / "stage1"
    best = run_training(tiny_cfg(corpus, out1, stage="1", val_every=2), callback=events.append)
    assert best == out1 / "best" and (out1 / "last" / "train_state.pt").is_file()
    steps = [e for e in events if isinstance(e, StepInfo)]
    assert [e.step for e in steps] == list(range(1, 21)) and all(e.total_steps == 20 for e in steps)
    assert steps[-1].eta_s == 0 and all(e.tokens_per_s > 0 and e.lr > 0 for e in steps)
    assert len([e for e in events if isinstance(e, ValInfo)]) == 10
    losses = val_losses(out1)
    assert losses[-1] < losses[0]

    before, _, _ = load_whisfusion(corpus["init"], CPU, torch.float32)
    after, _, _ = load_whisfusion(out1 / "last", CPU, torch.float32)
    new = after.state_dict()
    for name, p in before.state_dict().items():
        if name.startswith("decoder.") and ".cross_attn" in name:
            assert not torch.equal(p, new[name]), f"adapter {name} did not train"
        else:
            assert torch.equal(p, new[name]), f"frozen {name} changed"

    out2 = tmp_path / "stage2"
    run_training(tiny_cfg(corpus, out2, stage="2", init=str(out1 / "last"), val_every=5, lr=3e-3))
    stage2 = val_losses(out2)
    assert stage2[-1] < stage2[0] and stage2[-1] < 0.5 * losses[-1]
    state = torch.load(out2 / "last" / "train_state.pt", weights_only=True)
    lrs = {g["name"]: g["initial_lr"] for g in state["optimizer"]["param_groups"]}
    assert lrs == pytest.approx({"block.1": 3e-3, "block.0": 3e-3 * 0.9, "embedding": 3e-3 * 0.81,
                                 "head": 3e-3})


def test_llrd_groups_and_adapter_selection_for_both_decoder_families():
    decoder = DiffusionDecoder(DecoderConfig.from_name("test-tiny", n_layer=4))
    groups = param_groups(decoder, "2", lr=1.0, weight_decay=0.1, llrd=0.9)
    expected = {"embedding": 0.9 ** 4, "block.0": 0.9 ** 3, "block.1": 0.9 ** 2, "block.2": 0.9,
                "block.3": 1.0, "head": 1.0}
    for g in groups:
        assert g["lr"] == pytest.approx(expected[g["name"]])
        assert g["weight_decay"] == (0.1 if all(p.ndim >= 2 for p in g["params"]) else 0.0)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in decoder.parameters())
    assert {id(p) for g in groups if g["name"] == "head" for p in g["params"]} == {
        id(decoder.lm_head.weight), id(decoder.transformer.ln_f.weight)}
    assert all(g["lr"] == 1.0 for g in param_groups(decoder, "scratch", 1.0, 0.1, 0.9))

    mdm = WhisperMDMConfig(n_vocab=100, n_text_ctx=64, n_text_state=32, n_text_head=2, n_text_layer=3,
                           n_text_mlp=64)
    model = Whisfusion(EncoderConfig.from_name("test-tiny"), mdm)
    assert isinstance(model.decoder, WhisperMDMDecoder)
    names = {n for n, p in model.decoder.named_parameters() if p.requires_grad
             and id(p) in {id(q) for q in set_trainable(model, "1")}}
    assert names and all(".encoder_attn" in n for n in names)
    assert any("encoder_attn_layer_norm" in n for n in names)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    lrs = {g["name"]: g["lr"] for g in param_groups(model.decoder, "2", 1.0, 0.0, 0.5)}
    assert lrs == {"block.0": 0.25, "block.1": 0.5, "block.2": 1.0}  # stage 1 left only adapters trainable
    set_trainable(model, "2")
    lrs = {g["name"]: g["lr"] for g in param_groups(model.decoder, "2", 1.0, 0.0, 0.5)}
    assert lrs == {"embedding": 0.125, "block.0": 0.25, "block.1": 0.5, "block.2": 1.0, "head": 1.0}


def test_masks_depend_on_the_clip_not_on_its_batch():
    x0 = torch.randint(0, 50, (3, 16))
    seeds = [noise_seed(0, 1, p) for p in (4, 5, 6)]
    xt, masked, t = add_noise(x0, seeds, 99, (0.0, 1.0), 64)
    _, masked1, t1 = add_noise(torch.cat([x0[1:2], torch.zeros(1, 8, dtype=torch.long)], 1)[:, :24],
                                 seeds[1:2], 99, (0.0, 1.0), 64)
    assert torch.equal(masked[1], masked1[0, :16]) and t[1] == t1[0]
    assert torch.equal(xt[masked], torch.full_like(xt[masked], 99)) and torch.equal(xt[~masked], x0[~masked])
    stage2 = add_noise(x0, seeds, 99, (0.7, 1.0), 64)[2]
    assert bool(((stage2 >= 0.7) & (stage2 <= 1.0)).all())


def test_split_and_order_are_deterministic():
    exs = [Example(Path(f"/a/{i}.wav"), f"t{i}") for i in range(50)]
    train, val = split_examples(exs, 0.1, seed=3)
    assert len(val) == 5 and len(train) == 45 and not set(train) & set(val)
    assert split_examples(list(reversed(exs)), 0.1, seed=3)[1] == list(reversed(val))
    assert split_examples(exs, 0.1, seed=4)[1] != val
    assert split_examples(exs[:3], 0.01)[1] != [] and split_examples(exs, 0.0)[1] == []
    assert epoch_order(10, 0, 1) == epoch_order(10, 0, 1) != epoch_order(10, 0, 2)
    assert sorted(epoch_order(10, 0, 1)) == list(range(10))
    assert [micro_batch_span(1, 4, r, 2) for r in (0, 1)] == [(8, 12), (12, 16)]


def test_config_errors(corpus, tmp_path):
    with pytest.raises(ConfigError, match="init"):
        TrainConfig(data=("x",), output=str(tmp_path))
    with pytest.raises(ConfigError, match="stage"):
        TrainConfig(data=("x",), output=str(tmp_path), init="x", stage="3")  # type: ignore[arg-type]
    out = tmp_path / "run"
    run_training(tiny_cfg(corpus, out, steps=2, val_fraction=0.0))
    assert not (out / "best").exists() and (out / "last" / "config.json").is_file()
    with pytest.raises(ConfigError, match="resume"):
        run_training(tiny_cfg(corpus, out, steps=2))
    with pytest.raises(ConfigError, match="stage 1 run"):
        run_training(tiny_cfg(corpus, out, steps=4, stage="2", resume=True))
    with pytest.raises(ConfigError, match="global micro-batch"):
        run_training(tiny_cfg(corpus, tmp_path / "big", batch_size=64))


RUNNER = """
import sys, time, torch
from whisfusion_cli.train import TrainConfig, run_training
torch.set_num_threads(1)
cfg = TrainConfig(**eval(sys.argv[1]))
run_training(cfg, callback=(lambda e: time.sleep(float(sys.argv[2]))) if len(sys.argv) > 2 else None)
"""


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def fields(cfg: TrainConfig) -> str:
    return repr({f: getattr(cfg, f) for f in cfg.__dataclass_fields__})


def test_resume_after_sigkill_reaches_the_same_state(corpus, tmp_path):
    cfg = tiny_cfg(corpus, tmp_path / "run", steps=24, save_every=4, val_every=8)
    proc = subprocess.Popen([sys.executable, "-c", RUNNER, fields(cfg), "0.15"], env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    state = Path(cfg.output) / "last" / "train_state.pt"
    deadline = time.time() + 120
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # a few steps past the checkpoint, perhaps mid-save
    proc.send_signal(signal.SIGKILL)
    out = proc.communicate()[0].decode()
    assert proc.returncode == -signal.SIGKILL, out
    run_training(replace(cfg, resume=True))

    log = metrics(Path(cfg.output))
    resumed_at = next(m["step"] for m in log if m["event"] == "resume")
    assert 4 <= resumed_at < 24 and resumed_at % 4 == 0
    train_steps = [m["step"] for m in log if m["event"] == "train"]
    assert train_steps == list(range(1, 25))  # nothing logged twice, nothing missing
    final = torch.load(state, weights_only=True)
    assert final["step"] == 24

    straight = tiny_cfg(corpus, tmp_path / "straight", steps=24, save_every=4, val_every=8)
    run_training(straight)
    a = load_whisfusion(Path(cfg.output) / "last", CPU, torch.float32)[0].state_dict()
    b = load_whisfusion(Path(straight.output) / "last", CPU, torch.float32)[0].state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    assert [m["loss"] for m in metrics(Path(straight.output)) if m["event"] == "train"] == pytest.approx(
        [m["loss"] for m in log if m["event"] == "train"], rel=1e-5)


def test_a_failed_save_keeps_the_previous_checkpoint(corpus, tmp_path, monkeypatch):
    cfg = tiny_cfg(corpus, tmp_path / "run", steps=4, save_every=2, val_fraction=0.0)
    run_training(cfg)
    real_save = torch.save

    def dies_midway(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        run_training(replace(cfg, steps=8, resume=True))
    monkeypatch.setattr(torch, "save", real_save)
    last = Path(cfg.output) / "last"
    load_whisfusion(last, CPU, torch.float32)
    assert torch.load(last / "train_state.pt", weights_only=True)["step"] == 4

    real_replace = os.replace

    def dies_between_renames(src, dst):
        if Path(src).parent.name == ".staging" and Path(src).name == "last":  # publish's second rename
            raise KeyboardInterrupt("killed between the renames")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dies_between_renames)
    with pytest.raises(KeyboardInterrupt):
        run_training(replace(cfg, steps=8, resume=True))
    monkeypatch.setattr(os, "replace", real_replace)
    assert not last.exists() and last.with_name("last.old").is_dir()
    run_training(replace(cfg, steps=8, resume=True))  # recovers last.old (step 4), then trains on
    assert torch.load(last / "train_state.pt", weights_only=True)["step"] == 8
    assert [m["step"] for m in metrics(Path(cfg.output)) if m["event"] == "resume"] == [4, 4, 4]


def test_torchrun_two_processes_match_one_process(corpus, tmp_path):
    one = tiny_cfg(corpus, tmp_path / "one", stage="2", steps=2, batch_size=4, val_every=2)
    two = replace(one, output=str(tmp_path / "two"), batch_size=2)
    run_training(one)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run([*torchrun, "--no-python", sys.executable, "-c", RUNNER, fields(two)],
                          env=subprocess_env(), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a, b = metrics(Path(one.output)), metrics(Path(two.output))
    assert [m["world_size"] for m in (a[0], b[0])] == [1, 2]
    for key, event in (("loss", "train"), ("val_loss", "val")):
        la = [m[key] for m in a if m["event"] == event]
        lb = [m[key] for m in b if m["event"] == event]
        assert len(la) == len(lb) == 2 if event == "train" else len(la) == len(lb) == 1
        assert lb == pytest.approx(la, rel=1e-4)


@pytest.mark.real_weights
def test_fresh_decoder_on_a_real_whisper_encoder(corpus, weights_dir, tmp_path):
    from whisfusion_cli.asr import load_model

    rows = [json.loads(r) for r in corpus["manifest"].read_text().splitlines()[:6]]
    (tmp_path / "six.jsonl").write_text(
        "".join(json.dumps({**r, "audio": str(corpus["root"] / r["audio"])}) + "\n" for r in rows))
    cfg = TrainConfig(data=(str(tmp_path / "six.jsonl"),), output=str(tmp_path / "run"), stage="scratch",
                      encoder=str(weights_dir / "whisper-tiny.en"), decoder_config="test-tiny",
                      vocab_size=280, steps=2, batch_size=4, warmup_steps=1, val_fraction=0.25, device="cpu")
    best = run_training(cfg)
    model = load_model(best, device="cpu")
    assert model.cfg.decoder.n_audio_state == 384
    assert model.cfg.decoder.vocab_size == model.tokenizer.vocab_size
    assert model.tokenizer.kind == "bpe" and model.cfg.eos_id == model.tokenizer.token_id("</s>")
    assert model.tokenizer.encode("One three.") != model.tokenizer.encode("one three")  # cased, punctuated
    assert isinstance(model.decode_windows([np.zeros(8000, np.float32)])[0].text, str)


def test_train_command_runs_and_resumes(corpus, tmp_path):
    from typer.testing import CliRunner

    from whisfusion_cli.cli import app

    out = tmp_path / "cli-run"
    args = ["train", "--data", str(corpus["manifest"]), "--init", str(corpus["init"]), "--cache-dir",
            str(corpus["cache"]), "--output", str(out), "--stage", "2", "--steps", "4", "--batch-size", "4",
            "--warmup-steps", "1", "--val-every", "2", "--save-every", "2", "--device", "cpu", "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "last" / "config.json").is_file() and (out / "best" / "model.safetensors").is_file()
    steps = [m["step"] for m in metrics(out) if "loss" in m]
    assert steps and max(steps) == 4
    again = CliRunner().invoke(app, args[:-3] + ["--steps", "6", "--resume", "--device", "cpu", "-q"])
    assert again.exit_code == 0, again.output
    assert max(m["step"] for m in metrics(out) if "loss" in m) == 6
    bad = CliRunner().invoke(app, ["train", "--data", str(corpus["manifest"]), "--output", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "encoder" in bad.output

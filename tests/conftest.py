"""Shared fixtures: real Whisper weights (skipped cleanly when unavailable), real clips, tiny models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("COLUMNS", "120")  # pin rich's width for stable CLI output
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared"
LIBRISPEECH = SHARED / "data" / "librispeech-sample" / "LibriSpeech"
FETCH = SHARED / "tools" / "fetch_whisper_weights.py"


@pytest.fixture(scope="session")
def benchmark_script():
    """Loads benchmarks/NAME.py (scripts, not a package) as a module: benchmark_script("bench_gpu")."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is made
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture()
def one_thread():
    """Tiny tensors gain nothing from threads, and spin-waiting threads crawl on a busy machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def weights_dir() -> Path:
    """Directory with whisper-tiny.en and whisper-base in the HF layout, or skip."""
    dest = Path(os.environ.get("WHISFUSION_TEST_WEIGHTS", Path.home() / ".cache" / "whisfusion-test-weights"))
    if not all((dest / m / "model.safetensors").exists() for m in ("whisper-tiny.en", "whisper-base")):
        if not FETCH.exists():
            pytest.skip(f"real Whisper weights unavailable: {FETCH} missing")
        proc = subprocess.run([sys.executable, str(FETCH), str(dest)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"real Whisper weights unavailable: {proc.stderr.strip().splitlines()[-1:]}")
    return dest


@pytest.fixture(scope="session")
def librispeech() -> Path:
    if not LIBRISPEECH.is_dir():
        pytest.skip(f"{LIBRISPEECH} missing")
    return LIBRISPEECH


@pytest.fixture(scope="session")
def real_clips(librispeech: Path) -> list[tuple[Path, str]]:
    """(flac path, reference transcript) for the shared LibriSpeech clips."""
    refs: dict[str, str] = {}
    for trans in sorted(librispeech.glob("*/*/*/*.trans.txt")):
        for line in trans.read_text().splitlines():
            key, text = line.split(" ", 1)
            refs[key] = text
    return [(f, refs[f.stem]) for f in sorted(librispeech.glob("*/*/*/*.flac"))]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from whisfusion_cli.tokenizer import train_bpe_tokenizer

    texts = ["He could wait no longer.", "For a full hour he had paced up and down, waiting.",
             "Stuff it into you, his belly counselled him.", "The quick brown fox jumps over the lazy dog!"]
    return train_bpe_tokenizer(texts * 4, vocab_size=300)


@pytest.fixture()
def tiny_model(tiny_tokenizer):
    """A random test-tiny whisfusion model (fp32, CPU) wrapped for transcription."""
    import torch

    from whisfusion_cli.config import DecoderConfig, EncoderConfig, WhisfusionConfig
    from whisfusion_cli.model import Whisfusion
    from whisfusion_cli.asr import WhisfusionASR

    cfg = WhisfusionConfig(EncoderConfig.from_name("test-tiny"),
                           DecoderConfig.from_name("test-tiny", vocab_size=tiny_tokenizer.vocab_size),
                           eos_id=tiny_tokenizer.eos_id)
    torch.manual_seed(0)
    net = Whisfusion(cfg.encoder, cfg.decoder).eval()
    for block in net.decoder.transformer.h:  # a trained-looking adapter, so audio matters
        torch.nn.init.normal_(block.cross_attn.out.weight, std=0.02)
    return WhisfusionASR(net, cfg, tiny_tokenizer, "tiny")

"""`whisfusion bench`: latency, decoder tokens/s, length sweep, long-form RTFx, PDD vs AR.

Both engines run in one process on the same device and the same encoder. Timing is wall
clock around CUDA-synchronised calls; medians over repeats after warm-up. Random-weight models
of the right shapes are fine for speed: the AR baseline is then forced to a realistic number
of tokens (TOKENS_PER_SECOND_AR per second of audio), and the record says which weights it used.
"""

from __future__ import annotations

import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .asr import ASRModel, WhisfusionASR, WhisperASR
from .audio import SAMPLE_RATE, write_wav
from .config import DecoderConfig, EncoderConfig, WhisfusionConfig, WhisperTextConfig
from .model import Whisfusion
from .rescoring import Rescorer
from .tokenizer import Tokenizer, train_bpe_tokenizer
from .whisper import WhisperModel

TOKENS_PER_SECOND_AR = 3.5  # Whisper tokens per second of read English speech (LibriSpeech ~2.7 words/s)


@dataclass(frozen=True)
class BenchOptions:
    presets: tuple[str, ...] = ("fast", "balanced", "accurate")
    durations: tuple[float, ...] = (5.0, 15.0, 25.0)  # one clip per paper bucket (0-10, 10-20, 20-30 s)
    long_form_min: float = 0.0  # 0: skip the long-form run
    repeats: int = 10
    warmup: int = 2
    batch_size: int = 16
    canvas_sweep: tuple[int, ...] = (32, 64, 128, 256)
    ar_token_sweep: tuple[int, ...] = (16, 32, 64, 128, 220)


@dataclass
class BenchRecord:
    meta: dict[str, Any] = field(default_factory=dict)
    latency: list[dict[str, Any]] = field(default_factory=list)
    length_sweep: list[dict[str, Any]] = field(default_factory=list)
    long_form: list[dict[str, Any]] = field(default_factory=list)


def synthetic_speech(seconds: float, seed: int = 0, pauses: bool = False) -> np.ndarray:
    """Speech-like audio (harmonics with a syllable envelope); with pauses: 3-12 s utterances."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    f0 = 110 + 40 * np.sin(2 * np.pi * 0.3 * t)
    voice = sum(np.sin(2 * np.pi * h * np.cumsum(f0) / SAMPLE_RATE) / h for h in range(1, 5))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    audio = 0.1 * voice * envelope + 0.001 * rng.standard_normal(n)
    if pauses:
        pos = 0
        while pos < n:
            pos += int(rng.uniform(3, 12) * SAMPLE_RATE)
            gap = int(rng.uniform(0.5, 1.5) * SAMPLE_RATE)
            audio[pos: pos + gap] = 0.0005 * rng.standard_normal(len(audio[pos: pos + gap]))
            pos += gap
    return audio.astype(np.float32)


def _fake_whisper_tokenizer() -> Tokenizer:
    from tokenizers import Tokenizer as HF
    from tokenizers import models

    specials = {"<|endoftext|>": 50257, "<|startoftranscript|>": 50258, "<|en|>": 50259,
                "<|transcribe|>": 50359, "<|notimestamps|>": 50363, "<unk>": 0}
    return Tokenizer(HF(models.WordLevel(specials, unk_token="<unk>")), "whisper")


def random_models(encoder: str, decoder: str, device: torch.device,
                  dtype: torch.dtype) -> tuple[WhisfusionASR, WhisperASR]:
    """Random-weight whisfusion (encoder + diffusion decoder) and AR Whisper of the encoder's size."""
    enc = EncoderConfig.from_name(encoder)
    dec = DecoderConfig.from_name(decoder, n_audio_state=enc.n_audio_state)
    tok = train_bpe_tokenizer(["the quick brown fox jumps over the lazy dog"] * 4, 300)
    return _random_pair(WhisfusionConfig(enc, dec, eos_id=tok.eos_id), tok, device, dtype,
                        f"random {encoder}+{decoder}", f"random whisper ({encoder})")


def _random_pair(cfg: WhisfusionConfig, tok: Tokenizer, device: torch.device, dtype: torch.dtype, name: str,
                 ar_name: str = "") -> tuple[WhisfusionASR, WhisperASR]:
    """A seeded random-weight whisfusion model of `cfg` and its `ar_baseline`."""
    torch.manual_seed(0)
    net = Whisfusion(cfg.encoder, cfg.decoder).to(device=device, dtype=dtype).eval()
    pdd_asr = WhisfusionASR(net, cfg, tok, name)
    return pdd_asr, ar_baseline(pdd_asr, ar_name)


def ar_baseline(pdd_asr: WhisfusionASR, name: str = "") -> WhisperASR:
    """An AR Whisper with `pdd_asr`'s encoder (same weights) and a random text decoder of the
    encoder's size (whisper-base's shape for a base encoder); force its length (`forced_tokens`)."""
    enc = pdd_asr.cfg.encoder
    text = WhisperTextConfig(51865, 448, enc.n_audio_state, enc.n_audio_head, enc.n_audio_layer, enc.n_audio_mlp)
    torch.manual_seed(0)
    ar_net = WhisperModel(enc, text).to(device=pdd_asr.device, dtype=pdd_asr.dtype).eval()
    ar_net.encoder.load_state_dict(pdd_asr.net.encoder.state_dict())  # the same encoder for both engines
    return WhisperASR(ar_net, _fake_whisper_tokenizer(), name or f"{pdd_asr.name} encoder + random AR decoder")


def model_and_baseline(model_dir: str | Path, device: torch.device,
                       dtype: torch.dtype) -> tuple[WhisfusionASR, WhisperASR]:
    """A real whisfusion model and its `ar_baseline` (a random AR decoder on the same encoder)."""
    from .asr import load_model
    from .errors import CheckpointError

    pdd_asr = load_model(model_dir, device, dtype)
    if not isinstance(pdd_asr, WhisfusionASR):
        raise CheckpointError(f"{model_dir}: not a whisfusion model")
    return pdd_asr, ar_baseline(pdd_asr)


def shaped_like(model_dir: str | Path, device: torch.device,
                dtype: torch.dtype) -> tuple[WhisfusionASR, WhisperASR]:
    """Random weights in the shape of the model in `model_dir` (its config.json, presets and
    tokenizer.json; no weights read), and its `ar_baseline`. Speed does not depend on the values."""
    from .checkpoint import read_config

    path = Path(model_dir)
    cfg = WhisfusionConfig.from_dict(read_config(path))
    # how many passes verification makes depends on the trained weights (random ones disagree at
    # every token): time it with the real model (--model), here the presets' PDD and selection only
    cfg = replace(cfg, presets={n: {k: v for k, v in p.items() if k != "verify"} for n, p in cfg.presets.items()})
    tok = Tokenizer.from_file(path / "tokenizer.json", cfg.tokenizer_kind)
    pdd_asr, ar_asr = _random_pair(cfg, tok, device, dtype, f"random weights shaped like {path.name}")
    torch.manual_seed(0)
    rescorer = Rescorer.beside(cfg, pdd_asr.net.decoder)  # a random one, the same cost
    if rescorer is not None:
        pdd_asr.rescorer = rescorer.to(device=device, dtype=dtype).eval()
    return pdd_asr, ar_asr


def median_ms(fn: Callable[[], Any], asr: ASRModel, repeats: int, warmup: int) -> dict[str, float]:
    """Median total/encoder/decoder/overhead ms of fn() from the model's stopwatch."""
    for _ in range(warmup):
        fn()
    rows: list[dict[str, float]] = []
    for _ in range(repeats):
        asr.stopwatch.totals.clear()
        asr.stopwatch.start()
        t0 = time.perf_counter()
        fn()
        asr.stopwatch.sync()
        total = (time.perf_counter() - t0) * 1e3
        tot = asr.stopwatch.totals
        enc, dec = 1e3 * (tot.get("mel", 0) + tot.get("encode", 0)), 1e3 * tot.get("decode", 0)
        rows.append({"total_ms": total, "encoder_ms": enc, "decoder_ms": dec, "overhead_ms": total - enc - dec})
    return {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}


def _engines(pdd_asr: WhisfusionASR | None, ar_asr: WhisperASR | None,
             presets: tuple[str, ...]) -> list[tuple[str, ASRModel, Any]]:
    out: list[tuple[str, ASRModel, Any]] = []
    if pdd_asr is not None:
        out += [(f"pdd-{p}", pdd_asr, pdd_asr.options(p)) for p in presets]
    if ar_asr is not None:
        out.append(("ar-greedy", ar_asr, None))
    return out


def latency(pdd_asr: WhisfusionASR | None, ar_asr: WhisperASR | None, opts: BenchOptions,
            ar_forced: bool, pdd_random: bool) -> list[dict[str, Any]]:
    """Per-utterance latency (batch of one) for each engine and duration bucket."""
    rows = []
    for seconds in opts.durations:
        clip = synthetic_speech(seconds, seed=int(seconds))
        for name, asr, dopts in _engines(pdd_asr, ar_asr, opts.presets):
            if isinstance(asr, WhisperASR) and ar_forced:
                asr.forced_tokens = max(1, round(TOKENS_PER_SECOND_AR * seconds))
            result: list[Any] = []
            stats = median_ms(lambda: result.append(asr.decode_windows([clip], dopts)[0]), asr,
                               opts.repeats, opts.warmup)
            tokens = _decoder_tokens(result[-1], seconds, pdd_random and not isinstance(asr, WhisperASR))
            rows.append({"engine": name, "duration_s": seconds, **stats, "decoder_tokens": tokens,
                         "decoder_tokens_per_s": round(tokens / max(stats["decoder_ms"], 1e-6) * 1e3, 1)})
    return rows


def _decoder_tokens(result: Any, seconds: float, random_weights: bool) -> int:
    """Transcript tokens the decoder emitted (a forced AR baseline emits exactly its forced count);
    for a random-weight PDD model the realistic count the AR baseline is forced to, so both
    engines' tokens/s count the same tokens."""
    return max(1, round(TOKENS_PER_SECOND_AR * seconds)) if random_weights else int(result.n_tokens)


def length_sweep(pdd_asr: WhisfusionASR | None, ar_asr: WhisperASR | None,
                 opts: BenchOptions) -> list[dict[str, Any]]:
    """Decoder latency versus transcript length (the paper's Figure 1): flat for PDD, linear for AR."""
    from dataclasses import replace

    clip, rows = synthetic_speech(25.0, seed=25), []
    if pdd_asr is not None:
        dopts = pdd_asr.options("accurate")
        for length in opts.canvas_sweep:
            o = replace(dopts, canvas_len=length)
            stats = median_ms(lambda: pdd_asr.decode_windows([clip], o), pdd_asr, opts.repeats, opts.warmup)
            rows.append({"engine": "pdd-accurate", "tokens": length, "decoder_ms": stats["decoder_ms"]})
    if ar_asr is not None:
        for n in opts.ar_token_sweep:
            ar_asr.forced_tokens = n
            stats = median_ms(lambda: ar_asr.decode_windows([clip]), ar_asr, max(2, opts.repeats // 3), 1)
            rows.append({"engine": "ar-greedy", "tokens": n, "decoder_ms": stats["decoder_ms"]})
        ar_asr.forced_tokens = None
    return rows


def long_form(pdd_asr: WhisfusionASR | None, ar_asr: WhisperASR | None, opts: BenchOptions,
              ar_forced: bool) -> list[dict[str, Any]]:
    """End to end on one long WAV file: read -> windows -> batched encoder -> decoder -> writers.

    Run twice: `rtfx` is the warm run (a server's steady state); `cold_wall_s` includes capturing a
    CUDA graph for every new (windows, canvas) shape, which a one-off CLI run pays."""
    from .transcribe import Job, TranscribeOptions, transcribe_files

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "long.wav"
        write_wav(src, synthetic_speech(opts.long_form_min * 60, seed=1, pauses=True))
        for name, asr, dopts in _engines(pdd_asr, ar_asr, opts.presets):
            if isinstance(asr, WhisperASR):
                asr.forced_tokens = round(TOKENS_PER_SECOND_AR * 25) if ar_forced else None
            topts = TranscribeOptions(("txt", "srt", "json"), True, opts.batch_size, True, dopts)
            walls = []
            for _ in range(2):  # cold (CUDA graphs captured for each new shape), then warm
                t0 = time.perf_counter()
                events = list(transcribe_files(asr, [Job(src, Path(tmp) / name)], topts))
                walls.append(time.perf_counter() - t0)
            n_windows = sum(1 for e in events if type(e).__name__ == "WindowsDone")
            rows.append({"engine": name, "audio_s": opts.long_form_min * 60, "wall_s": round(walls[1], 3),
                         "rtfx": round(opts.long_form_min * 60 / walls[1], 1), "windows": n_windows,
                         "cold_wall_s": round(walls[0], 3)})
    return rows


def run_bench(pdd_asr: WhisfusionASR | None, ar_asr: WhisperASR | None, opts: BenchOptions,
              weights: str, progress: Callable[[str], None] | None = None, ar_forced: bool | None = None,
              pdd_random: bool | None = None) -> BenchRecord:
    """Runs every section.

    Args:
        weights: the record's label for the weights used ("random", paths, ...).
        ar_forced: force the AR baseline to TOKENS_PER_SECOND_AR tokens per second of audio (a
            random-weight AR decoder); default: weights == "random".
        pdd_random: the PDD model has random weights, so its tokens/s counts the AR baseline's
            forced tokens instead of its own output; default: weights == "random".
    """
    say = progress or (lambda _: None)
    ar_forced = weights == "random" if ar_forced is None else ar_forced
    pdd_random = weights == "random" if pdd_random is None else pdd_random
    asr = pdd_asr or ar_asr
    assert asr is not None, "nothing to benchmark"
    device = asr.device
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rec = BenchRecord(meta=_meta(asr, weights, opts) | {"ar_forced": ar_forced, "pdd_random": pdd_random})
    say("latency per duration bucket")
    rec.latency = latency(pdd_asr, ar_asr, opts, ar_forced, pdd_random)
    say("latency versus transcript length")
    rec.length_sweep = length_sweep(pdd_asr, ar_asr, opts)
    if opts.long_form_min > 0:
        say(f"long-form: {opts.long_form_min:g} min end to end")
        rec.long_form = long_form(pdd_asr, ar_asr, opts, ar_forced)
    if device.type == "cuda":
        rec.meta["peak_gpu_memory_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return rec


def _meta(asr: ASRModel, weights: str, opts: BenchOptions) -> dict[str, Any]:
    device = asr.device
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    return {
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "device": str(device), "dtype": str(asr.dtype).removeprefix("torch."), "torch": torch.__version__,
        "commit": commit or None, "weights": weights, "options": asdict(opts),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def record_to_dict(rec: BenchRecord) -> dict[str, Any]:
    return asdict(rec)


def summarize(rec: BenchRecord) -> dict[str, Any]:
    """The issue's targets, computed from a record (None where the section was not run)."""
    lat = {(r["engine"], r["duration_s"]): r for r in rec.latency}
    longest = max((d for _, d in lat), default=None)
    acc, ar = lat.get(("pdd-accurate", longest)), lat.get(("ar-greedy", longest))
    spread = None
    acc_rows = [r["total_ms"] for r in rec.latency if r["engine"] == "pdd-accurate"]
    if acc_rows:
        spread = round((max(acc_rows) - min(acc_rows)) / statistics.median(acc_rows), 3)
    lf = {r["engine"]: r["rtfx"] for r in rec.long_form}
    return {
        "accurate_longest_ms": acc and acc["total_ms"],
        "speedup_vs_ar": acc and ar and round(ar["total_ms"] / acc["total_ms"], 2),
        "decoder_tokens_per_s_accurate": acc and acc["decoder_tokens_per_s"],
        "latency_spread_accurate": spread,
        "long_form_rtfx": lf or None,
    }

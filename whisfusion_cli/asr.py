"""The two engines behind one interface, and `load_model`.

`WhisfusionASR` runs the frozen encoder once per window, computes the adapters' keys/values
once, and decodes all windows x k candidates with PDD in one batch. `WhisperASR` is the
autoregressive Whisper baseline (greedy, KV cache) on the same front end, so every speed and
accuracy figure compares like with like.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .audio import N_AUDIO_CTX, SAMPLE_RATE, audio_frames, log_mel_windows
from .checkpoint import (
    load_rescorer,
    load_whisfusion,
    load_whisper,
    read_config,
    resolve_device,
    resolve_dtype,
    resolve_model_dir,
)
from .config import DecodingOptions, WhisfusionConfig
from .decoding import DecoderFn, canvas_length, canvas_tokens, eager_decoder, head_sizes, pdd
from .errors import CheckpointError, ConfigError
from .fastpath import GraphedDecoder, GraphedEncoder
from .model import Whisfusion
from .rescoring import Rescorer
from .segment import SegmentOptions, split_windows
from .selection import choose
from .timing import silence_finder, word_timestamps
from .tokenizer import Tokenizer
from .transcript import Segment, Transcript, Word, window_segments
from .whisper import WhisperModel, WhisperTextDecoder

FRAME_BUCKET = 50  # encoder states kept per batch are rounded up to 1 s: few distinct shapes
CPU_DECODE_BUDGET = 1.5e9  # bytes of decoding working memory on the CPU, at most...
CPU_DECODE_FRACTION = 0.25  # ...and at most this fraction of the RAM available now
CUDA_DECODE_FRACTION = 0.5  # of the GPU memory free now (the CUDA path still halves a batch on OOM)
MAX_AUTO_BATCH = 64  # windows per batch when sized automatically
AR_BATCH = 16  # the AR baseline's batch: its logits are one position per row, never the bulk
LOGITS_COPIES = 2  # logits and one same-sized temporary (the exp of the softmax in choose_tokens)


@dataclass(frozen=True)
class WindowResult:
    """The decoded text of one ≤ 30 s window."""

    text: str
    confidence: float  # PDD: mean token probability; AR: exp(mean log-probability)
    candidates: tuple[str, ...] = ()  # PDD: all k candidates (for oracle WER)
    n_tokens: int = 0
    ar_passes: int = 0  # PDD with verify: the AR decoder's passes over this window's batch
    words: tuple[Word, ...] = ()  # word_timestamps=True: the text's words, seconds from the window's start


class Stopwatch:
    """Accumulates wall seconds per stage, synchronising the GPU so the figures are honest."""

    def __init__(self, device: torch.device):
        self.device = device
        self.totals: dict[str, float] = {}
        self._last = 0.0

    def start(self) -> None:
        self.sync()
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        self.sync()
        now = time.perf_counter()
        self.totals[stage] = self.totals.get(stage, 0.0) + now - self._last
        self._last = now

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def windows_per_batch(k: int, canvas_len: int, n_vocab: int, budget_bytes: float,
                      limit: int = MAX_AUTO_BATCH) -> int:
    """How many windows fit one PDD batch in `budget_bytes` of decoding working memory, in [1, limit].

    The logits dominate: a step after the first computes k rows x up to L positions x V fp32 logits
    per window (plus a same-sized temporary); the encoder states and K/V caches are small beside them.
    """
    per_window = LOGITS_COPIES * k * canvas_len * n_vocab * 4  # bytes
    return max(1, min(limit, int(budget_bytes // per_window)))


def decode_memory_budget(device: torch.device) -> float:
    """Bytes a decoding batch may use: a share of the GPU's free memory, or of the RAM available
    (capped at CPU_DECODE_BUDGET) on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return CUDA_DECODE_FRACTION * free
    return min(CPU_DECODE_BUDGET, CPU_DECODE_FRACTION * available_ram())


def available_ram() -> float:
    """Bytes of RAM available now (Linux MemAvailable; elsewhere the free pages, or unbounded)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return float("inf")


class ASRModel:
    """What both engines share: the front end and long-audio transcription.

    `stopwatch.totals` accumulates seconds spent in "mel", "encode" and "decode" across calls.
    """

    engine = ""
    name = ""
    tokenizer: Tokenizer
    n_mels = 80
    device = torch.device("cpu")
    dtype = torch.float32
    stopwatch = Stopwatch(torch.device("cpu"))
    encoder_graphs: GraphedEncoder | None = None  # CUDA: the encoder replayed as a graph per batch size

    def mel(self, windows: Sequence[np.ndarray]) -> Tensor:
        """(B, n_mels, 3000) log-mel of B windows (each ≤ 30 s, zero-padded)."""
        return log_mel_windows(list(windows), self.n_mels, self.device).to(self.dtype)

    def encode(self, windows: Sequence[np.ndarray]) -> Tensor:
        """(B, 1500, C) encoder states; starts the stopwatch and times "mel" and "encode"."""
        self.stopwatch.start()
        mel = self.mel(windows)
        self.stopwatch.lap("mel")
        xa = (self.encoder_graphs or self.net.encoder)(mel)  # type: ignore[attr-defined]
        self.stopwatch.lap("encode")
        return xa

    def decode_windows(self, windows: Sequence[np.ndarray], options: DecodingOptions | None = None,
                       word_timestamps: bool = False, vad: str = "energy") -> list[WindowResult]:
        """Each window's text (and with word_timestamps its timed words; `vad` finds the silences no
        word may cross: segment.py's "energy" rule or "silero")."""
        raise NotImplementedError

    def add_words(self, results: list[WindowResult], windows: Sequence[np.ndarray], xa: Tensor,
                  decoder: WhisperTextDecoder, prompt: list[int], ids: list[list[int]] | None = None,
                  vad: str = "energy") -> list[WindowResult]:
        """The results with their words timed by Whisper's AR `decoder` over the windows' encoder
        states xa (B, 1500, C) (timing.py); ids: the texts' ids if known, else encoded here; vad: what
        finds the silences words are kept out of. Times the "align" stage."""
        tok = self.tokenizer
        ids = ids if ids is not None else tok.encode_transcripts([r.text for r in results])
        words = word_timestamps(decoder, xa, prompt, tok.eos_id, ids, windows, tok.piece, silence_finder(vad))
        self.stopwatch.lap("align")
        return [replace(r, words=tuple(w)) for r, w in zip(results, words)]

    def graphs_wanted(self) -> bool:
        """CUDA graphs by default on CUDA; WHISFUSION_CUDA_GRAPHS=0 turns them off."""
        return self.device.type == "cuda" and os.environ.get("WHISFUSION_CUDA_GRAPHS", "1") != "0"

    def use_encoder_graphs(self, enabled: bool) -> None:
        """Replays the encoder as a CUDA graph per batch size (CUDA only)."""
        on = enabled and self.device.type == "cuda"
        self.encoder_graphs = GraphedEncoder(self.net.encoder) if on else None  # type: ignore[attr-defined]

    def options(self, preset: str | None = None, **overrides: Any) -> DecodingOptions | None:
        """The decoding options for a preset plus overrides (None for the AR baseline)."""
        return None

    def batch_size(self, options: DecodingOptions | None, max_window_s: float) -> int:
        """Windows per batch that fit this device's memory, for windows up to `max_window_s` long."""
        return AR_BATCH

    def transcribe(self, audio: np.ndarray, preset: str | None = None, batch_size: int | None = None,
                   segment_options: SegmentOptions = SegmentOptions(), word_timestamps: bool = False,
                   **overrides: Any) -> Transcript:
        """Transcribes 16 kHz mono float32 audio of any length.

        Args:
            audio: (n_samples,) float32 at 16 kHz.
            preset: PDD preset name ("fast", "balanced", "accurate"); the checkpoint's default if None.
            batch_size: windows decoded together; None: as many as fit in memory (`batch_size()`).
            segment_options: how the audio is split into windows.
            word_timestamps: time every word (Whisper's AR decoder aligns the text); each window
                then gives one segment per sentence or phrase, with its `words`.
            **overrides: DecodingOptions fields (k, steps, schedule, seed, ...).
        """
        t0 = time.perf_counter()
        options = self.options(preset, **overrides)
        windows = split_windows(audio, segment_options)
        longest = max((w.duration for w in windows), default=segment_options.max_window_s)
        batch_size = batch_size or self.batch_size(options, longest)
        segments: list[Segment] = []
        for i in range(0, len(windows), batch_size):
            batch = windows[i: i + batch_size]
            results = self.decode_windows([w.slice(audio) for w in batch], options, word_timestamps,
                                          segment_options.vad)
            for w, r in zip(batch, results):
                segments += window_segments(len(segments), w.start, w.end, r.text, r.confidence, r.words)
        return Transcript(tuple(segments), len(audio) / SAMPLE_RATE, model=self.name,
                          preset=preset if self.engine == "pdd" else None,
                          timings={"total_s": time.perf_counter() - t0})


class WhisfusionASR(ASRModel):
    """Whisper encoder + diffusion decoder, decoded with PDD."""

    engine = "pdd"

    def __init__(self, net: Whisfusion, cfg: WhisfusionConfig, tokenizer: Tokenizer, name: str = "",
                 rescorer: Rescorer | None = None):
        self.net, self.cfg, self.tokenizer, self.name, self.rescorer = net, cfg, tokenizer, name, rescorer
        param = next(net.parameters())
        self.device, self.dtype, self.n_mels = param.device, param.dtype, cfg.encoder.n_mels
        self.stopwatch = Stopwatch(self.device)
        self.graphs: GraphedDecoder | None = None
        self.use_cuda_graphs(self.graphs_wanted())

    def use_cuda_graphs(self, enabled: bool, compile: bool = False) -> None:
        """Replays captured CUDA graphs of the decoder (CUDA only; WHISFUSION_CUDA_GRAPHS=0 disables).

        compile: opt-in `torch.compile` of the decoder's forward inside the graphs (slow first
        batch per shape; falls back to the plain forward if compilation fails, see
        `self.graphs.compile_error`).
        """
        on = enabled and self.device.type == "cuda"
        self.graphs = GraphedDecoder(self.net.decoder, compile=compile) if on else None
        self.use_encoder_graphs(on)

    def options(self, preset: str | None = None, **overrides: Any) -> DecodingOptions:
        return self.cfg.decoding_options(preset, **overrides)

    def batch_size(self, options: DecodingOptions | None, max_window_s: float) -> int:
        options = options or self.options()
        max_len = self.cfg.decoder.max_seq_len
        canvas_len = min(options.canvas_len or canvas_length(max_window_s, max_len), max_len)
        return windows_per_batch(options.k, canvas_len, self.cfg.decoder.vocab_size,
                                 decode_memory_budget(self.device))

    @torch.inference_mode()
    def decode_windows(self, windows: Sequence[np.ndarray], options: DecodingOptions | None = None,
                       word_timestamps: bool = False, vad: str = "energy") -> list[WindowResult]:
        options = options or self.options()
        if not windows:
            return []
        self.check_options(options, word_timestamps)
        frames = [audio_frames(len(w)) for w in windows]
        n_frames = torch.tensor(frames, device=self.device)
        n_states = min(N_AUDIO_CTX, -(-max(frames) // FRAME_BUCKET) * FRAME_BUCKET)
        xa = self.encode(windows)  # (B, 1500, C_audio)
        max_len = self.cfg.decoder.max_seq_len
        longest = max(len(w) for w in windows) / SAMPLE_RATE
        canvas_len = min(options.canvas_len or canvas_length(longest, max_len), max_len)
        decoder = self._decoder_fn(xa[:, :n_states], n_frames, len(windows) * options.k, canvas_len,
                                   head_sizes(options.schedule, canvas_len))  # speech frames + margin, bucketed
        out = pdd(decoder, len(windows), canvas_len, self.cfg.decoder.mask_id, self.cfg.eos_id, options,
                  self.device)
        self.stopwatch.lap("decode")
        best, scores = out.best.tolist(), out.candidate_confidence.tolist()  # (B,), (B, k)
        cands, conf = out.candidates.tolist(), out.token_confidence.tolist()  # one copy each to the host
        ids, texts, probs = zip(*(self._texts(cands[i], conf[i], options) for i in range(len(windows))))
        limits = [canvas_length(len(w) / SAMPLE_RATE, max_len) for w in windows]  # the most tokens each may hold
        results = self._results(list(texts), list(ids), best, scores, xa, options, list(probs), limits)
        self.stopwatch.lap("decode")
        if word_timestamps:  # check_options made sure a rescorer ships
            results = self.add_words(results, windows, xa, self.rescorer.decoder, self.rescorer.prompt, vad=vad)
        return results

    def check_options(self, options: DecodingOptions, word_timestamps: bool = False) -> None:
        """Raises ConfigError if the options need what this model lacks (a rescorer)."""
        if self.rescorer is not None:
            return
        if options.select == "rescore" or options.verify:
            needs = "--select rescore and --verify need"
        elif word_timestamps:
            needs = "word timestamps need"
        else:
            return
        raise ConfigError(f"{self.name or 'this model'} ships no rescorer (Whisper's AR decoder), which {needs}")

    def _decoder_fn(self, xa: Tensor, n_frames: Tensor, n_rows: int, canvas_len: int,
                    sizes: tuple[int, ...]) -> DecoderFn:
        """canvas [, positions] -> logits for this batch; adapter K/V computed once, here, for all k x N
        passes. `sizes`: the head sizes P_t PDD will ask for (graphs are captured for each)."""
        if self.graphs is not None:
            return self.graphs.prepare(xa, n_frames, n_rows, canvas_len, sizes)
        return eager_decoder(self.net.decoder, self.net.decoder.cross_kv(xa, n_frames), xa.shape[0])

    def _texts(self, candidates: list[list[int]], token_conf: list[list[float]], options: DecodingOptions
               ) -> tuple[tuple[list[int], ...], tuple[str, ...], tuple[list[float], ...]]:
        """A window's k candidates (k, L) and their token probabilities (k, L) -> the k transcripts' ids,
        texts and ids' probabilities.

        The k candidates mostly converge to a few distinct ones: each distinct (canvas, which tokens
        are below the dedupe threshold) is turned into text once."""
        eos, limit = self.cfg.eos_id, self.tokenizer.vocab_size
        keys = [(*c, *(q < options.dedupe for q in p)) for c, p in zip(candidates, token_conf)]
        done: dict[tuple, tuple[list[int], str, list[float]]] = {}
        for key, c, p in zip(keys, candidates, token_conf):
            if key not in done:
                x, q = canvas_tokens(c, eos, limit, p, options.dedupe)
                done[key] = (x, self.tokenizer.decode(x), q)
        ids, texts, probs = zip(*(done[key] for key in keys))
        return ids, texts, probs

    def _results(self, texts: list[tuple[str, ...]], ids: list[tuple[list[int], ...]], best: list[int],
                 scores: list[list[float]], xa: Tensor, options: DecodingOptions,
                 probs: list[tuple[list[float], ...]], limits: list[int] | None = None) -> list[WindowResult]:
        """The pipeline's last two stages for PDD's drafts: select (`selection.choose`: each window's k
        texts -> one, by options.select) then verify (`Rescorer.verify_texts`, if options.verify: the AR
        decoder's speculative check, trusting the draft's confident tokens by options.trust, given
        their `probs`). The first stage, drafting, is `decoding.pdd` in `decode_windows`.

        best: the most confident candidate per window; scores: all k mean confidences; xa: (B, 1500, C).
        n_tokens: the chosen candidate's (the vote's center's) tokens, or the verified text's; limits: the most
        tokens each window's verified text may have (a looping AR decoder stops there, and keeps the draft)."""
        ar_kv = self.rescorer.cross_kv(xa) if options.select == "rescore" or options.verify else None
        ar = self.rescorer.rescored(ar_kv, self.tokenizer, texts) if options.select == "rescore" else None
        best, chosen = choose(texts, scores, best, options.select, ar)  # select
        n_tokens, passes = [len(x[b]) for x, b in zip(ids, best)], 0
        if options.verify:  # verify
            chosen, n_tokens, passes = self.rescorer.verify_texts(
                ar_kv, self.tokenizer, chosen, [x[b] for x, b in zip(ids, best)], [q[b] for q, b in zip(probs, best)],
                options, limits)
        return [WindowResult(text, s[b], t, n, passes)
                for text, t, s, b, n in zip(chosen, texts, scores, best, n_tokens)]


class WhisperASR(ASRModel):
    """The autoregressive Whisper baseline: greedy decoding with a KV cache."""

    engine = "ar"

    def __init__(self, net: WhisperModel, tokenizer: Tokenizer, name: str = "", language: str = "en"):
        self.net, self.tokenizer, self.name = net, tokenizer, name
        param = next(net.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.n_mels = net.encoder.config.n_mels
        self.stopwatch = Stopwatch(self.device)
        self.prompt = tokenizer.whisper_prompt(net.decoder.config.is_multilingual, language)
        self.eot = tokenizer.eos_id
        self.forced_tokens: int | None = None  # benchmarks: generate exactly this many tokens
        self.use_encoder_graphs(self.graphs_wanted())

    @torch.inference_mode()
    def decode_windows(self, windows: Sequence[np.ndarray], options: DecodingOptions | None = None,
                       word_timestamps: bool = False, vad: str = "energy") -> list[WindowResult]:
        if not windows:
            return []
        xa = self.encode(windows)
        n = self.forced_tokens
        ids, mean_logprob = self.net.greedy(xa, self.prompt, self.eot, self.eot, *((n, n) if n else ()))
        self.stopwatch.lap("decode")
        results = [WindowResult(self.tokenizer.decode(t), float(lp.exp()), (), len(t))
                   for t, lp in zip(ids, mean_logprob)]
        if word_timestamps:
            results = self.add_words(results, windows, xa, self.net.decoder, self.prompt, ids, vad)
        return results


def load_model(path_or_repo: str | Path, device: str | torch.device = "auto",
               dtype: str | torch.dtype = "auto") -> WhisfusionASR | WhisperASR:
    """Loads a whisfusion checkpoint, or a plain Whisper checkpoint as the AR baseline.

    Args:
        path_or_repo: a local directory or a Hugging Face repo id.
        device: "auto" (CUDA when available), "cuda", "cpu" or a torch.device.
        dtype: "auto" (bf16 on GPU, fp32 on CPU), "bf16", "fp16", "fp32" or a torch.dtype.
    """
    model_dir = resolve_model_dir(path_or_repo)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    kind = read_config(model_dir).get("model_type")
    if kind == "whisfusion":
        net, cfg, tok = load_whisfusion(model_dir, dev, dt)
        return WhisfusionASR(net, cfg, tok, str(path_or_repo), load_rescorer(model_dir, net, cfg))
    if kind == "whisper":
        net, tok = load_whisper(model_dir, dev, dt)
        return WhisperASR(net, tok, str(path_or_repo))
    raise CheckpointError(f"{model_dir}: unknown model_type {kind!r} (expected 'whisfusion' or 'whisper')")


"""Device run: the bundled model's real speed on real speech (the random-weight bench cannot measure
verification, whose cost depends on how often the AR decoder agrees with the draft).

    python benchmarks/bench_real.py --model DIR --clips DIR --out OUT.json [--long-form MIN] [--repeats N]
DIR/*.npy: 16 kHz clips (e.g. the 4 LibriSpeech clips that `recipes/synthetic/pack_carries.sh` writes,
with transcripts.json). Besides each clip, the clips joined with 0.5 s pauses make ~16 s and ~23 s
utterances of real speech. Per preset and for the AR baseline (Whisper base's own decoder on the same
encoder: the model's rescorer), median end-to-end ms of one utterance (CUDA-synchronised, after warm-up),
the AR passes verification took, WER (`accurate-eager`: accurate with its rescoring and verification
passes eager instead of CUDA graphs, verify_graphs.py; `accurate@0.3`: verified at r = 0.3; `accurate-trust0`:
with trust 0); then a long file (the clips tiled) transcribed end to end as RTFx.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from whisfusion_cli import rescoring
from whisfusion_cli.asr import WhisperASR, load_model
from whisfusion_cli.audio import SAMPLE_RATE
from whisfusion_cli.bench import median_ms
from whisfusion_cli.wer import normalize, word_errors
from whisfusion_cli.whisper import WhisperModel


def whisper_base_of(asr) -> WhisperASR:
    """Whisper base itself: the model's frozen encoder + its rescorer (Whisper's decoder, shared embedding)."""
    with torch.device("meta"):  # the shell only: both parts are the model's own modules
        net = WhisperModel(asr.cfg.encoder, asr.cfg.rescorer)
    net.encoder, net.decoder = asr.net.encoder, asr.rescorer.decoder
    return WhisperASR(net, asr.tokenizer, "whisper-base (the model's encoder + rescorer)")


def utterances(clips: dict[str, np.ndarray], refs: dict[str, str]) -> list[tuple[str, np.ndarray, str]]:
    """The clips by length, then two joined ones (~16 s, ~23 s) of the same real speech."""
    pause = np.zeros(SAMPLE_RATE // 2, np.float32)
    keys = sorted(clips, key=lambda k: len(clips[k]))
    out = [(k, clips[k], refs[k]) for k in keys]
    for n in (2, len(keys)):
        pick = keys[-n:]  # the longest n
        audio = np.concatenate([x for k in pick for x in (clips[k], pause)])
        out.append(("+".join(pick), audio, " ".join(refs[k] for k in pick)))
    return out


def preset_of(name: str) -> tuple[str, dict, bool]:
    """An engine name's preset, overrides and whether the AR passes run as CUDA graphs: `-eager` (they do not),
    `@R` (verify at r = R), `-trustT` (trust T)."""
    rest, _, trust = name.removesuffix("-eager").partition("-trust")
    preset, _, ratio = rest.partition("@")
    overrides = ({"verify": float(ratio)} if ratio else {}) | ({"trust": float(trust)} if trust else {})
    return preset, overrides, not name.endswith("-eager")


def time_one(asr, audio: np.ndarray, options, repeats: int) -> tuple[float, object]:
    """Median end-to-end ms of one utterance after 2 warm-ups (`bench.median_ms`), and its result."""
    results = []
    ms = median_ms(lambda: results.append(asr.decode_windows([audio], options)[0]), asr, repeats, 2)["total_ms"]
    return ms, results[-1]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--clips", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--presets", default="fast,balanced,accurate,accurate-eager")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--long-form", type=float, default=10.0, help="minutes of the clips tiled")
    args = ap.parse_args(argv)
    asr = load_model(args.model, "cuda" if torch.cuda.is_available() else "cpu")
    ar = whisper_base_of(asr)
    refs = json.loads((args.clips / "transcripts.json").read_text())
    clips = {k: np.load(args.clips / f"{k}.npy").astype(np.float32) for k in refs}
    engines = [(p, asr, *preset_of(p)) for p in args.presets.split(",")] + [("whisper-base", ar, None, {}, True)]
    rows = []
    for name, engine, preset, overrides, graphs in engines:
        rescoring.USE_GRAPHS = graphs
        options = None if preset is None else engine.options(preset, **overrides)
        for key, audio, ref in utterances(clips, refs):
            ms, res = time_one(engine, audio, options, args.repeats)
            rows.append({"engine": name, "utterance": key, "audio_s": round(len(audio) / SAMPLE_RATE, 2),
                         "ms": round(ms, 2), "ar_passes": res.ar_passes, "n_tokens": res.n_tokens,
                         "word_errors": word_errors(normalize(ref), normalize(res.text)), "text": res.text})
            print(json.dumps(rows[-1]), flush=True)
    pieces, n = [], 0
    while n < args.long_form * 60 * SAMPLE_RATE:  # the clips tiled, 0.5 s apart
        for k in refs:
            pieces += [clips[k], np.zeros(SAMPLE_RATE // 2, np.float32)]
            n += len(clips[k]) + SAMPLE_RATE // 2
    tiled = np.concatenate(pieces)
    long = []
    for name, engine, preset, overrides, graphs in engines:
        rescoring.USE_GRAPHS = graphs
        for i in range(2):  # the first warms up
            engine.stopwatch.sync()
            t0 = time.perf_counter()
            engine.transcribe(tiled, preset, **overrides)
            engine.stopwatch.sync()
            wall = time.perf_counter() - t0
        long.append({"engine": name, "audio_s": round(len(tiled) / SAMPLE_RATE, 1), "wall_s": round(wall, 3),
                     "rtfx": round(len(tiled) / SAMPLE_RATE / wall, 1)})
        print(json.dumps(long[-1]), flush=True)
    meta = {"gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
            "model": str(args.model), "dtype": str(asr.dtype), "repeats": args.repeats}
    args.out.write_text(json.dumps({"meta": meta, "utterances": rows, "long_form": long}, indent=1) + "\n")


if __name__ == "__main__":
    main()

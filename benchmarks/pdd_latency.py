"""PDD latency of the paper's decoder on a GPU: smdm-170m + whisper-base encoder, random weights.

Prints and records, per preset, the median ms of one PDD call (adapter K/V + N decoder passes,
k candidates x L=256 canvas) and of encoder + PDD for one 30 s window, plus one raw decoder
forward at k=15, L=256. Weights are random (speed does not depend on their values).

    python benchmarks/pdd_latency.py [--device cuda] [--dtype bf16] [--out benchmarks/results/...json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from whisfusion_cli.checkpoint import resolve_dtype
from whisfusion_cli.config import PRESETS, DecoderConfig, EncoderConfig
from whisfusion_cli.decoding import eager_decoder, pdd
from whisfusion_cli.model import Whisfusion


def timed(fn, device: torch.device, repeats: int, warmup: int = 3) -> float:
    """Median wall ms of fn() with the GPU synchronised around every call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--encoder", default="whisper-base")
    ap.add_argument("--decoder", default="smdm-170m")
    ap.add_argument("--canvas", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    enc = EncoderConfig.from_name(args.encoder)
    dec = DecoderConfig.from_name(args.decoder, n_audio_state=enc.n_audio_state, max_seq_len=args.canvas)
    torch.manual_seed(0)
    net = Whisfusion(enc, dec).to(device=device, dtype=dtype).eval()
    mel = torch.randn(1, enc.n_mels, 3000, device=device, dtype=dtype)
    results: dict[str, object] = {}
    with torch.inference_mode():
        xa = net.encoder(mel)
        kv = net.decoder.cross_kv(xa)
        results["encoder_ms"] = timed(lambda: net.encoder(mel), device, args.repeats)
        canvas = torch.full((15, args.canvas), dec.mask_id, device=device)
        results["decoder_forward_k15_ms"] = timed(lambda: net.decoder(canvas, kv), device, args.repeats)
        def decode(states, opts) -> None:  # adapter K/V once, then PDD with the head at re-masked positions
            pdd(eager_decoder(net.decoder, net.decoder.cross_kv(states), 1), 1, args.canvas, dec.mask_id, 2,
                opts, device)

        for name, opts in PRESETS.items():
            def call(opts=opts) -> None:
                decode(xa, opts)
            def end_to_end(opts=opts) -> None:
                decode(net.encoder(mel), opts)
            results[f"pdd_{name}_ms"] = timed(call, device, args.repeats)
            results[f"encoder_plus_pdd_{name}_ms"] = timed(end_to_end, device, args.repeats)
            results[f"pdd_{name}_tokens_per_s"] = opts.k * args.canvas / (results[f"pdd_{name}_ms"] / 1e3)
    meta = {
        "benchmark": "pdd_latency", "weights": "random", "encoder": args.encoder, "decoder": args.decoder,
        "canvas_len": args.canvas, "dtype": str(dtype), "device": torch.cuda.get_device_name(device)
        if device.type == "cuda" else platform.processor() or "cpu", "torch": torch.__version__,
        "commit": os.environ.get("WHISFUSION_COMMIT") or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or None,
    }
    record = {**meta, "results": {k: round(v, 3) for k, v in results.items()}}
    print(json.dumps(record, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()

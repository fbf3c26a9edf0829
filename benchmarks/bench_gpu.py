"""Device run: `whisfusion bench` sections per decoder variant (eager, CUDA graphs, compiled graphs).

    python benchmarks/bench_gpu.py --out DIR [--model DIR | --shape-of DIR] [--long-form MIN] [--variants eager,graphs,compile]
        [--encoder whisper-base] [--decoder smdm-170m]
Without --model: random weights of the given shapes. With --model: that whisfusion model (bf16 on
cuda) against an AR Whisper whose encoder is the model's and whose text decoder is random, of the
encoder's size, forced to bench.TOKENS_PER_SECOND_AR tokens per second of audio. With --shape-of:
random weights of that model's shapes and presets (only config.json and tokenizer.json travel).
Writes DIR/bench_<variant>.json per variant (the same schema as `whisfusion bench --json`).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from whisfusion_cli.asr import WhisfusionASR
from whisfusion_cli.bench import (
    BenchOptions,
    model_and_baseline,
    random_models,
    record_to_dict,
    run_bench,
    shaped_like,
    summarize,
)


def set_variant(pdd_asr: WhisfusionASR, variant: str) -> str | None:
    """Configures the PDD decoder for `variant`; returns why compilation was abandoned, if it was."""
    if variant != "compile":
        pdd_asr.use_cuda_graphs(variant == "graphs")
        return None
    try:
        pdd_asr.use_cuda_graphs(True, compile=True)
    except Exception as e:  # noqa: BLE001 - torch.compile unavailable: the graphs variant
        pdd_asr.use_cuda_graphs(True)
        return f"{type(e).__name__}: {e}"
    return None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", type=Path, help="a whisfusion model directory (default: random weights)")
    ap.add_argument("--shape-of", type=Path, help="random weights shaped like this model (config.json only)")
    ap.add_argument("--encoder", default="whisper-base")
    ap.add_argument("--decoder", default="smdm-170m")
    ap.add_argument("--long-form", type=float, default=0.0)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--presets", default=",".join(BenchOptions.presets))
    ap.add_argument("--durations", default=",".join(map(str, BenchOptions.durations)))
    ap.add_argument("--variants", default="eager,graphs", help="comma-separated: eager, graphs, compile")
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.model:
        pdd_asr, ar_asr = model_and_baseline(args.model, device, dtype)
        weights = f"model {args.model} (real) + random AR decoder"
    elif args.shape_of:
        pdd_asr, ar_asr = shaped_like(args.shape_of, device, dtype)
        weights = f"random, shaped like {args.shape_of}"
    else:
        pdd_asr, ar_asr = random_models(args.encoder, args.decoder, device, dtype)
        weights = "random"
    opts = BenchOptions(presets=tuple(args.presets.split(",")), durations=tuple(map(float, args.durations.split(","))),
                        long_form_min=args.long_form, repeats=args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    for variant in args.variants.split(","):
        failed = set_variant(pdd_asr, variant)
        rec = run_bench(pdd_asr, ar_asr, opts, weights, lambda m, v=variant: print(v, m, flush=True),
                        ar_forced=True, pdd_random=not args.model)
        failed = failed or (pdd_asr.graphs.compile_error if pdd_asr.graphs else None)
        if failed:
            print(f"{variant}: torch.compile failed, ran the graphs variant ({failed[:200]})", flush=True)
        rec.meta.update(variant=variant, compile_error=failed,
                        commit=os.environ.get("WHISFUSION_COMMIT") or rec.meta["commit"])
        d = record_to_dict(rec)
        d["summary"] = summarize(rec)
        (args.out / f"bench_{variant}.json").write_text(json.dumps(d, indent=2) + "\n")
        print(variant, json.dumps(d["summary"]), flush=True)
        for row in rec.latency + rec.length_sweep:
            print(variant, row, flush=True)


if __name__ == "__main__":
    main()

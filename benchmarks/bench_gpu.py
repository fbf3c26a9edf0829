"""Device run: `whisfusion bench` sections with CUDA graphs off and on, random weights.

    python benchmarks/bench_gpu.py --out DIR [--long-form MIN] [--encoder whisper-base] [--decoder smdm-170m]
Writes DIR/bench_<variant>.json per variant (the same schema as `whisfusion bench --json`).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from whisfusion_cli.bench import BenchOptions, random_models, record_to_dict, run_bench, summarize


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--encoder", default="whisper-base")
    ap.add_argument("--decoder", default="smdm-170m")
    ap.add_argument("--long-form", type=float, default=0.0)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--variants", default="eager,graphs")
    args = ap.parse_args()
    device, dtype = torch.device("cuda"), torch.bfloat16
    pdd_asr, ar_asr = random_models(args.encoder, args.decoder, device, dtype)
    opts = BenchOptions(long_form_min=args.long_form, repeats=args.repeats)
    args.out.mkdir(parents=True, exist_ok=True)
    for variant in args.variants.split(","):
        pdd_asr.use_cuda_graphs(variant == "graphs")
        rec = run_bench(pdd_asr, ar_asr, opts, "random", lambda m: print(variant, m, flush=True))
        rec.meta.update(variant=variant, commit=os.environ.get("WHISFUSION_COMMIT"))
        d = record_to_dict(rec)
        d["summary"] = summarize(rec)
        (args.out / f"bench_{variant}.json").write_text(json.dumps(d, indent=2) + "\n")
        print(variant, json.dumps(d["summary"]), flush=True)
        for row in rec.latency:
            print(variant, row, flush=True)
        for row in rec.length_sweep:
            print(variant, row, flush=True)


if __name__ == "__main__":
    main()

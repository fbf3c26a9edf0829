"""Where one PDD call's GPU time goes: torch.profiler's top CUDA kernels (random weights).

    python benchmarks/profile_pdd.py [--preset accurate] [--seconds 25] [--graphs 0|1]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from whisfusion_cli.bench import random_models, synthetic_speech


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="accurate")
    ap.add_argument("--seconds", type=float, default=25.0)
    ap.add_argument("--graphs", type=int, default=0)
    ap.add_argument("--rows", type=int, default=18)
    args = ap.parse_args()
    asr, _ = random_models("whisper-base", "smdm-170m", torch.device("cuda"), torch.bfloat16)
    asr.use_cuda_graphs(bool(args.graphs))
    clip, opts = synthetic_speech(args.seconds), asr.options(args.preset)
    for _ in range(3):
        asr.decode_windows([clip], opts)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            asr.decode_windows([clip], opts)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()

"""What one verification pass costs (rescoring.Rescorer.verify), by windows in the batch.

    python benchmarks/bench_verify.py --shape-of DIR [--windows 1,4,16] [--tokens 40] [--out OUT.json]
Random weights of the model in DIR (config.json + tokenizer.json only). Each window's draft is random
tokens read at r = 1, so the AR decoder rejects at once and corrects one token per pass: the run makes
as many passes as the cap allows (`MAX_NEW_TOKENS`), each with the realignment's rows, the kept keys
and values, and a first rejection near the start, as a real draft's disagreements do. Median ms per
pass over repeats, CUDA-synchronised; the pass count does not depend on the device. On CUDA both paths:
`graphs` (verify_graphs: fixed shapes replayed as CUDA graphs, the default) and `eager` (rows of each
pass's own shape).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from whisfusion_cli import rescoring, verification
from whisfusion_cli.bench import shaped_like


def time_passes(asr, n_windows: int, tokens: int, repeats: int, graphs: bool) -> dict:
    """Median ms per pass of verifying `n_windows` random drafts of `tokens` tokens (model `asr`'s rescorer)."""
    rescoring.USE_GRAPHS = graphs
    rescorer, g = asr.rescorer, torch.Generator().manual_seed(n_windows)
    xa = torch.randn(n_windows, asr.cfg.encoder.n_audio_ctx, asr.cfg.encoder.n_audio_state, generator=g)
    kv = rescorer.cross_kv(xa.to(device=asr.device, dtype=asr.dtype))
    drafts = [torch.randint(0, rescorer.eot, (tokens,), generator=g).tolist() for _ in range(n_windows)]
    per_pass, passes = [], 0
    for i in range(repeats + 1):  # the first warms up
        asr.stopwatch.sync()
        t0 = time.perf_counter()
        _, passes = rescorer.verify(kv, drafts, 1.0)
        asr.stopwatch.sync()
        if i:
            per_pass.append((time.perf_counter() - t0) / passes)
    return {"path": "graphs" if graphs else "eager", "windows": n_windows,
            "draft_tokens": tokens, "passes": passes,
            "ms_per_pass": round(1000 * statistics.median(per_pass), 3)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape-of", type=Path, required=True)
    ap.add_argument("--windows", default="1,4,16")
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--max-new-tokens", type=int, default=32, help="the cap, i.e. passes per run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    verification.MAX_NEW_TOKENS = args.max_new_tokens
    pdd_asr, _ = shaped_like(args.shape_of, device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    paths = (True, False) if device.type == "cuda" else (False,)
    rows = [time_passes(pdd_asr, int(w), args.tokens, args.repeats, g) for g in paths for w in args.windows.split(",")]
    for row in rows:
        print(json.dumps(row), flush=True)
    meta = {"gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
            "weights": f"random, shaped like {args.shape_of}", "head_span": rescoring.HEAD_SPAN}
    if args.out:
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()

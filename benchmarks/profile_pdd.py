"""Where one utterance's time goes on the GPU: each stage timed alone, then torch.profiler's top kernels.

    python benchmarks/profile_pdd.py --shape-of whisfusion_cli/assets/default-model [--preset accurate]
        [--seconds 25] [--rows 25]
Random weights of the model's shapes (speed does not depend on the values). Stages: log-mel, encoder
(eager and replayed as a CUDA graph), adapter K/V, one decoder pass per head size P_t, the sampling /
re-masking / confidence kernels between passes, the host-side text selection, and the whole call.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from whisfusion_cli.bench import shaped_like, synthetic_speech
from whisfusion_cli.decoding import canvas_length, head_sizes
from whisfusion_cli.diffusion import select_remask_scoped
from whisfusion_cli.token_stats import choose_tokens


def median_ms(fn: Callable[[], object], repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of fn() in ms, CUDA-synchronised around each call."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def graphed(fn: Callable[[], object]) -> Callable[[], None]:
    """fn captured once as a CUDA graph (after a warm-up on a side stream); returns its replay (fn off CUDA)."""
    if not torch.cuda.is_available():
        return fn
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return g.replay


@torch.inference_mode()
def stages(asr, seconds: float, preset: str) -> None:
    opts = asr.options(preset)
    clip = synthetic_speech(seconds)
    dev, dec, k = asr.device, asr.net.decoder, opts.k
    mel = asr.mel([clip])
    print(f"log-mel            {median_ms(lambda: asr.mel([clip])):7.3f} ms")
    print(f"encoder eager      {median_ms(lambda: asr.net.encoder(mel)):7.3f} ms")
    print(f"encoder graph      {median_ms(graphed(lambda: asr.net.encoder(mel))):7.3f} ms")
    xa = asr.net.encoder(mel)[:, : int(seconds * 50 + 50) // 50 * 50]
    n_frames = torch.tensor([int(seconds * 50)], device=dev)
    L = canvas_length(seconds, asr.cfg.decoder.max_seq_len)
    sizes = head_sizes(opts.schedule, L)
    print(f"canvas L={L}, k={k}, steps={len(sizes)}, head sizes {sizes}")
    print(f"adapter K/V eager  {median_ms(lambda: dec.cross_kv(xa, n_frames)):7.3f} ms")
    kv = dec.cross_kv(xa, n_frames)
    canvas = torch.randint(0, 1000, (k, L), device=dev)
    for p in sorted(set(sizes), reverse=True)[:3]:
        pos = None if p == L else torch.arange(p, device=dev).expand(k, -1).contiguous()
        run = lambda pos=pos: dec(canvas, kv, positions=pos)
        print(f"decoder P={p:3d} eager {median_ms(run):7.3f} ms   graph {median_ms(graphed(run)):7.3f} ms")
    logits = dec(canvas, kv)
    gen = torch.Generator(device=dev).manual_seed(0)
    print(f"choose (sample)    {median_ms(lambda: choose_tokens(logits, sample=True, k=k, generator=gen)):7.3f} ms  (N,L,V)")
    print(f"choose (argmax)    {median_ms(lambda: choose_tokens(logits)):7.3f} ms  (N,L,V)")
    small = dec(canvas, kv, positions=pos)
    print(f"choose (argmax)    {median_ms(lambda: choose_tokens(small)):7.3f} ms  (N,{small.shape[1]},V)")
    conf = torch.rand(k, L, device=dev)
    print(f"remask (scoped)    {median_ms(lambda: select_remask_scoped(canvas, conf, 0.5, 'low_confidence', 50257, gen)):7.3f} ms")
    asr.use_cuda_graphs(dev.type == "cuda")
    windows = [clip]
    print(f"decode_windows     {median_ms(lambda: asr.decode_windows(windows, opts), 10):7.3f} ms (graphs)")
    sw = asr.stopwatch
    sw.totals.clear()
    for _ in range(10):
        asr.decode_windows(windows, opts)
    print("stopwatch per call", {s: round(v * 100, 3) for s, v in sw.totals.items()}, "ms")
    cands, tc = canvas.tolist(), conf.tolist()
    print(f"host _result       {median_ms(lambda: asr._result(cands, tc, 0, [0.5] * k, opts)):7.3f} ms")
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])) as prof:
        for _ in range(5):
            asr.decode_windows(windows, opts)
        sync()
    return prof


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape-of", required=True)
    ap.add_argument("--preset", default="accurate")
    ap.add_argument("--seconds", type=float, default=25.0)
    ap.add_argument("--rows", type=int, default=25)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    dev = torch.device(args.device)
    asr, _ = shaped_like(args.shape_of, dev, torch.bfloat16 if dev.type == "cuda" else torch.float32)
    prof = stages(asr, args.seconds, args.preset)
    print(prof.key_averages().table(sort_by="cuda_time_total" if torch.cuda.is_available() else "cpu_time_total", row_limit=args.rows, max_name_column_width=70))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=args.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()

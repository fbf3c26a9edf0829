"""Device run for the training issue: feature cache + a few hundred smdm-170m steps, timed.

Synthetic speech-like audio (bench.synthetic_speech) with random-word texts of a realistic
length stands in for data: the figures are step time and tokens/s, not accuracy.
    python benchmarks/train_gpu.py --encoder DIR --work /tmp/w --clips 1000 --steps 300
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

from whisfusion_cli.bench import synthetic_speech, write_wav
from whisfusion_cli.config import TrainConfig
from whisfusion_cli.train import CacheProgress, StepInfo, run_training

WORDS = ("the of and to in he was that it his her you with as had for she on not at but be is my by "
         "which all this have so from were they said one or him there what been would when we an").split()


def make_data(work: Path, n: int) -> Path:
    rng = random.Random(0)
    rows = []
    for i in range(n):
        seconds = rng.uniform(2, 28)
        path = work / f"clip{i:05d}.wav"
        if not path.exists():
            write_wav(path, synthetic_speech(seconds, seed=i))
        text = " ".join(rng.choice(WORDS) for _ in range(int(seconds * 2.7))).capitalize() + "."
        rows.append({"audio": str(path), "text": text, "duration": round(seconds, 3)})
    manifest = work / "train.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--encoder", required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--clips", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    manifest = make_data(args.work, args.clips)
    print(f"data: {args.clips} clips in {time.perf_counter() - t0:.1f} s", flush=True)
    events: dict[str, list] = {"cache": [], "steps": []}
    marks = {"start": time.perf_counter()}

    def on_event(e: object) -> None:
        if isinstance(e, CacheProgress) and e.done == e.total:
            marks["cache_done"] = time.perf_counter()
        elif isinstance(e, StepInfo):
            events["steps"].append({"step": e.step, "loss": e.loss, "tokens_per_s": e.tokens_per_s,
                                    "t": time.perf_counter()})
            if e.step % 50 == 0:
                print(f"step {e.step} loss {e.loss:.3f} tok/s {e.tokens_per_s:,.0f}", flush=True)

    for stage, steps in (("1", args.steps), ("2", args.steps // 3)):
        out = args.work / f"run{stage}"
        cfg = TrainConfig(data=(str(manifest),), output=str(out), stage=stage,  # type: ignore[arg-type]
                          encoder=args.encoder if stage == "1" else None,
                          init=str(args.work / "run1" / "last") if stage == "2" else None,
                          decoder_config="smdm-170m", cache_dir=str(args.work / "features"), steps=steps,
                          batch_size=args.batch_size, warmup_steps=20, val_every=steps, save_every=steps,
                          val_fraction=0.02, log_every=10)
        events["steps"].clear()
        marks = {"start": time.perf_counter()}
        run_training(cfg, on_event)
        s = events["steps"]
        later = [x for x in s if x["step"] > 20]
        step_s = (later[-1]["t"] - later[0]["t"]) / (later[-1]["step"] - later[0]["step"]) if len(later) > 1 else None
        summary = {"stage": stage, "steps": steps, "batch_size": args.batch_size, "clips": args.clips,
                   "cache_s": round(marks.get("cache_done", marks["start"]) - marks["start"], 1),
                   "step_s": step_s and round(step_s, 4),
                   "tokens_per_s_median": sorted(x["tokens_per_s"] for x in later)[len(later) // 2] if later else None,
                   "first_loss": s[0]["loss"] if s else None, "last_loss": s[-1]["loss"] if s else None}
        print(json.dumps(summary), flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"train_stage{stage}.json").write_text(json.dumps(summary, indent=2) + "\n")
        (args.out / f"metrics_stage{stage}.jsonl").write_text((out / "metrics.jsonl").read_text())


if __name__ == "__main__":
    main()

"""WER of trained checkpoints per decoding setting, on sets read without ffmpeg (GPU machine).

Sets: `progress.jsonl` rows of a make_dataset.py folder by split (e.g. test_voices: held-out
voices and books) and a folder of `<id>.npy` 16 kHz clips with a `transcripts.json` ({id: text}),
e.g. real LibriSpeech clips decoded beforehand, and a manifest of real recordings (`--manifest`,
shared/data/dev-real: its native-speaker clips, its speechocean762 clips, and long windows of
25-30 s joined from all of them and from the native ones, `data.long_windows`). Prints and writes one JSON record per
(model, set, setting): WER, oracle WER over the k candidates, clips, decode seconds.

    python recipes/synthetic/device_eval.py --models /tmp/run/model --data /tmp/synth \
        --splits test_voices val --npy /tmp/real --out results.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stream_train import read_audio

from whisfusion_cli.asr import load_model
from whisfusion_cli.data import join_clips
from whisfusion_cli.wer import normalize, word_errors

# name -> (preset, overrides): the paper's presets, then more steps for the accurate one
SETTINGS = {
    "fast": ("fast", {}), "balanced": ("balanced", {}), "accurate": ("accurate", {}),
    "accurate-paper": ("accurate", {"scope": "canvas", "dedupe": 0.0}),  # rho over the whole canvas, no merge
    "accurate-nodedupe": ("accurate", {"dedupe": 0.0}),
    "accurate-steep": ("accurate", {"schedule": (1.0, 0.6, 0.35, 0.15)}),
    "accurate-8step": ("accurate", {"steps": 8, "schedule": (1.0, 0.8, 0.65, 0.5, 0.4, 0.3, 0.2, 0.1)}),
    "accurate-12step": ("accurate", {"steps": 12, "schedule": (1.0, .85, .75, .65, .55, .45, .37, .3, .22, .15, .1, .05)}),
    "balanced-8step": ("balanced", {"steps": 8, "schedule": (1.0, 0.8, 0.65, 0.5, 0.4, 0.3, 0.2, 0.1)}),
    "fast-6step": ("fast", {"steps": 6, "schedule": (1.0, 0.7, 0.5, 0.3, 0.2, 0.1)}),
    "greedy-1step": ("accurate", {"k": 1, "steps": 1, "schedule": (1.0,)}),
    # with a rescorer (Whisper's AR decoder beside the model): verification's threshold r
    "accurate-verify0.3": ("accurate", {"verify": 0.3}), "accurate-verify1": ("accurate", {"verify": 1.0}),
    "accurate-trust0": ("accurate", {"trust": 0.0}),  # verification by the ratio alone (accurate until v3's trust)
    # another preset's draft, rescored and verified: accurate drafted as fast until run 5, as balanced since
    "fast-verify0.5": ("fast", {"select": "rescore", "verify": 0.5}),
    "balanced-verify0.5": ("balanced", {"select": "rescore", "verify": 0.5}),
    "balanced-verify0.3": ("balanced", {"select": "rescore", "verify": 0.3}),
}


def load_sets(data: list[Path], splits: list[str], npy: Path | None, limit: int) -> dict[str, list]:
    """set name -> [(audio, reference, voice)]."""
    sets: dict[str, list] = {}
    for d in data:
        rows = [json.loads(x) for x in (d / "progress.jsonl").read_text().splitlines() if x.strip()]
        for split in splits:
            chosen = [r for r in rows if r.get("split") == split][:limit]
            sets.setdefault(split, []).extend((read_audio(d / r["audio"]), r["text"], r.get("voice", split))
                                              for r in chosen)
    if npy:
        refs = json.loads((npy / "transcripts.json").read_text())
        sets["real"] = [(read_audio(npy / f"{k}.npy"), v, "real") for k, v in sorted(refs.items())]
    return {k: v for k, v in sets.items() if v}


NON_NATIVE = "speechocean762"  # dev-real's non-native corpus (speaker labels name it)


def manifest_sets(manifest: Path) -> dict[str, list]:
    """dev-real's sets: native clips, speechocean762 clips, long windows of all / of the native ones."""
    rows = [json.loads(x) for x in manifest.read_text().splitlines() if x.strip()]
    clips = [(read_audio(manifest.parent / r["audio"]), r["text"], r["speaker"]) for r in rows]
    native = [c for c in clips if NON_NATIVE not in c[2]]

    def joined(part: list) -> list:
        return [(audio, text, "long") for audio, text in join_clips([(c[0], c[1]) for c in part])]
    return {"devreal-native": native, "devreal-so": [c for c in clips if NON_NATIVE in c[2]],
            "long-all": joined(clips), "long-native": joined(native)}


def score(model, clips: list, setting: str, batch: int) -> dict:
    preset, overrides = SETTINGS.get(setting, (None, {}))
    options = model.options(preset, **overrides) if model.engine == "pdd" else None
    errors = words = oracle = passes = 0
    by_voice: dict[str, list[int]] = {}
    t0 = time.perf_counter()
    examples = []
    for i in range(0, len(clips), batch):
        chunk = clips[i: i + batch]
        for (_, ref, voice), res in zip(chunk, model.decode_windows([c[0] for c in chunk], options)):
            e, n = word_errors(normalize(ref), normalize(res.text))
            cands = [word_errors(normalize(ref), normalize(c))[0] for c in res.candidates] or [e]
            errors, words, oracle, passes = errors + e, words + n, oracle + min(cands), passes + res.ar_passes
            counts = by_voice.setdefault(voice, [0, 0])
            counts[0], counts[1] = counts[0] + e, counts[1] + n
            if len(examples) < 4:
                examples.append({"ref": ref, "hyp": res.text})
    model.stopwatch.sync()
    return {"wer": round(errors / max(1, words), 4), "oracle_wer": round(oracle / max(1, words), 4),
            "clips": len(clips), "words": words, "ar_passes": round(passes / max(1, len(clips)), 2), "seconds": round(time.perf_counter() - t0, 2),
            "wer_by_voice": {v: round(e / max(1, n), 4) for v, (e, n) in sorted(by_voice.items())},
            "examples": examples}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", required=True, help="whisfusion checkpoints or Whisper dirs (AR)")
    p.add_argument("--data", nargs="*", type=Path, default=[])
    p.add_argument("--splits", nargs="*", default=["test_voices", "val"])
    p.add_argument("--npy", type=Path)
    p.add_argument("--manifest", type=Path, help="real recordings (dev-real's manifest.jsonl): 4 sets")
    p.add_argument("--sets", nargs="*", help="evaluate only these of the sets read (e.g. devreal-native long-native)")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS))
    p.add_argument("--limit", type=int, default=200, help="clips per split")
    p.add_argument("--batch", type=int, default=16, help="clips per batch; ar_passes is per batch (per clip at 1)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    sets = load_sets(args.data, args.splits, args.npy, args.limit)
    if args.manifest:
        sets.update(manifest_sets(args.manifest))
    if args.sets:
        sets = {k: v for k, v in sets.items() if k in args.sets}
    records = []
    for path in args.models:
        model = load_model(path, device="auto")
        for setting in (args.settings if model.engine == "pdd" else ["greedy"]):
            for name, clips in sets.items():
                rec = {"model": path, "set": name, "setting": setting, **score(model, clips, setting, args.batch)}
                print(json.dumps({k: v for k, v in rec.items() if k != "examples"}), flush=True)
                records.append(rec)
        del model
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    if args.out:
        args.out.write_text(json.dumps(records, indent=1) + "\n")
    return records


if __name__ == "__main__":
    main()

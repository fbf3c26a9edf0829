"""Scores the ways PDD's k candidates become one text (selection.py, rescoring.py) on the same candidates.

    python recipes/synthetic/select_rules.py --data DIR --preset accurate --candidates cands.json \
        --out recipes/synthetic/results/cpu_select_rules.json
DIR is a make_dataset.py output holding the val and test_voices splits (rendered here with the
device run's seed). Each clip is decoded once with the preset (seed 0); every candidate's text and
mean confidence, and what each AR-decoder rule (VARIANTS: rescoring, verification) makes of those
same candidates, with its AR passes, are kept in --candidates (reused if it exists); each rule then
picks or builds the transcript. Choose a rule on val; test_voices only checks it. One process per
core: `--splits val`, `--splits test_voices --part 0:64` (its own cache each), then score the caches
together: `--candidates a.json b.json c.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from whisfusion_cli.asr import load_model
from whisfusion_cli.audio import load_audio
from whisfusion_cli.selection import consensus, vote
from whisfusion_cli.wer import normalize, word_errors

SPLITS = ("val", "test_voices")
RULES = {
    "confidence": lambda texts, scores: texts[max(range(len(texts)), key=lambda i: scores[i])],
    "consensus": lambda texts, scores: texts[consensus(texts, scores)],
    "vote": vote,
}
VARIANTS = {  # name -> DecodingOptions fields, applied to the same candidates (models with a rescorer)
    "rescore": {"select": "rescore"},
    "rescore+verify1": {"select": "rescore", "verify": 1.0},
    "rescore+verify0.5": {"select": "rescore", "verify": 0.5},
    "rescore+verify0.3": {"select": "rescore", "verify": 0.3},
    "vote+verify0.5": {"select": "vote", "verify": 0.5},
    # verification as a product of experts: draft tokens trusted by the diffusion decoder's confidence
    "rescore+verify0.5+trust0.25": {"select": "rescore", "verify": 0.5, "trust": 0.25},
    "rescore+verify0.5+trust0.5": {"select": "rescore", "verify": 0.5, "trust": 0.5},
    "rescore+verify0.5+trust0.75": {"select": "rescore", "verify": 0.5, "trust": 0.75},
    "rescore+verify0.5+trust1": {"select": "rescore", "verify": 0.5, "trust": 1.0},
    "rescore+verify1+trust1": {"select": "rescore", "verify": 1.0, "trust": 1.0},
}


def decode(data: Path, model: str, preset: str, variants: list[str], splits: list[str],
           part: slice = slice(None)) -> dict[str, list[dict]]:
    """{split: [{ref, voice, texts, scores, variants: {name: {text, passes}}}]} for every clip of the
    splits; `variants`: the VARIANTS scored too (models with a rescorer)."""
    asr = load_model(model)
    kept: list[dict] = []
    results = asr._results

    def spy(texts, ids, best, scores, xa, options, probs):  # every candidate's text, as decode_windows builds it
        out = {"texts": list(texts[0]), "scores": list(scores[0]), "variants": {}}
        for name in (variants if asr.rescorer is not None else ()):
            r = results(texts, ids, best, scores, xa, replace(options, **VARIANTS[name]), probs)[0]
            out["variants"][name] = {"text": r.text, "passes": r.ar_passes}
        kept.append(out)
        return results(texts, ids, best, scores, xa, options, probs)

    asr._results = spy  # type: ignore[method-assign]
    out: dict[str, list[dict]] = {}
    for split in splits:
        out[split] = []
        for line in (data / f"{split}.jsonl").read_text().splitlines()[part]:
            row = json.loads(line)
            asr.decode_windows([load_audio(data / row["audio"])], asr.options(preset, seed=0))
            out[split].append({"ref": row["text"], "voice": row["voice"], **kept.pop()})
            print(f"{split} {len(out[split])}", end="\r", file=sys.stderr, flush=True)
    return out


def score(clips: list[dict]) -> dict:
    """WER per rule (and the oracle), overall and per voice; mean AR passes per verifying variant."""
    errors: dict[str, dict[str, int]] = {}
    passes: dict[str, int] = {}
    for clip in clips:
        ref = normalize(clip["ref"])
        hyps = {name: rule(clip["texts"], clip["scores"]) for name, rule in RULES.items()}
        hyps["oracle"] = min(clip["texts"], key=lambda t: word_errors(ref, normalize(t))[0])
        hyps |= {name: v["text"] for name, v in clip.get("variants", {}).items()}
        for name, v in clip.get("variants", {}).items():
            passes[name] = passes.get(name, 0) + v["passes"]
        for group in ("all", clip["voice"]):
            e = errors.setdefault(group, {"words": 0})
            e["words"] += len(ref.split())
            for name, hyp in hyps.items():
                e[name] = e.get(name, 0) + word_errors(ref, normalize(hyp))[0]
    out = {group: {k: round(v / e["words"], 4) for k, v in e.items() if k != "words"} | {"words": e["words"]}
           for group, e in errors.items()}
    return out | {"ar_passes_per_clip": {k: round(v / len(clips), 2) for k, v in passes.items() if v}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--model", default="whisfusion_cli/assets/default-model")
    ap.add_argument("--preset", default="accurate")
    ap.add_argument("--candidates", type=Path, nargs="+", required=True,
                    help="candidate cache (JSON), made if missing; several existing ones (parts) are scored together")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--variants", default=",".join(VARIANTS), help="the AR-decoder rules to score (VARIANTS)")
    ap.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS, help="e.g. one per process")
    ap.add_argument("--part", default=":", help="A:B: only those clips of each split (parts' caches concatenate)")
    args = ap.parse_args()
    if len(args.candidates) == 1 and not args.candidates[0].exists():
        part = slice(*(int(x) if x else None for x in args.part.split(":")))
        cands = decode(args.data, args.model, args.preset, args.variants.split(","), args.splits, part)
        args.candidates[0].write_text(json.dumps(cands))
    cands: dict[str, list[dict]] = {}
    for path in args.candidates:
        for split, clips in json.loads(path.read_text()).items():
            cands.setdefault(split, []).extend(clips)
    record = {"preset": args.preset, **{split: score(cands[split]) | {"clips": len(cands[split])} for split in cands}}
    print(json.dumps(record, indent=1))
    if args.out:
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()

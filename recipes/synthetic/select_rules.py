"""Scores the ways PDD's k candidates become one text (selection.py) on the same candidates.

    python recipes/synthetic/select_rules.py --data DIR --preset accurate --candidates cands.json \
        --out recipes/synthetic/results/cpu_select_rules.json
DIR is a make_dataset.py output holding the val and test_voices splits (rendered here with the
device run's seed: the same clips). Each clip is decoded once with the preset (seed 0) and every
candidate's text and mean confidence kept in --candidates (reused if it exists); each rule then
picks or builds the transcript from those. Choose a rule on val; test_voices only checks it.
"""

from __future__ import annotations

import argparse
import json
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


def decode(data: Path, model: str, preset: str) -> dict[str, list[dict]]:
    """{split: [{ref, voice, texts, scores}]} for every clip of the splits."""
    asr = load_model(model)
    kept: list[tuple[list[str], list[float]]] = []
    result = asr._result

    def spy(cands, conf, best, scores, options):  # every candidate's text, as decode_windows builds it
        r = result(cands, conf, best, scores, options)
        kept.append((list(r.candidates), list(scores)))
        return r

    asr._result = spy  # type: ignore[method-assign]
    out: dict[str, list[dict]] = {}
    for split in SPLITS:
        out[split] = []
        for line in (data / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            asr.decode_windows([load_audio(data / row["audio"])], asr.options(preset, seed=0))
            texts, scores = kept.pop()
            out[split].append({"ref": row["text"], "voice": row["voice"], "texts": texts, "scores": scores})
    return out


def score(clips: list[dict]) -> dict:
    """WER per rule (and the oracle), overall and per voice."""
    errors: dict[str, dict[str, int]] = {}
    for clip in clips:
        ref = normalize(clip["ref"])
        hyps = {name: rule(clip["texts"], clip["scores"]) for name, rule in RULES.items()}
        hyps["oracle"] = min(clip["texts"], key=lambda t: word_errors(ref, normalize(t))[0])
        for group in ("all", clip["voice"]):
            e = errors.setdefault(group, {"words": 0})
            e["words"] += len(ref.split())
            for name, hyp in hyps.items():
                e[name] = e.get(name, 0) + word_errors(ref, normalize(hyp))[0]
    return {group: {k: round(v / e["words"], 4) for k, v in e.items() if k != "words"} | {"words": e["words"]}
            for group, e in errors.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--model", default="whisfusion_cli/assets/default-model")
    ap.add_argument("--preset", default="accurate")
    ap.add_argument("--candidates", type=Path, required=True, help="candidate cache (JSON), made if missing")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    if not args.candidates.exists():
        args.candidates.write_text(json.dumps(decode(args.data, args.model, args.preset)))
    cands = json.loads(args.candidates.read_text())
    record = {"preset": args.preset, **{split: score(cands[split]) | {"clips": len(cands[split])} for split in SPLITS}}
    print(json.dumps(record, indent=1))
    if args.out:
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()

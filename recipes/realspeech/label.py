"""Training labels for `shared/data/train-real` in Whisper's written style (cased, punctuated).

Whisper base's AR decoder (greedy) transcribes every clip once:
  unlabelled/ (LibriSpeech readers, no transcripts): its text is the label (a pseudo-label, as
    distil-whisper trains on; ~6% WER on real read speech);
  labelled/ (speechocean762 prompts, upper case, no punctuation): its text is the label where it
    says the same words as the prompt (Whisper's normaliser on both sides), so the label is the
    prompt in Whisper's own spelling; elsewhere the prompt in sentence case with a full stop
    (what was read, not what Whisper heard: non-native and child speech defeat it often).
Writes one manifest.jsonl per part under OUT with audio paths pointing at the source clips
(relative to OUT), plus `label_source` ("whisper" / "prompt") per row.

    python recipes/realspeech/label.py ../shared/data/train-real ~/.cache/whisfusion-test-weights/whisper-base \
        /tmp/train-real-labels
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "synthetic"))

from stream_train import read_audio  # soundfile: no ffmpeg needed (the GPU machine has none)

from whisfusion_cli.asr import load_model
from whisfusion_cli.wer import normalize


def sentence_case(prompt: str) -> str:
    """"IS SHE YOUR SISTER" -> "Is she your sister." ("I" and "I'm"-like words stay capital)."""
    words = ["I" + w[1:].lower() if w == "I" or w.startswith("I'") else w.lower() for w in prompt.split()]
    text = " ".join(words)
    return (text[:1].upper() + text[1:] + ".") if text else text


def label(prompt: str | None, heard: str) -> tuple[str, str]:
    """(label, its source) for one clip: Whisper's text, or the prompt when they disagree."""
    if prompt is None:
        return heard.strip(), "whisper"
    if heard.strip() and normalize(heard) == normalize(prompt):
        return heard.strip(), "whisper"
    return sentence_case(prompt), "prompt"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", type=Path, help="shared/data/train-real")
    p.add_argument("whisper", help="Whisper checkpoint (HF layout), or a whisfusion model shipping Whisper's "
                   "AR decoder (read at verify 1: the same greedy text), that labels")
    p.add_argument("out", type=Path)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--parts", nargs="+", default=["unlabelled", "labelled"])
    args = p.parse_args(argv)
    model = load_model(args.whisper, device="auto")
    # a whisfusion model that ships Whisper's AR decoder reads as it exactly at verify 1 (its greedy text)
    options = model.options("accurate", verify=1.0) if model.engine == "pdd" else None
    for part in args.parts:
        rows = [json.loads(x) for x in (args.data / part / "manifest.jsonl").read_text().splitlines() if x.strip()]
        out_dir = args.out / part
        out_dir.mkdir(parents=True, exist_ok=True)
        t0, done = time.time(), []
        for i in range(0, len(rows), args.batch):
            chunk = rows[i: i + args.batch]
            audio = [read_audio(args.data / part / r["audio"]) for r in chunk]
            for r, res in zip(chunk, model.decode_windows(audio, options)):
                text, source = label(r.get("text"), res.text)
                if not text:
                    continue
                src = os.path.relpath(args.data / part / r["audio"], out_dir)
                done.append({**r, "audio": src, "text": text, "label_source": source,
                             **({"prompt": r["text"]} if "text" in r else {})})
            print(f"{part}: {i + len(chunk)}/{len(rows)} {time.time() - t0:.0f}s", flush=True)
        tmp = out_dir / "manifest.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in done))
        tmp.replace(out_dir / "manifest.jsonl")
        n_w = sum(r["label_source"] == "whisper" for r in done)
        print(f"{part}: {len(done)} rows, {n_w} Whisper-labelled, {len(done) - n_w} prompt-labelled", flush=True)


if __name__ == "__main__":
    main()

#!/bin/bash
# Packs the real-speech lease's carries (each < 64 MiB, one per `run` call): the synthetic recipe's
# .carry1-6 (TTS .debs, books, the model to go on from, wheels), dev-real added to .carry6, and
# .carry7: train-real's audio with the unlabelled part's pseudo-labels (label.py, run here).
#   recipes/realspeech/pack.sh DEBS_DIR MODEL_DIR WHEELS_DIR LABELS_DIR
set -e
DEBS=$1 MODEL=$2 WHEELS=$3 LABELS=$4
SHARED=$(cd "$(dirname "$0")/../../../shared" && pwd)
bash "$(dirname "$0")"/../synthetic/pack_carries.sh "$DEBS" "$MODEL" "$WHEELS"
cp -r "$SHARED"/data/dev-real .carry6/dev-real
mkdir -p .carry7/train-real && cp -r "$SHARED"/data/train-real/labelled "$SHARED"/data/train-real/unlabelled .carry7/train-real/
python3 - "$LABELS"/unlabelled/manifest.jsonl .carry7/train-real/unlabelled/labels.jsonl <<'PY'
import json, sys
from pathlib import Path
rows = [json.loads(x) for x in Path(sys.argv[1]).read_text().splitlines() if x.strip()]
Path(sys.argv[2]).write_text("".join(json.dumps({**r, "audio": Path(r["audio"]).name}) + "\n" for r in rows))
PY
chmod -R u+w .carry?
du -sh .carry?

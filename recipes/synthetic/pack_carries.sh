#!/bin/bash
# Packs what a device lease needs into git-ignored folders of < 64 MiB each (one per `run` call,
# named in `carry`): .carry1-2 the TTS .debs (foreign MBROLA voices left out), the books, the TTS
# scripts and the evaluation transcripts (8-gram filter); .carry3-5 the model to go on training
# (its ~15 MB shards, .carry6 the rest), the wheels the machine lacks (.whl) and the 4 real clips as fp16 .npy.
#   recipes/synthetic/pack_carries.sh DEBS_DIR MODEL_DIR WHEELS_DIR
set -e
DEBS=$1 MODEL=$2 WHEELS=$3
SHARED=$(cd "$(dirname "$0")/../../../shared" && pwd)
EV=$SHARED/data/librispeech-sample/LibriSpeech
rm -rf .carry? && mkdir -p .carry{1,2}/debs .carry{3,4,5,6}/model .carry2/evaltrans
i=0
for f in $(ls -S "$DEBS"/*.deb | grep -v -E 'mbrola-(nl|de|sw|hu|af|gr|fr|pl|ro)[0-9]'); do
  [ $(du -sm .carry1 | cut -f1) -lt 52 ] && cp "$f" .carry1/debs/ || cp "$f" .carry2/debs/
done
cp "$SHARED"/data/text/books.txt.xz "$SHARED"/data/text/SOURCES.md "$SHARED"/tts/unpack_debs.py "$SHARED"/tts/tts-env.sh .carry2/
find "$EV" -name "*.trans.txt" -exec cp {} .carry2/evaltrans/ \;
shards=("$MODEL"/*.safetensors)
for n in "${!shards[@]}"; do cp "${shards[$n]}" .carry$((3 + n / 4))/model/; done
cp "$MODEL"/config.json "$MODEL"/tokenizer.json .carry5/model/
mkdir -p .carry3/whl .carry4/real && cp "$WHEELS"/*.whl .carry3/whl/
python3 - "$EV" .carry4/real <<'PY'
import json, sys
from pathlib import Path
import numpy as np
from whisfusion_cli.audio import load_audio
src, out = Path(sys.argv[1]), Path(sys.argv[2])
refs = {}
for trans in sorted(src.rglob("*.trans.txt")):
    for line in trans.read_text().splitlines():
        key, text = line.split(" ", 1)
        np.save(out / f"{key}.npy", load_audio(trans.parent / f"{key}.flac").astype(np.float16))
        refs[key] = text
(out / "transcripts.json").write_text(json.dumps(refs, indent=1))
PY
du -sh .carry?

#!/bin/bash
# The GPU-machine run that trained the shipped model, one step per device call (see README.md,
# "Train on the device"). Only 64 MiB travels per call, so the TTS .debs, the books, Whisper
# base (fp16, cut in three) and the wheels arrive over several `stage` calls into /tmp/stage;
# then synthesis (12 CPU cores) and training (the GPU) run side by side as background jobs.
#   recipes/synthetic/device_run.sh stage DIR      # copy a carried DIR into /tmp/stage
#   recipes/synthetic/device_run.sh synth          # unpack the voices, start make_dataset.py
#   recipes/synthetic/device_run.sh train MINUTES  # start the main run and the two ablations
#   recipes/synthetic/device_run.sh poll SECONDS   # wait, then show progress
#   recipes/synthetic/device_run.sh eval OUT       # WER tables + the trained delta into OUT
set -e
S=/tmp/stage
REPO=$(cd "$(dirname "$0")/../.." && pwd)
py() { PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 "$@"; }
case $1 in
stage)
  mkdir -p $S && cp -r "$2"/. $S/ && du -sh $S ;;
synth)
  python3 $S/unpack_debs.py $S/debs /tmp/tts > /tmp/unpack.log
  export TTS_PREFIX=/tmp/tts && . $S/tts-env.sh
  rm -rf /tmp/repo && mkdir /tmp/repo && cp -r "$REPO"/whisfusion_cli "$REPO"/recipes /tmp/repo/
  cd /tmp/repo
  setsid nohup python3 recipes/synthetic/make_dataset.py --books $S/books.txt.xz --sources $S/SOURCES.md \
    --out /tmp/synth --hours 150 --val-hours 0.2 --test-hours 0.4 --seed 0 --workers 12 --format wav \
    --voices rhvoice festival pico flite espeak-ng --eval-transcripts $S/evaltrans \
    > /tmp/synth.log 2>&1 < /dev/null &
  sleep 45; cat /tmp/synth.log; wc -l /tmp/synth/progress.jsonl ;;
train)
  # the main run ($2 minutes; shipped) and the ablation beside it on the same GPU and data stream: an
  # SMDM-170M-shaped decoder from scratch for 5 minutes, compared with the main run's 5-minute snapshot
  # (a third run, whisper-mdm without the shifted read, ran out of GPU memory beside them: not measured)
  cat $S/wb.part.* > $S/whisper-base/model.safetensors
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $S/whl/*.whl
  rm -rf /tmp/repo/whisfusion_cli /tmp/repo/recipes && cp -r "$REPO"/whisfusion_cli "$REPO"/recipes /tmp/repo/
  cd /tmp/repo
  export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONPATH=/tmp/site
  T="recipes/synthetic/stream_train.py --data /tmp/synth $S/neural --whisper $S/whisper-base"
  setsid nohup python3 $T --out /tmp/runA --minutes "$2" --snapshot-minutes 5 > /tmp/runA.log 2>&1 < /dev/null &
  setsid nohup python3 $T --out /tmp/runC --minutes 5 --scratch smdm-170m --lr 3e-4 --lr2 1.5e-4 --batch 32 \
    > /tmp/runC.log 2>&1 < /dev/null &
  sleep 60; tail -n 3 /tmp/run?.log ;;
poll)
  sleep "$2"; tail -n 4 /tmp/run?.log; tail -n 2 /tmp/synth.log; wc -l /tmp/synth/progress.jsonl
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv ;;
eval)
  mkdir -p "$2"; cd /tmp/repo
  E="recipes/synthetic/device_eval.py --data /tmp/synth --splits test_voices val --npy $S/real --limit 128"
  py $E --models /tmp/runA/model --settings fast balanced accurate accurate-paper accurate-nodedupe \
    accurate-steep accurate-8step accurate-12step balanced-8step fast-6step greedy-1step --out "$2/eval_final.json"
  py $E --models $S/whisper-base --out "$2/eval_ar.json"
  py $E --models /tmp/runA/model-5min /tmp/runC/model --settings accurate accurate-steep greedy-1step \
    --out "$2/eval_ablation.json"
  py recipes/synthetic/delta.py extract /tmp/runA/model "$2"
  cat /tmp/runA/log.jsonl /tmp/runC/log.jsonl > "$2/train_logs.jsonl" ;;
esac

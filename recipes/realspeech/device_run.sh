#!/bin/bash
# The real-speech lease (README.md beside this file), after the synthetic recipe's staging calls
# (../synthetic/device_run.sh stage .carry1..6, synth2 N) and `stage .carry7` (train-real, dev-real):
#   recipes/realspeech/device_run.sh go MINUTES    # in the background: label, train 4 variants side by
#                                                  # side from $S/model, evaluate them and $S/model, extract
#   recipes/realspeech/device_run.sh go2 MINUTES   # lease 2: from v4, two variants (E: the AR teacher,
#                                                  # C: own predictions), evaluated side by side
#   recipes/realspeech/device_run.sh poll SECONDS  # wait (until /tmp/out/DONE), then show progress
#   recipes/realspeech/device_run.sh fetch OUT X   # the records, and variant X's delta, into OUT
set -e
S=/tmp/stage
REPO=$(cd "$(dirname "$0")/../.." && pwd)
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
case $1 in
go|go2)
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $S/whl/*.whl
  rm -rf /tmp/repo/whisfusion_cli /tmp/repo/recipes && mkdir -p /tmp/repo /tmp/out
  cp -r "$REPO"/whisfusion_cli "$REPO"/recipes /tmp/repo/
  cd /tmp/repo && setsid nohup bash recipes/realspeech/device_run.sh ${1/go/lease} "$2" > /tmp/lease.log 2>&1 < /dev/null &
  sleep 75; tail -n 4 /tmp/lease.log /tmp/run?.log 2>/dev/null ;;
lease2)
  cd /tmp/repo
  python3 recipes/realspeech/label.py $S/train-real $S/model /tmp/labels --parts labelled --batch 32
  R="--real /tmp/labels/labelled/manifest.jsonl $S/train-real/unlabelled/labels.jsonl --real-share 0.25 --specaug"
  T="recipes/synthetic/stream_train.py --data /tmp/synth --init $S/model --minutes $2 --stage1-frac 0.5 \
     --lr 7e-5 --lr2 4e-5 --fresh 0.5 --join 0.3 $R"
  # lease 2 started G (this recipe alone) and H (--own 0.5 --distill 0.5) beside these two as well; four
  # trainers ran at ~1 step/s each, so G and H were stopped after 1.6 minutes (not measured)
  python3 $T --distill 0.5 --out /tmp/runE > /tmp/runE.log 2>&1 &                     # + the AR teacher
  python3 $T --own 0.5 --out /tmp/runC > /tmp/runC.log 2>&1 &                         # + own predictions (v5)
  wait
  E="recipes/synthetic/device_eval.py --data /tmp/synth --splits test_voices val --limit 128 \
     --manifest $S/dev-real/manifest.jsonl"
  for x in E C; do cp $S/model/rescorer-* /tmp/run$x/model/; cp /tmp/run$x/log.jsonl /tmp/out/train_log_$x.jsonl; done
  for x in E C; do  # one evaluation at a time per model, the two models side by side
    { python3 $E --models /tmp/run$x/model --settings fast balanced --out /tmp/out/eval_$x.json > /tmp/eval_$x.log 2>&1
      python3 $E --models /tmp/run$x/model --settings accurate --batch 1 --sets devreal-native long-native devreal-so \
        --out /tmp/out/eval_${x}_acc.json >> /tmp/eval_$x.log 2>&1; } &
  done
  wait
  touch /tmp/out/DONE ;;
lease)
  cd /tmp/repo
  # speechocean762 prompts in Whisper's spelling where its greedy text says the same words (GPU, ~1 min)
  python3 recipes/realspeech/label.py $S/train-real $S/model /tmp/labels --parts labelled --batch 32
  R="--real /tmp/labels/labelled/manifest.jsonl $S/train-real/unlabelled/labels.jsonl --real-share 0.25 --specaug"
  T="recipes/synthetic/stream_train.py --data /tmp/synth --init $S/model --minutes $2 --stage1-frac 0.5 \
     --lr 7e-5 --lr2 4e-5 --fresh 0.5 --join 0.3"
  python3 $T --out /tmp/runA > /tmp/runA.log 2>&1 &                                   # long windows
  python3 $T $R --out /tmp/runB > /tmp/runB.log 2>&1 &                                # + real speech
  python3 $T $R --own 0.5 --out /tmp/runC > /tmp/runC.log 2>&1 &                     # + own predictions
  python3 $T $R --own 0.5 --freeze-cross --out /tmp/runD > /tmp/runD.log 2>&1 &      # + cross-attention kept
  wait
  E="recipes/synthetic/device_eval.py --data /tmp/synth --splits test_voices val --limit 128 \
     --manifest $S/dev-real/manifest.jsonl"
  for x in A B C D; do cp $S/model/rescorer-* /tmp/run$x/model/; done
  for x in v3 A B C D; do
    m=/tmp/run$x/model; [ $x = v3 ] && m=$S/model
    extra=""; [ $x = v3 ] && extra="accurate-verify1"
    { python3 $E --models $m --settings fast balanced $extra --out /tmp/out/eval_$x.json > /tmp/eval_$x.log 2>&1
      python3 $E --models $m --settings accurate --batch 1 --out /tmp/out/eval_${x}_acc.json >> /tmp/eval_$x.log 2>&1; } &
  done
  wait
  for x in A B C D; do cp /tmp/run$x/log.jsonl /tmp/out/train_log_$x.jsonl; done
  touch /tmp/out/DONE ;;
poll)
  for _ in $(seq "$2"); do [ -e /tmp/out/DONE ] && break; sleep 1; done
  tail -n 2 /tmp/lease.log /tmp/run?.log /tmp/eval_*.log 2>/dev/null | cut -c1-400; tail -n 1 /tmp/synth.log
  wc -l /tmp/synth/progress.jsonl
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv ;;
fetch)
  mkdir -p "$2" && cd /tmp/out && tar cf "$2"/records.tar *.json *.jsonl && ls -la "$2"
  # one tar per variant: a call brings back few files (8) and ~64 MB in all, so one variant's delta per call
  [ -z "$3" ] || { cd /tmp/repo && python3 recipes/synthetic/delta.py extract /tmp/run$3/model /tmp/delta$3 \
    && tar cf "$2"/delta$3.tar -C /tmp/delta$3 .; } ;;
esac

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
# The second run (going on from the bundled model on fresh texts; .carry1-5 from pack_carries.sh):
#   recipes/synthetic/device_run.sh synth2 [N]     # 14 workers, text stream N (2), the same held-out sets
#   recipes/synthetic/device_run.sh go-on MINUTES [before]  # train from $S/model, then evaluate + extract by
#                                                  # itself; `before`: evaluate $S/model too (runs 3-4 did)
#   recipes/synthetic/device_run.sh poll SECONDS   # as above, until /tmp/out/DONE
#   recipes/synthetic/device_run.sh fetch OUT      # the records and the delta into OUT
# Beside them: the CUDA-only tests, and the benches of the staged model (random weights of its shape, then
# its real weights on the 4 real clips, verification included) into OUT:
#   recipes/synthetic/device_run.sh cudatest
#   recipes/synthetic/device_run.sh bench OUT
set -e
S=/tmp/stage
REPO=$(cd "$(dirname "$0")/../.." && pwd)
py() { PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 python3 "$@"; }
start_synth() {  # WORKERS SECONDS [make_dataset.py options]: unpack the voices, start rendering, wait, show
  python3 $S/unpack_debs.py $S/debs /tmp/tts > /tmp/unpack.log
  export TTS_PREFIX=/tmp/tts && . $S/tts-env.sh
  rm -rf /tmp/repo && mkdir /tmp/repo && cp -r "$REPO"/whisfusion_cli "$REPO"/recipes /tmp/repo/
  cd /tmp/repo
  setsid nohup python3 recipes/synthetic/make_dataset.py --books $S/books.txt.xz --sources $S/SOURCES.md \
    --out /tmp/synth --hours 150 --val-hours 0.2 --test-hours 0.4 --seed 0 --workers "$1" --format wav \
    --voices rhvoice festival pico flite espeak-ng --eval-transcripts $S/evaltrans "${@:3}" \
    > /tmp/synth.log 2>&1 < /dev/null &
  sleep "$2"; cat /tmp/synth.log; wc -l /tmp/synth/progress.jsonl
}
case $1 in
stage)
  mkdir -p $S && cp -r "$2"/. $S/ && du -sh $S ;;
synth)
  start_synth 12 45 ;;
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
synth2)
  start_synth 14 20 --text-stream "${2:-2}" ;;
go-on)
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $S/whl/*.whl
  rm -rf /tmp/repo/whisfusion_cli /tmp/repo/recipes && cp -r "$REPO"/whisfusion_cli "$REPO"/recipes /tmp/repo/
  cd /tmp/repo && mkdir -p /tmp/out
  export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
  E="recipes/synthetic/device_eval.py --data /tmp/synth --splits test_voices val --npy $S/real --limit 128"
  setsid nohup bash -c "python3 recipes/synthetic/stream_train.py --data /tmp/synth --init $S/model \
      --out /tmp/runB --minutes $2 --stage1-frac 0.5 --lr 7e-5 --lr2 4e-5 --fresh 0.5 --snapshot-minutes 8 \
    && cp $S/model/rescorer-* /tmp/runB/model/ \
    && python3 $E --models /tmp/runB/model --settings fast accurate accurate-trust0 accurate-verify0.3 accurate-verify1 fast-verify0.5 \
      greedy-1step --out /tmp/out/eval_go_on.json && { [ -z \"$3\" ] || python3 $E --models $S/model --settings fast accurate \
      --out /tmp/out/eval_before.json; } && python3 recipes/synthetic/delta.py extract /tmp/runB/model /tmp/out/delta; \
    cp /tmp/runB/log.jsonl /tmp/out/train_log.jsonl; touch /tmp/out/DONE" > /tmp/runB.log 2>&1 < /dev/null &
  sleep 45; tail -n 3 /tmp/runB.log ;;
cudatest)
  cd "$REPO" && PYTHONPATH="$REPO":/tmp/site python3 -m pytest -q -m requires_cuda -p no:cacheprovider --continue-on-collection-errors tests 2>&1 | tail -n 25 ;;
bench)
  mkdir -p "$2" && cd "$REPO" && export PYTHONPATH="$REPO":/tmp/site
  python3 benchmarks/bench_gpu.py --shape-of $S/model --variants graphs --long-form 10 --out "$2/shape"
  python3 benchmarks/bench_real.py --model $S/model --clips $S/real --out "$2/bench_real.json" ;;
fetch)
  mkdir -p "$2" && cp -r /tmp/out/. "$2"/ && ls -la "$2" ;;
poll)
  for _ in $(seq "$2"); do [ -e /tmp/out/DONE ] && break; sleep 1; done; tail -n 4 /tmp/run?.log; tail -n 2 /tmp/synth.log; wc -l /tmp/synth/progress.jsonl
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

#!/usr/bin/env bash
# Pretrain on one machine with several GPUs.
#
#   launch/multi_gpu.sh configs/ceph.py runs/ceph --config.data.dir=/data/ISBI2015
#   PROCESSES=4 launch/multi_gpu.sh configs/ceph.py runs/ceph ...   # one process per GPU
#
# By default one process drives every GPU it sees (jax.devices()): the batch is split over them
# and nothing else is needed. With PROCESSES=N, N processes are started, process i seeing GPU i
# only, joined through jax.distributed on localhost (PORT, default 12355); each reads its own
# share of every batch. config.train.batch_size must be a multiple of the number of GPUs.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: [PROCESSES=N] $0 CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
processes=${PROCESSES:-1}
if [ "$processes" -le 1 ]; then
  exec python -m piaug.main --config="$config" --workdir="$workdir" "$@"
fi
port=${PORT:-12355}
pids=()
for ((i = 0; i < processes; i++)); do
  CUDA_VISIBLE_DEVICES=$i python -m piaug.main --config="$config" --workdir="$workdir" \
    --coordinator="localhost:$port" --num_processes="$processes" --process_id="$i" "$@" &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' INT TERM  # pre-emption: every process saves, exits
status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit $status

#!/usr/bin/env bash
# Pretrain on a Cloud TPU VM slice (e.g. v4-32: 4 hosts), one process per host.
#
#   TPU_NAME=my-slice ZONE=us-central2-b REPO=~/piaug \
#     launch/tpu_vm.sh configs/ceph.py /mnt/shared/runs/ceph --config.data.dir=/mnt/shared/ISBI2015
#
# Runs the same command on every worker of the slice through gcloud; jax.distributed.initialize()
# finds the slice's hosts by itself (--distributed). Each worker needs the repository at REPO
# with piaug installed (pip install -e . with jax[tpu]), and WORKDIR, the dataset and the
# prepared-data cache (PIAUG_CACHE) on storage that every host sees (NFS, Filestore, a gcsfuse
# mount): process 0 writes the workdir and builds the prepared dataset, the others read them.
set -euo pipefail
if [ $# -lt 2 ] || [ -z "${TPU_NAME:-}" ] || [ -z "${ZONE:-}" ]; then
  echo "usage: TPU_NAME=NAME ZONE=ZONE [REPO=DIR] [PIAUG_CACHE=DIR] $0 CONFIG WORKDIR [overrides]" >&2
  exit 2
fi
config=$1 workdir=$2
shift 2
repo=${REPO:-'~/piaug'}  # expanded on the workers
cache=${PIAUG_CACHE:-$(dirname "$workdir")/piaug_cache}  # beside the workdir, on shared storage
overrides=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command \
  "cd $repo && PIAUG_CACHE=$cache python -m piaug.main --config=$config --workdir=$workdir --distributed$overrides"

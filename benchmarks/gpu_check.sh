#!/usr/bin/env bash
# The GPU check: one prepared command that a machine with an accelerator runs in under 10
# minutes. One JSON line per measurement:
#   1. the train step at the paper's settings (384 x 384, 64 x 64 crops, batch 8, full width)
#      in float32 and in bfloat16 (mixed precision), with the VGG19-backbone reference;
#   2. the entropy benchmark (IIE maps of ceph-sized images, against scikit-image's filter);
#   3. the detector's step at the authors' TPL settings (384 x 384, full width, 3 images and
#      the template a step);
#   4. the train step of the from-scratch recipe for GPUs (configs/ceph.py:scratch: 384 x 384,
#      full width, batch norm, 8 images of two 256 x 256 crops with 64 anchors each);
#   5. the step's device memory before it runs (XLA's memory_analysis on this GPU) for the
#      paper's config and the scratch preset at batches 8, 16 and 32.
# The paper's whole ceph schedule is 82,500 steps of batch 8 (660,000 samples): under 30
# minutes needs at least 370 samples/s.
#
#   bash benchmarks/gpu_check.sh            # the paper's settings
#   PIAUG_GPU_CHECK_TINY=1 bash benchmarks/gpu_check.sh   # a tiny size: checks the script on a CPU
#
# Install JAX for the GPU first: pip install -e '.[cuda]'
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
if [[ "${PIAUG_GPU_CHECK_TINY:-0}" == "1" ]]; then
  step=(--image-size 64 --crop-size 32 --batch 2 --width-mult 0.0625 --steps 2)
  entropy=(--size 64 --batch 2 --repeats 1 --skip-skimage-batch)
  detect=(--image-size 64 --width-mult 0.0625 --batch 2 --landmarks 3 --steps 2)
  scratch=(--config configs/test.py:scratch --width-mult 0.0625 --batch 2 --anchors 4 --steps 2)
  memory=(--configs configs/test.py --batches 2)  # (the scratch preset is full width)
  # the tiny run checks the script, not the figures: no reference programs and the paper's
  # step in bfloat16 only (the scratch step below runs float32), so that its test stays short
  reference=(--no-reference)
  dtypes=(bfloat16)
else
  step=(--image-size 384 --crop-size 64 --batch 8 --width-mult 1 --steps 20)
  entropy=(--size 384 --batch 16 --repeats 3)
  detect=(--image-size 384 --width-mult 1 --batch 3 --template --steps 20)
  scratch=(--config configs/ceph.py:scratch --steps 10)
  memory=(--configs configs/ceph.py configs/ceph.py:scratch --batches 8,16,32)
  reference=()
  dtypes=(float32 bfloat16)
fi
$PY -c 'import jax, json; d = jax.devices(); print(json.dumps({"benchmark": "devices", "platform": d[0].platform, "device_kind": d[0].device_kind, "count": len(d), "jax": jax.__version__}))'
for dtype in "${dtypes[@]}"; do
  $PY benchmarks/train_step.py "${step[@]}" --dtype "$dtype" "${reference[@]}"
done
$PY benchmarks/entropy.py "${entropy[@]}"
$PY benchmarks/detector_step.py "${detect[@]}"
$PY benchmarks/train_step.py "${scratch[@]}" --no-reference
$PY benchmarks/memory.py "${memory[@]}" --check  # (no configs: the predictions alone)

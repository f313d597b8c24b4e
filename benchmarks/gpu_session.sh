#!/usr/bin/env bash
# All GPU checks of medssl in one command, for a short lease on a CUDA machine whose Python
# already has torch, triton, timm and lightning (medssl's other needs may come as wheels):
#
#   bash benchmarks/gpu_session.sh [WHEEL_DIR]
#
# 1. correctness of the Triton loss kernels (gpu_check_kernels.py), 2. the loss-head
# benchmark with a tile sweep and a per-kernel profile (gpu_loss_head.py), 3. augmentation
# throughput (gpu_augment.py), 4. RAD-DINO training throughput (gpu_train_throughput.py).
# Each part has its own time limit, so one slow or failing part does not hide the others.
# Logs go to $OUT (or ./gpu-logs) as well as to the terminal.
set -u
cd "$(dirname "$0")/.."
LOGS="${OUT:-gpu-logs}"
mkdir -p "$LOGS"
if [ -n "${1:-}" ] && ls "$1"/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/medssl-site "$1"/*.whl || exit 1
  export PYTHONPATH="/tmp/medssl-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

part() {  # part NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0))s"
}

part check_kernels 120 python3 benchmarks/gpu_check_kernels.py
part loss_head 180 python3 benchmarks/gpu_loss_head.py --iters 10 \
  --triton-tiles "${TILES:-64x64w4s3,128x64w4s3,64x128w8s3,128x128w8s2,128x64w8s4,256x64w8s2}" --profile
[ -n "${SKIP_AUGMENT:-}" ] || part augment 60 python3 benchmarks/gpu_augment.py --batch 256 --iters 10
[ -n "${SKIP_AUGMENT:-}" ] || part augment_rad_dino 60 python3 benchmarks/gpu_augment.py --policy rad_dino_cxr --channels 1 --batch 256 --iters 10
part train_throughput 180 python3 benchmarks/gpu_train_throughput.py --batch-size 40 \
  --steps 10 --warmup 3

#!/usr/bin/env bash
# Every GPU check in one pass, for a lent GPU machine with torch already installed (run
# from the repository root, nothing installed). Results go to $OUT (default ./gpu_out):
# gpu.txt (device, versions), pytest.log (the whole suite with CUDA present),
# gpu_speed.log and fisher.log (benchmarks).
#
#   OPEN_LTH_TEST_DATA=<folder laid out like ../shared/data> bash benchmarks/gpu_checks.sh [suite] [speed] [fisher]
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
DATA=${OPEN_LTH_TEST_DATA:-../shared/data}
export OPEN_LTH_TEST_DATA=$DATA PYTHONUNBUFFERED=1 OPEN_LTH_OFFLINE=1
PY=${PYTHON:-python3}
steps=${*:-suite speed fisher}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
    nproc
} >"$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

for step in $steps; do
    start=$(date +%s)
    case $step in
    suite)
        # xdist where it is installed; two threads a worker so the workers share the cores.
        workers=$($PY -c "import xdist" 2>/dev/null && echo "-n 8")
        OMP_NUM_THREADS=2 timeout 200 $PY -m pytest -q $workers -p no:cacheprovider -rfEs \
            >"$OUT/pytest.log" 2>&1
        tail -40 "$OUT/pytest.log"
        ;;
    speed)
        timeout 240 $PY benchmarks/gpu_speed.py --dataset_root="$DATA" 2>&1 | tee "$OUT/gpu_speed.log"
        ;;
    fisher)
        timeout 120 $PY benchmarks/fisher_speed.py --model=cifar_resnet_20 --device=cuda \
            --dataset_root="$DATA/cifar10-subset" --examples=4000 2>&1 | tee "$OUT/fisher.log"
        ;;
    esac
    echo "== $step: $(($(date +%s) - start)) s"
done

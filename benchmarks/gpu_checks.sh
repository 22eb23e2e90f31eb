#!/usr/bin/env bash
# Every GPU check in one pass, for a lent GPU machine with torch already installed (run
# from the repository root, nothing installed). Results go to $OUT (default ./gpu_out):
# gpu.txt (device, versions), pytest.log (the whole suite with CUDA present),
# gpu_speed.log, fisher.log, pack_speed.log, pack_probe.log, compile.log, streams.log,
# sweep_level.log and gem_miner.log (benchmarks); `tests` runs only the test files in $GPU_TESTS
# (tests.log; default: the GPU step's, the packs' and the lanes' tests).
#
#   OPEN_LTH_TEST_DATA=<folder laid out like ../shared/data> bash benchmarks/gpu_checks.sh \
#       [suite] [tests] [speed] [fisher] [packs] [probe] [sweep] [compile] [streams] [imagenet]
#       [gem_miner]
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

# A probe for the packs the issues measure: 16 LeNets and 8 ResNet-20s.
each_pack() {
    local script=$1 limit=$2 log=$3 spec
    for spec in "mnist_lenet_300_100 16" "cifar_resnet_20 8"; do
        set -- $spec
        timeout "$limit" $PY "$script" --dataset_root="$DATA" --model="$1" --k="$2" \
            2>&1 | tee -a "$OUT/$log"
    done
}

for step in $steps; do
    start=$(date +%s)
    case $step in
    suite)
        # xdist where it is installed; two threads a worker so the workers share the cores.
        workers=$($PY -c "import xdist" 2>/dev/null && echo "-n 8")
        OMP_NUM_THREADS=2 timeout 300 $PY -m pytest -q $workers -p no:cacheprovider -rfEs \
            >"$OUT/pytest.log" 2>&1
        tail -40 "$OUT/pytest.log"
        ;;
    tests)
        # Default: the files of the GPU step, packs and lanes.
        tests=${GPU_TESTS:-tests/test_train_step.py tests/test_pack.py tests/test_lanes.py}
        OMP_NUM_THREADS=4 timeout 240 $PY -m pytest -q -p no:cacheprovider -rfEs $tests \
            >"$OUT/tests.log" 2>&1
        tail -30 "$OUT/tests.log"
        ;;
    packs)
        timeout 240 $PY benchmarks/pack_speed.py --dataset_root="$DATA" --rounds=3 --lenet_steps=1000 \
            --resnet_steps=160 ${PACK_FLAGS:-} 2>&1 | tee -a "$OUT/pack_speed.log"
        ;;
    probe)
        # Where a pack's step goes: replay alone against the trainer, and its kernels.
        each_pack benchmarks/pack_probe.py 120 pack_probe.log
        ;;
    sweep)
        # One pack of the LeNet study at its own settings (replicate 1: three strategies,
        # reset and re-init), levels 0 and 1: the time of a level, to extrapolate from.
        root=$(mktemp -d)
        timeout 150 $PY experiments/lenet_fisher_vs_magnitude.py \
            --replicates=1 --levels=1 --root="$root" --dataset_root="$DATA" --pack=6 \
            >"$OUT/sweep_level.log" 2>&1
        tail -5 "$OUT/sweep_level.log"
        $PY benchmarks/level_times.py "$root" | tee -a "$OUT/sweep_level.log"
        ;;
    streams)
        # K runs as K networks on K streams of one graph, against stacked (replay alone).
        each_pack benchmarks/streams_probe.py 150 streams.log
        ;;
    compile)
        # ResNet-20 with graphs + torch.compile under a mode that autotunes convolutions.
        timeout 400 $PY benchmarks/resnet_step_probe.py --dataset_root="$DATA/cifar10-subset" \
            --parts=compile --compile_mode=${COMPILE_MODE:-max-autotune-no-cudagraphs} \
            2>&1 | tee -a "$OUT/compile.log"
        ;;
    speed)
        timeout 240 $PY benchmarks/gpu_speed.py --dataset_root="$DATA" 2>&1 | tee "$OUT/gpu_speed.log"
        ;;
    fisher)
        timeout 120 $PY benchmarks/fisher_speed.py --model=cifar_resnet_20 --device=cuda \
            --dataset_root="$DATA/cifar10-subset" --examples=4000 2>&1 | tee "$OUT/fisher.log"
        # Issue 22: ResNet-50's Fisher peak against a training step's, and one global prune
        # of its 25.5M scores without (lowest_positions) and with the float64 copy and sort.
        timeout 240 $PY benchmarks/fisher_memory.py --device=cuda --examples=32 2>&1 | tee -a "$OUT/fisher.log"
        timeout 120 $PY benchmarks/select_memory.py --device=cuda 2>&1 | tee -a "$OUT/fisher.log"
        ;;
    imagenet)
        # Issue 22: nvJPEG's crops against Pillow's (CUDA and torchvision>=0.19 present),
        # then ResNet-50 at batch 256 fed by a DataLoader, this pipeline from files and
        # from shards, and random tensors (the ceiling). IMAGENET_IMAGES: JPEGs written.
        $PY -c "import torchvision; print('torchvision', torchvision.__version__)" \
            >"$OUT/imagenet.log" 2>&1
        OMP_NUM_THREADS=4 timeout 120 $PY -m pytest -q -p no:cacheprovider -rfEs \
            tests/test_decoders.py >>"$OUT/imagenet.log" 2>&1
        timeout 420 $PY benchmarks/imagenet_speed.py --images=${IMAGENET_IMAGES:-4096} \
            2>&1 | tee -a "$OUT/imagenet.log"
        ;;
    gem_miner)
        # Issue 20 item 5: the search's CUDA-graph test, then the released ResNet-20
        # search's steady state, eager against graphed, in minutes (target: under 4).
        OMP_NUM_THREADS=4 timeout 120 $PY -m pytest -q -p no:cacheprovider -rfEs \
            tests/test_gem_miner.py -k graph >"$OUT/gem_miner.log" 2>&1
        timeout 300 $PY benchmarks/gem_miner_speed.py --dataset_root="$DATA" \
            2>&1 | tee -a "$OUT/gem_miner.log"
        ;;
    esac
    echo "== $step: $(($(date +%s) - start)) s"
done

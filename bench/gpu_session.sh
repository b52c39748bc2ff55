#!/usr/bin/env bash
# Every GPU check in one pass, for a machine with a CUDA GPU (README, "GPU").
#
#   bench/gpu_session.sh OUT_DIR [DATA_DIR]
#
# 1. tests/test_gpu.py: CUDA training (bf16 autocast for the metric learners) against CPU
#    for each meta-learner, checkpoints across devices, the second-order meta-gradient, fused scoring.
# 2. bench/bench_train.py: seconds per meta-training step, CPU vs CUDA, same process.
# 3. bench/bench_maml.py and bench/bench_adapt.py on CUDA.
# 4. bench/gpu_unseen_check.py: Tennessee Eastman's unseen-type benchmark (triplet, proto,
#    seeds 1-5, 20 episodes) trained on the GPU, to set beside the CPU run (README run9T).
# Each step has its own time limit, so one that hangs costs only its own share. Needs torch
# with CUDA, pytest, scipy, scikit-learn, pandas, pyyaml, tqdm and numba; bench_maml needs
# `higher`. MLflow, Prefect, DVC, Great Expectations and catboost are not used.
set -uo pipefail
OUT=${1:?usage: bench/gpu_session.sh OUT_DIR [DATA_DIR]}
DATA=${2:-../shared/datasets}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
step() { echo; echo "=== $1 ($(date -u +%T))"; }
{
  step "machine"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nproc
  step "tests/test_gpu.py"
  timeout 200 $PY -m pytest -q -s -p no:cacheprovider -rs tests/test_gpu.py
  step "bench_train (CPU 8 threads vs CUDA)"
  timeout 100 $PY bench/bench_train.py --threads 8 --steps 5 15
  step "bench_maml (CUDA)"
  timeout 45 $PY bench/bench_maml.py --device cuda --steps 20 --no-compile
  step "bench_adapt (CUDA)"
  timeout 25 $PY bench/bench_adapt.py --device cuda --repeats 200
  step "unseen-type benchmark on the GPU: tep, triplet + proto, seeds 1-5, 20 episodes"
  timeout 150 $PY bench/gpu_unseen_check.py --data-dir "$DATA" --dataset tep \
    --methods triplet,proto --seeds 1 2 3 4 5 --n-episodes 20 --out "$OUT/tep"
  step "done"
} 2>&1 | tee "$OUT/log.txt"

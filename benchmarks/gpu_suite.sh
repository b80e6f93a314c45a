#!/usr/bin/env bash
# The GPU benchmark suite in one command: one table of training, 256x256 and sampling throughput and peak memory,
# within 8 minutes on one GPU (benchmarks/gpu_suite.py says what each row is).
#   bash benchmarks/gpu_suite.sh                        # on a GPU machine
#   bash benchmarks/gpu_suite.sh --cpu                  # small, on the CPU (what tests/test_gpu_suite.py runs)
#   bash benchmarks/gpu_suite.sh --json results.json    # also the rows as JSON
set -euo pipefail
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1  # everything is synthetic: never wait on a network
# fewer fragmentation failures while the 256x256 section doubles the batch up to the memory limit
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
exec python "$(dirname "$0")/gpu_suite.py" "$@"

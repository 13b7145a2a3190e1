#!/usr/bin/env bash
# The GPU check (see benchmarks/gpu_check.py): CUDA tests, a short MNIST run scored on 10,000 samples, and the
# ImageNet-9 64 px preset's speed and memory; one table, JSON in benchmarks/results/. Under 8 minutes on one GPU.
#   bash benchmarks/gpu_check.sh --data-root /path/to/mnist
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"

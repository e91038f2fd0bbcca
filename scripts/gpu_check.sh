#!/usr/bin/env bash
# The prepared GPU check of the engine at the paper's scale: ResNet-9 (metasmooth config),
# batch 512, CIFAR-shaped synthetic data, T = 1,000, with memory_budget = 80 GiB (an H100's
# memory; the H200 has more). Prints plain training's time, the default metagradient's time
# (ratio "x train"), the policy and leaf mode chosen, the estimated peak (mgd.estimate_memory)
# and the measured peak_bytes_in_use with their ratio. Needs a GPU and about 8 minutes;
# everything is killed at 470 s so that a second try fits a 15-minute lease.
#
#   bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
timeout --signal=INT --kill-after=10 470 \
    python scripts/bench_resnet9.py --steps 1000 --batch-size 512 --repeats 1 --memory-budget 80

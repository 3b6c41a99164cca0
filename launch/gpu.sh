#!/usr/bin/env bash
# Train on a GPU box (one or more NVIDIA GPUs on one host).
#   bash launch/gpu.sh [PRESET] [WORKDIR] [extra --config.* overrides]
# e.g. bash launch/gpu.sh default runs/default --config.train.steps=50000
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-default}"
workdir="${2:-runs/$preset}"
shift $(( $# > 2 ? 2 : $# ))
pip install -e ".[gpu]"
# Let XLA take GPU memory as it needs it instead of 75% up front (friendlier on shared boxes).
export XLA_PYTHON_CLIENT_PREALLOCATE=false
python -m ban_jax.main --config="configs/wiki.py:$preset" --workdir="$workdir" \
  --config.model.dtype=bfloat16 "$@"

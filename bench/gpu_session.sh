#!/usr/bin/env bash
# Everything issue 29 times on a lent GPU, in one command under an 8-minute limit:
#   bash bench/gpu_session.sh OUT_DIR [DEADLINE_S]
# bench/attention_pallas.py (checks, the 4k sweep, the presets' shapes, 16k/64k) stops starting
# rows at DEADLINE_S (default 380); bench/train_throughput.py traces and compiles its train steps
# at the same time (host work, in threads), then times them once the attention script is done.
# Each writes its JSON after every row; logs go to OUT_DIR too. TRAIN_RUNS (train_throughput's
# --runs) and ATTENTION_ARGS (more flags of attention_pallas.py) change what runs.
set -uo pipefail
out="${1:?usage: bash bench/gpu_session.sh OUT_DIR [DEADLINE_S]}"
deadline="${2:-380}"
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
# Two processes share the GPU: neither may take JAX's default 75% of its memory.
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.45
runs="${TRAIN_RUNS:-default:xla,default:pallas_two_kernel,default:pallas_fused,ban,transformer}"
python3 bench/train_throughput.py --runs="$runs" \
  --wait_file="$out/attention_done" --deadline_s=$((deadline + 60)) --steps=20 \
  --out="$out/train_throughput_gpu.json" > "$out/train_throughput.log" 2>&1 &
train=$!
python3 bench/attention_pallas.py --deadline_s="$deadline" --done_file="$out/attention_done" \
  --out="$out/attention_gpu.json" ${ATTENTION_ARGS:-} 2>&1 | tee "$out/attention_pallas.log"
wait "$train"
tail -n 20 "$out/train_throughput.log"

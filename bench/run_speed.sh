#!/usr/bin/env bash
# Speed of kvcar's decode attention against its peers, all in ONE run on one GPU:
#   build/bench/decode_bench   kvcar kernels, every codec           -> $out/kvcar.jsonl
#   bench/peers.py             PyTorch SDPA + device-to-device copy -> $out/peers.jsonl
# then bench/speed_report.py turns both into docs/results/speed.md and speed.png.
#
#   bash bench/run_speed.sh [quick|full] [out-dir]
set -euo pipefail
grid=${1:-quick}
out=${2:-bench-out}
mkdir -p "$out"
cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DKVCAR_BUILD_TESTS=OFF -DKVCAR_BUILD_EXAMPLES=OFF \
      -DKVCAR_BUILD_BENCH=ON > "$out/cmake.log"
cmake --build build-bench -j"$(nproc)" --target decode_bench >> "$out/cmake.log"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv > "$out/gpu.txt"
date -u +%Y-%m-%dT%H:%M:%SZ > "$out/date.txt"
pgrid=$([ "$grid" = full ] && echo all || echo quick)
python3 bench/peers.py --shapes "$pgrid" --reps 30 > "$out/peers.jsonl"
build-bench/bench/decode_bench --grid "$grid" --reps 30 > "$out/kvcar.jsonl"
echo "bench: $(wc -l < "$out/kvcar.jsonl") kvcar rows, $(wc -l < "$out/peers.jsonl") peer rows"

#!/usr/bin/env bash
# Speed of kvcar's decode attention against its peers, all in ONE session on one GPU, the sides
# interleaved and repeated (so that drift of the GPU or of a peer shows as spread, not as a
# speed-up):
#   for each of R rounds (the order of the sides rotates every round):
#     build-bench/bench/decode_bench     kvcar kernels, every codec          -> $out/kvcar.jsonl
#     bench/peers.py                     PyTorch SDPA + device-to-device copy -> $out/peers.jsonl
#     build-bench/bench/flashinfer_peer  FlashInfer batch decode (when its headers are there)
#                                                                            -> $out/flashinfer.jsonl
# Every row carries its "round". Then bench/speed_report.py turns them into speed.md / speed.png
# with the median over rounds and the spread (min–max).
#
#   bash bench/run_speed.sh [quick|full] [out-dir] [rounds]
# Environment: REPS (runs per median, 31), MODEL (one model's shapes only, e.g. llama3-8b),
# DEADLINE (seconds: a round starts only if the last round's length still fits before it, so a
# time-limited session ends with whole rounds; unset: all rounds),
# ACTIVATIONS (kvcar's q and out: f32, or f16 / bf16 as a runtime and the fp16 peers hold them; f32),
# CODECS (a space-separated subset of decode_bench's codecs), SIDES (round 1's order),
# BUILD_DIR (reuse that configured build folder instead of configuring build-bench), PREBUILT=1
# (with BUILD_DIR: use its bench binaries as they are).
# FlashInfer's headers: $FLASHINFER_INCLUDE_DIR, else .fi/include (bench/fetch_flashinfer.sh
# unpacks the flashinfer-python wheel there); without them the FlashInfer rows are skipped.
set -euo pipefail
grid=${1:-quick}
out=${2:-bench-out}
rounds=${3:-3}
reps=${REPS:-31}
only=()
[ -n "${MODEL:-}" ] && only=(--model "$MODEL")
acts=(--activations "${ACTIVATIONS:-f32}")
mkdir -p "$out"
fi_inc=${FLASHINFER_INCLUDE_DIR:-}
if [ -z "$fi_inc" ] && [ -f .fi/include/flashinfer/attention/decode.cuh ]; then
  fi_inc=$PWD/.fi/include
fi
targets=(decode_bench)
[ -n "$fi_inc" ] && targets+=(flashinfer_peer)
build=${BUILD_DIR:-build-bench}
if [ -z "${BUILD_DIR:-}" ]; then  # BUILD_DIR: an existing build folder to reuse as it is configured
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DKVCAR_BUILD_TESTS=OFF -DKVCAR_BUILD_EXAMPLES=OFF \
        -DKVCAR_BUILD_BENCH=ON -DFLASHINFER_INCLUDE_DIR="$fi_inc" > "$out/cmake.log"
fi
# PREBUILT=1: the binaries in $BUILD_DIR/bench were built elsewhere (e.g. on a machine without a
# GPU, to spend the GPU machine's time on measuring only); nothing is built here.
if [ "${PREBUILT:-0}" != 1 ]; then
  cmake --build "$build" -j"$(nproc)" --target "${targets[@]}" >> "$out/cmake.log"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem --format=csv > "$out/gpu.txt"
date -u +%Y-%m-%dT%H:%M:%SZ > "$out/date.txt"
git rev-parse --short HEAD > "$out/commit.txt" 2>/dev/null || true
pgrid=$([ "$grid" = full ] && echo all || echo quick)
: > "$out/kvcar.jsonl"; : > "$out/peers.jsonl"; : > "$out/flashinfer.jsonl"
run_side() {
  case $1 in
    kvcar)
      if [ -n "${CODECS:-}" ]; then  # CODECS: a space-separated subset of decode_bench's codecs
        for c in $CODECS; do
          "$build"/bench/decode_bench --grid "$grid" --reps "$reps" --round "$2" "${only[@]}" \
            "${acts[@]}" --codec "$c" >> "$out/kvcar.jsonl"
        done
      else
        "$build"/bench/decode_bench --grid "$grid" --reps "$reps" --round "$2" "${only[@]}" "${acts[@]}" \
          >> "$out/kvcar.jsonl"
      fi ;;
    peers) python3 bench/peers.py --shapes "$pgrid" --reps "$reps" --round "$2" "${only[@]}" >> "$out/peers.jsonl" ;;
    flashinfer)
      if [ -x "$build"/bench/flashinfer_peer ]; then
        "$build"/bench/flashinfer_peer --grid "$grid" --reps "$reps" --round "$2" "${only[@]}" >> "$out/flashinfer.jsonl"
      fi ;;
  esac
}
sides=(${SIDES:-kvcar peers flashinfer})  # SIDES: the order of round 1 (then it rotates)
t_start=$(date +%s); t_round=0
for r in $(seq 1 "$rounds"); do
  t_now=$(date +%s)
  if [ -n "${DEADLINE:-}" ] && [ $(( t_now - t_start + t_round )) -gt "$DEADLINE" ]; then
    echo "round $r not started: the last round took ${t_round} s and DEADLINE=${DEADLINE} s" >&2
    break
  fi
  for i in 0 1 2; do
    side=${sides[$(( (i + r - 1) % 3 ))]}
    echo "round $r: $side" >&2
    run_side "$side" "$r" || echo "round $r: $side failed (rc $?); its rows so far are kept" >&2
  done
  t_round=$(( $(date +%s) - t_now ))
  echo "round $r took ${t_round} s" >&2
done
echo "bench: $(wc -l < "$out/kvcar.jsonl") kvcar rows, $(wc -l < "$out/peers.jsonl") peer rows," \
     "$(wc -l < "$out/flashinfer.jsonl") flashinfer rows; checks failed:" \
     "$(grep -c '"check":"FAIL"' "$out/kvcar.jsonl" "$out/flashinfer.jsonl" | tr '\n' ' ')"

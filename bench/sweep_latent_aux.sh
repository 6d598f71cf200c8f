#!/usr/bin/env bash
# Sweeps the tensor-core latent path's projection / lift block shape on one GPU: (item, query
# head) vectors per CTA (4 or 16) x rows of P_h per lift warp (1, 2, 4), against the planner's
# own choice, for the whole-layer latent codecs of a Llama-3-8B-like layer, batches 1-64,
# contexts 512-32k. Rows are decode_bench's, each tagged with a "side" (auto, v4r1, ... v16r4),
# the sides interleaved round by round; ab_report.py then gives each side's time over auto's.
#
#   bash bench/sweep_latent_aux.sh DECODE_BENCH OUT_DIR [rounds]
#
# Why: the rewrite that made the projection and the lift per KV head (2026-12-07) made batch 8
# 1.03-1.27x faster and batch 64 up to 16% slower on an H100, and its choice of block shape
# (latent_tc_aux.cuh: vectors_per_block, lift_rows_per_warp) was never measured
# (docs/results/decode-ab-2026-12-07.md). Environment: CODECS, BATCHES, MODEL (llama3-8b), REPS (11).
set -euo pipefail
bench=${1:?usage: bash bench/sweep_latent_aux.sh DECODE_BENCH OUT_DIR [rounds]}
out=${2:?usage: bash bench/sweep_latent_aux.sh DECODE_BENCH OUT_DIR [rounds]}
rounds=${3:-1}
[ -x "$bench" ] || { echo "sweep_latent_aux.sh: $bench is not an executable decode_bench" >&2; exit 2; }
mkdir -p "$out"
codecs=${CODECS:-linear-layer-d/2 linear-layer-d/2-int8 linear-layer-d/4}
batches=${BATCHES:-1 8 32 64}
sides=(auto v4r1 v4r2 v4r4 v16r1 v16r2 v16r4)
tag() { python3 -c 'import sys,json; [print(json.dumps({**json.loads(l), "side": sys.argv[1]})) for l in sys.stdin if l.startswith("{")]' "$1"; }
: > "$out/sweep.jsonl"
for r in $(seq 1 "$rounds"); do
  n=${#sides[@]}
  for i in $(seq 0 $((n - 1))); do
    side=${sides[$(( (i + r - 1) % n ))]}  # the order rotates every round
    knobs=()
    if [ "$side" != auto ]; then
      v=${side#v}; v=${v%r*}; rows=${side#*r}
      knobs=(--latent-aux-vectors "$v" --latent-lift-rows "$rows")
    fi
    for c in $codecs; do
      for b in $batches; do
        "$bench" --grid full --model "${MODEL:-llama3-8b}" --codec "$c" --batch "$b" --activations f16 \
          --reps "${REPS:-11}" --check-seconds 0.02 --round "$r" "${knobs[@]}" | tag "$side" >> "$out/sweep.jsonl"
      done
    done
  done
  echo "round $r done $(date -u +%T)" >&2
done
python3 "$(dirname "$0")/ab_report.py" "$out/sweep.jsonl" --base auto --md "$out/sweep.md" | head -n 12

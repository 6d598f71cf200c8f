#!/usr/bin/env bash
# Where one decode step's GPU time goes, kernel by kernel: Nsight Compute over decode_bench for
# each shape given, then the median duration, DRAM and SM throughput and achieved occupancy of
# every kernel (bench/ncu_kernels.py). ncu runs kernels one at a time with nothing overlapped,
# so the sum is the step's GPU work without the overlap of dependent launches; decode_bench's
# own time (its "ms", from a CUDA graph) is the step as it runs.
#   bash bench/ncu_decode.sh OUT-DIR codec:model:batch:context [...]
#   e.g. bash bench/ncu_decode.sh ncu-out linear-layer-d/2:llama3-8b:1:512 identity-f16:llama3-8b:1:512
# Environment: BUILD_DIR (build-bench), ACTIVATIONS (f16), REPS (5), NCU (ncu).
set -euo pipefail
out=$1
shift
build=${BUILD_DIR:-build-bench}
ncu=${NCU:-ncu}
mkdir -p "$out"
# decode_bench's arguments for one shape "codec:model:batch:context[:...]" and the file tag of it.
shape_args() {
  IFS=: read -r codec model batch context kernel <<< "$1"
  tag=$(echo "${codec}_${model}_B${batch}_L${context}" | tr '/' '_')
  args=(--grid full --codec "$codec" --model "$model" --batch "$batch" --context "$context"
        --activations "${ACTIVATIONS:-f16}")
}
metrics=gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed
metrics+=,sm__throughput.avg.pct_of_peak_sustained_elapsed,sm__warps_active.avg.pct_of_peak_sustained_active
metrics+=,launch__grid_size,launch__block_size
for spec in "$@"; do
  shape_args "$spec"
  args+=(--reps "${REPS:-5}")
  # The unprofiled time first (the step as it runs), then the profile of the same shape.
  "$build"/bench/decode_bench "${args[@]}" > "$out/$tag.bench.jsonl"
  "$ncu" --metrics "$metrics" --csv --log-file "$out/$tag.csv" --launch-count 60 \
    --kernel-name "regex:direct|combine|latent|decoded|autoencoder|split|merge|decode|project|lift" \
    "$build"/bench/decode_bench "${args[@]}" > /dev/null
done
python3 "$(dirname "$0")/ncu_kernels.py" "$out"/*.csv > "$out/summary.txt"
cat "$out/summary.txt"
# DETAIL="codec:model:batch:context[:kernel-regex] ...": the stall reasons, scheduler, occupancy and
# memory sections of the first matching kernels of each shape, as ncu prints them ($out/detail-*.txt).
for spec in ${DETAIL:-}; do
  shape_args "$spec"
  "$ncu" --section WarpStateStats --section SchedulerStats --section Occupancy --section LaunchStats \
    --section MemoryWorkloadAnalysis --section SpeedOfLight --kernel-name "regex:${kernel:-split_kernel}" \
    --launch-skip 3 --launch-count 1 \
    "$build"/bench/decode_bench "${args[@]}" --reps 3 > "$out/detail-${kernel:-split_kernel}-$tag.txt" 2>&1 || true
done

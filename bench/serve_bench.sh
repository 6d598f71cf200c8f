#!/usr/bin/env bash
# End-to-end serving throughput at fixed KV memory budgets, one GPU, one run:
#   bench/make_random_serving.py   random bf16 TinyLlama-1.1B- and Llama-3-8B-shaped checkpoints
#                                  and random codec files of their geometry
#   kvcar-serve --device cuda      1000 requests (prompts 512-4096, outputs 128-512, all arriving
#                                  at once) for every codec x budget      -> $out/serve-*.jsonl
# then bench/serve_report.py turns the JSONL into docs/results/serving.md and serving.svg.
#
#   bash bench/serve_bench.sh BUILD_DIR [OUT_DIR]          (OUT_DIR default: $OUT/serve)
#
# Time, measured on one H100 (2026-12-06, the earlier 8/10 s windows): writing the TinyLlama
# checkpoint took 2 s, the 8B one 13 s; the 15 TinyLlama runs took 4.3 min; on the 8B the 10-minute
# call ended during the third codec. Those windows were too short: with every request arriving at
# time 0 they measured the admission burst and its prefill, and throughput fell as the budget grew
# (docs/results/serving.md). The defaults are now windows long enough for the first wave of
# requests to finish and be replaced (a request of ~320 output tokens at 30-60 ms a step takes
# 10-20 s), so the pool is in its steady churn when counting starts: 35 s windows, counting after
# 15 s (TinyLlama), 45 s after 20 s (8B). That is ~10 minutes per shape for five codecs at three
# budgets on TinyLlama, more on the 8B: run one shape per call, and on the 8B a few codecs per call
# (KV=...). Every call appends to serve-<shape>.jsonl in OUT_DIR; gather the calls' files into one
# folder (cat) for bench/serve_report.py. timing.txt records where the time went.
#
# Why windows: the 1000-request trace cannot be served to the end 15 times per shape in a call
# (a request carries ~2.3k prompt tokens on average), so each run serves the trace for
# --max-seconds from the same cold start and reports the generated tokens per second after a
# warm-up (--warmup).
#
# Overrides: SECONDS_TINY / SECONDS_8B, WARMUP_TINY / WARMUP_8B, BUDGETS_TINY / BUDGETS_8B,
# RESERVE (kvcar-serve's --reserve-tokens, admission headroom; default 64), REQUESTS, SHAPES ("tinyllama-1.1b llama3-8b"), KV (a comma list of identity-f16, int8, lin-d2,
# lin-d4-int8, ae-d2; default all five), MODELS (where the checkpoints go; not under OUT_DIR,
# whose files come back from the GPU machine), SERVE_ARGS (more kvcar-serve options, e.g.
# --no-graphs to enqueue decode steps launch by launch instead of replaying CUDA graphs).
#
# Speed does not depend on the weights' values: the checkpoints and codecs are noise, with the
# real shapes, the real kernels and the same bytes per token.
set -euo pipefail
build=${1:?usage: bash bench/serve_bench.sh BUILD_DIR [OUT_DIR]}
out=${2:-${OUT:-.}/serve}
models=${MODELS:-/tmp/kvcar-serve-models}
shapes=${SHAPES:-tinyllama-1.1b llama3-8b}
requests=${REQUESTS:-1000}
codecs=$(echo "${KV:-identity-f16,int8,lin-d2,lin-d4-int8,ae-d2}" | tr ',' ' ')
for name in $codecs; do  # checked before anything is written
  case $name in
    identity-f16|int8|lin-d2|lin-d4-int8|ae-d2) ;;
    *) echo "serve_bench.sh: KV: unknown codec '$name' (identity-f16, int8, lin-d2, lin-d4-int8, ae-d2)" >&2
       exit 2 ;;
  esac
done
mkdir -p "$out" "$models"
stamp() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$out/timing.txt"; }

serve=$build/examples/kvcar-serve
if [ ! -x "$serve" ]; then
  stamp "building kvcar-serve in $build"
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DKVCAR_BUILD_TESTS=OFF \
        -DKVCAR_BUILD_BENCH=OFF > "$out/cmake.log"
  cmake --build "$build" -j"$(nproc)" --target kvcar-serve >> "$out/cmake.log"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem \
  --format=csv > "$out/gpu.txt" || true
date -u +%Y-%m-%dT%H:%M:%SZ > "$out/date.txt"
git rev-parse --short HEAD > "$out/commit.txt" 2>/dev/null || true

for shape in $shapes; do
  m=$models/$shape
  if [ ! -f "$m/model.safetensors" ]; then
    stamp "writing $m"
    python3 bench/make_random_serving.py "$m" --shape "$shape" | tee -a "$out/timing.txt"
  fi
  case $shape in
    tinyllama-1.1b) budgets=${BUDGETS_TINY:-0.5GiB,2GiB,8GiB}; seconds=${SECONDS_TINY:-35}
                    warmup=${WARMUP_TINY:-15} ;;
    llama3-8b)      budgets=${BUDGETS_8B:-2GiB,8GiB,32GiB};   seconds=${SECONDS_8B:-45}
                    warmup=${WARMUP_8B:-20} ;;
    *)              budgets=${BUDGETS:-64MiB}; seconds=${SECONDS_ANY:-5}; warmup=0 ;;
  esac
  c=$m/codecs
  kv=""
  for name in $codecs; do
    case $name in
      identity-f16|int8) kv+="${kv:+,}$name" ;;
      *) kv+="${kv:+,}file:$c/$name.kvc" ;;
    esac
  done
  stamp "serving $shape ($kv): budgets $budgets, $seconds s per run, throughput after $warmup s"
  # One process per model: the checkpoint is read once; each codec gets one session (weights
  # uploaded once) whose pool is the largest budget, and every budget runs on it in turn.
  "$build/examples/kvcar-serve" --model "$m" --device cuda --json \
    --requests "$requests" --seed 0 --prompt-len 512:4096 --output-len 128:512 --rate 0 \
    --chunk 2048 --max-seqs 256 --page-size 16 --max-seconds "$seconds" \
    --warmup "$warmup" --reserve-tokens "${RESERVE:-64}" ${SERVE_ARGS:-} \
    --kv "$kv" --kv-budget "$budgets" >> "$out/serve-$shape.jsonl" 2>> "$out/serve-$shape.log" ||
    stamp "kvcar-serve failed on $shape (see serve-$shape.log)"
  stamp "done $shape: $(wc -l < "$out/serve-$shape.jsonl") results"
done
stamp "all done; report: python3 bench/serve_report.py $out"

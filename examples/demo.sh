#!/usr/bin/env bash
# kvcar's main demo: a real GPT-2 checkpoint (models/gpt2-tiny, shipped in this repository)
# generates text and measures perplexity twice — once with a plain fp16 KV cache, once with a
# compressed one (a linear codec per layer, d = D/4, int8 latents: 6.4x smaller, calibrated with
# kvcar-calibrate and shipped as models/gpt2-tiny/kv-linear-d32-int8.kvc).
#
#   bash examples/demo.sh [build-dir]
set -euo pipefail
build=${1:-build}
cd "$(dirname "$0")/.."
bin=$build/examples
model=models/gpt2-tiny
prompt="The history of the city begins in the"

for kv in identity-f16 "file:$model/kv-linear-d32-int8.kvc"; do
  echo "================ KV cache: $kv ================"
  "$bin/kvcar-generate" --model "$model" --kv "$kv" --prompt "$prompt" --steps 40 --temperature 0
  echo
  "$bin/kvcar-perplexity" --model "$model" --kv "$kv" --text models/wikitext-2-test-excerpt.txt \
    --max-tokens 4096 --quiet
  echo
done

#!/usr/bin/env bash
# Tensor-parallel decode on the GPU machine: kvcar-generate's greedy ids and decode tokens/s with
# the plain one-GPU model and with --tensor-parallel 1, 2, 4 (as many as the machine and the
# model's KV heads allow), batch 1 and 32, for gpt2-tiny, llama-tiny and a random 0.8B Llama
# (bench/make_random_llama.py). Writes one line per run to OUT/tp_runs.tsv (md5 of the printed text: equal
# ids give equal sums) and the tools' reports to OUT/tp_runs.log. Needs a build with CUDA and
# NCCL in BUILD.
#
#   bash bench/run_tensor_parallel.sh BUILD DATA OUT
set -euo pipefail
build=$1 data=$2 out=$3
gen=$build/examples/kvcar-generate
mkdir -p "$out/text"
gpus=$(nvidia-smi -L | wc -l)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpus.txt"
python3 bench/make_random_llama.py "$out/llama-0.8b-random" > "$out/random_model.txt"
cp "$data/tokenizers/gpt2/"* "$out/llama-0.8b-random/"

printf 'model\tkv\tranks\tbatch\tdecode_tokens_per_s\tkv_bytes_per_token_per_gpu\ttext_md5\n' \
  > "$out/tp_runs.tsv"
run() {  # model_dir name kv_heads kv
  local dir=$1 name=$2 kv_heads=$3 kv=$4
  for batch in 1 32; do
    for ranks in 0 1 2 4; do
      [ "$ranks" -le "$gpus" ] || continue
      [ "$ranks" -eq 0 ] || [ $((kv_heads % ranks)) -eq 0 ] || continue
      local log=$out/text/$name-$kv-tp$ranks-b$batch
      "$gen" --model "$dir" --prompt "The history of the city" --steps 64 --temperature 0 \
        --device cuda --kv "$kv" --batch "$batch" --tensor-parallel "$ranks" \
        > "$log.txt" 2> "$log.err"
      local tps bpt
      tps=$(sed -n 's/^generated: .*(\([0-9.]*\) tokens\/s)$/\1/p' "$log.err")
      bpt=$(sed -n 's/.* \([0-9]*\) bytes\/token.*/\1/p' "$log.err" | head -1)
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$kv" "$ranks" "$batch" "$tps" "$bpt" \
        "$(md5sum < "$log.txt" | cut -c1-8)" >> "$out/tp_runs.tsv"
      { echo "== $name $kv ranks $ranks batch $batch"; cat "$log.err"; } >> "$out/tp_runs.log"
    done
  done
}
run "$data/models/gpt2-tiny" gpt2-tiny 4 identity-f16
run "$data/models/gpt2-tiny" gpt2-tiny 4 int8
run "$data/models/llama-tiny" llama-tiny 2 identity-f16
run "$out/llama-0.8b-random" llama-0.8b-random 8 identity-f16
run "$out/llama-0.8b-random" llama-0.8b-random 8 int8
cp "$out/llama-0.8b-random/config.json" "$out/random_model_config.json"
rm -rf "$out/text" "$out/llama-0.8b-random"
cat "$out/tp_runs.tsv"

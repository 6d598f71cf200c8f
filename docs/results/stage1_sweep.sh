#!/usr/bin/env bash
# The stage-1 autoencoder sweep of quality-subset.md ("Why stage 1 stops at its PCA start"): the PCA
# codec, then the autoencoder with its default settings, three learning rates, a long run and a
# run without the PCA start, each printing its per-slot held-out error (stderr) and JSON (stdout).
#   bash docs/results/stage1_sweep.sh BUILD_DIR DATA_DIR OUT_DIR      (~8 min on one core)
set -euo pipefail
B=$1/examples/kvcar-calibrate; D=$2; out=$3; mkdir -p "$out"
common=(--model "$D/models/gpt2-tiny" --tokenizer-dir "$D/tokenizers/gpt2" --threads 1
        --text "$D/wikitext-2/wiki.valid.tokens" --max-tokens 16384 --quiet --json)
"$B" "${common[@]}" --codec linear --group layer --ratio 0.5 --out "$out/pca.kvc" \
  > "$out/pca.json" 2> "$out/pca.err"
for cfg in "default:" "lr1e-5:--lr 1e-5" "lr1e-3:--lr 1e-3" \
           "lr1e-3-long:--lr 1e-3 --epochs 60 --patience 60" \
           "nopca:--no-pca-init --lr 1e-3 --epochs 60 --patience 60"; do
  name=${cfg%%:*}; read -r -a args <<< "${cfg#*:}"
  "$B" "${common[@]}" --codec autoencoder --group layer --ratio 0.5 --train-rows 8192 \
    --epochs 20 "${args[@]}" --out "$out/ae-$name.kvc" > "$out/$name.json" 2> "$out/$name.err"
done

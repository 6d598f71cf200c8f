#!/usr/bin/env bash
# kvcar's main demo: a real GPT-2 checkpoint (models/gpt2-tiny, shipped in this repository)
# generates text and measures perplexity twice — once with a plain fp16 KV cache, once with a
# compressed one (a linear codec per layer, d = D/4, int8 latents: 6.4x smaller, calibrated with
# kvcar-calibrate and shipped as models/gpt2-tiny/kv-linear-d32-int8.kvc).
#
# The text is the first 2048 tokens of WikiText-2 test in the tokenized form the model was trained
# on (models/wikitext-2-test-excerpt.tokens; `<unk>` and ` @-@ ` as in wiki.test.tokens), scored
# in windows of 256 tokens, the length the model was trained at. To read the numbers, the demo
# also scores the same tokens with only 8 tokens of context: the gap is what the model gets from
# the longer context, and what a compressed cache must keep. About a minute on 2 cores.
#
#   bash examples/demo.sh [build-dir]
set -euo pipefail
build=${1:-build}
cd "$(dirname "$0")/.."
bin=$build/examples
model=models/gpt2-tiny
text=models/wikitext-2-test-excerpt.tokens
tokens=2048
prompt="The history of the city begins in the"

ppl_of() {  # the "perplexity" member of a --json line
  sed -n 's/.*"perplexity":\([0-9.eE+-]*\).*/\1/p'
}

for kv in identity-f16 "file:$model/kv-linear-d32-int8.kvc"; do
  echo "================ KV cache: $kv ================"
  "$bin/kvcar-generate" --model "$model" --kv "$kv" --prompt "$prompt" --steps 40 --temperature 0
  echo
  kl=(); [ "$kv" = identity-f16 ] || kl=(--kl)  # the compressed cache: KL from the fp16 one
  "$bin/kvcar-perplexity" --model "$model" --kv "$kv" --tokens-file "$text" "${kl[@]}" \
    --max-tokens "$tokens" --ctx 256 --quiet
  echo
done

echo "================ How to read the perplexity ================"
short=$("$bin/kvcar-perplexity" --model "$model" --tokens-file "$text" --max-tokens "$tokens" \
  --ctx 8 --stride 1 --quiet --json 2>/dev/null | ppl_of)
printf 'The same %d tokens with only 8 tokens of context (fp16 cache): perplexity %.2f.\n' \
  "$tokens" "$short"
echo "Lower is better: perplexity is the effective number of equally likely next tokens. The gap"
echo "between the fp16 cache's figure above and this one is what up to 256 tokens of context buy"
echo "this tiny model. A good compressed cache stays close to the fp16 figure; one that drifts"
echo "towards this 8-token figure has lost what the longer context gave."

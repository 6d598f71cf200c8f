# As run on the GPU machine (2026-12-07), from the session's carry/ folder: carry/common.sh
# unpacked a prebuilt kvcar-serve into $B and printed the GPU. Kept as the exact record.
# Where a serving step's time goes: ncu kernel durations over ~4 steady-state steps of
# kvcar-serve (TinyLlama shape, 8 GiB), per codec; then decode_bench at the serving shape.
set -uo pipefail
source carry/common.sh
m=/tmp/kvcar-serve-models/tinyllama-1.1b
[ -f $m/model.safetensors ] || python3 bench/make_random_serving.py $m --shape tinyllama-1.1b > /dev/null
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1); echo "ncu=$NCU"
for kv in ${KVS:-identity-f16 file:$m/codecs/lin-d4-int8.kvc}; do
  name=$(basename $kv .kvc)
  timeout ${TP:-120} $NCU --clock-control none --cache-control none --metrics gpu__time_duration.sum \
     --csv --print-units base --launch-skip ${SKIP:-100000} --launch-count ${CNT:-1500} --log-file $OUT/ncu-$name.csv \
     $B/examples/kvcar-serve --model $m --device cuda --json --requests 1000 --seed 0 \
     --prompt-len 512:4096 --output-len 128:512 --rate 0 --chunk 2048 --max-seqs 256 --page-size 16 \
     --max-seconds ${MS:-20} --warmup 8 --kv $kv --kv-budget ${BUD:-8GiB} > $OUT/serve-$name.json 2> $OUT/serve-$name.log
  echo "$name rc=$? $(wc -l < $OUT/ncu-$name.csv) lines"; tail -c 400 $OUT/serve-$name.json
done

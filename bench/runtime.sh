#!/usr/bin/env bash
# The packed runtime against our fp32 forward and llama.cpp, side by side (issue 23's table).
#
# For each scheme: quantizes MODEL into out/bench/<scheme> (RTN weights: speed and size do not depend on the solver),
# runs `coquant bench FOLDER --baseline MODEL` (the fp32 model measured in alternation in the same process), then
# llama.cpp (`xllamacpp` wheel, 2 threads) on MODEL re-packed as Q4_0 (Q8_0 embeddings), with the same prompt
# tokens, and prints every figure and the ratios. Run it on an otherwise idle machine.
#
# Usage: bench/runtime.sh [MODEL] [SCHEME...]
#   MODEL   default models/SmolLM2-135M-Instruct.Q4_1.gguf
#   SCHEME  method:scheme pairs, default rtn:W4A16 rtn:W4A8 quarot:W4A4KV4 coquant:W4A4KV4
# Environment: ROUNDS (3), RESULTS (a folder to write each JSON to, e.g. results/runtime/smollm2).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
shift || true
schemes=("$@")
[ ${#schemes[@]} -gt 0 ] || schemes=(rtn:W4A16 rtn:W4A8 quarot:W4A4KV4 coquant:W4A4KV4)
rounds=${ROUNDS:-3}
[ -f "$model" ] || { echo "runtime.sh: $model is missing (scripts/download-models.sh)" >&2; exit 1; }

venv=bench/.venv-llamacpp
if ! "$venv/bin/python" -c "import xllamacpp, gguf" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q xllamacpp gguf numpy
fi
swift build -c release --product coquant 2>&1 | tail -1
bin=.build/release/coquant
name=$(basename "$model" .gguf)
mkdir -p out/bench
q4=out/bench/$name.Q4_0.gguf
[ -f "$q4" ] || "$venv/bin/python" bench/gguf-requantize.py "$model" "$q4" Q4_0

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== llama.cpp Q4_0 ($q4)"
ids=Tests/Fixtures/smollm2/wikitext2_test_ids.safetensors     # the WikiText-2 test text in the model's own tokens
case $name in *qwen*|*Qwen*) ids=Tests/Fixtures/qwen2/wikitext2_test_ids.safetensors ;; esac
llama=$("$venv/bin/python" bench/llamacpp.py "$q4" --threads 2 --rounds "$rounds" --ids "$ids" 2>/dev/null)
echo "$llama"
[ -n "${RESULTS:-}" ] && mkdir -p "$RESULTS" && echo "$llama" > "$RESULTS/llamacpp-q4_0.json"
for ms in "${schemes[@]}"; do
  method=${ms%%:*} scheme=${ms#*:}
  dir=out/bench/$name-$method-$scheme
  extra=(); [ "$method" = rtn ] || extra=(--solver rtn)
  [ -f "$dir/config.json" ] || $bin quantize "$model" --method "$method" --scheme "$scheme" "${extra[@]}" --nsamples 8 --out "$dir" --quiet
  echo "== $method $scheme ($dir) vs fp32 $model"
  json=$($bin bench "$dir" --baseline "$model" --rounds "$rounds" --json --quiet)
  [ -n "${RESULTS:-}" ] && echo "$json" > "$RESULTS/$method-$scheme.json"
  python3 - "$json" "$llama" <<'PY'
import json, sys
ours, llama = json.loads(sys.argv[1]), json.loads(sys.argv[2])
keys = ["prefill_512_tok_s", "prefill_2048_tok_s", "decode_short_tok_s", "decode_2k_tok_s"]
print(f"{'':14}" + "".join(f"{k.replace('_tok_s', ''):>16}" for k in keys) + f"{'MB disk':>10}{'MB RSS':>9}")
for label, f in [("coquant", ours), ("coquant fp32", ours["baseline"]), ("llama.cpp Q4_0", llama)]:
    print(f"{label:14}" + "".join(f"{f[k]:16.1f}" for k in keys) + f"{f['model_bytes'] / 1e6:10.1f}" + (f"{f['peak_rss_bytes'] / 1e6:9.1f}" if "peak_rss_bytes" in f else ""))
print(f"{'÷ our fp32':14}" + "".join(f"{ours[k] / ours['baseline'][k]:15.2f}×" for k in keys) + f"{ours['model_bytes'] / ours['baseline']['model_bytes']:9.2f}×")
print(f"{'÷ llama.cpp':14}" + "".join(f"{ours[k] / llama[k]:15.2f}×" for k in keys) + f"{ours['model_bytes'] / llama['model_bytes']:9.2f}×")
PY
done

#!/usr/bin/env bash
# Which quantizer carries a W4A4KV4 loss: QuaRot's rotations with RTN weights, one quantizer at 4 bits at a time
# (the others at 8 bits or off), scored on the first WINDOWS (8) test windows. RTN needs no calibration (its Hessians
# only feed the report's layer losses), so each run calibrates on 2 × 256 tokens: ≈ 3 min to quantize Qwen2.5-Coder-0.5B
# and ≈ 2 min to score 8 windows on an idle machine. Results: results/$SET/ablation/NAME.json (skipped when present).
#
#   SET=qwen2.5-coder-0.5b scripts/quantizer-ablation.sh
#   scripts/quantizer-ablation.sh                      # SmolLM2
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/model-set.sh
windows=${WINDOWS:-8}
out=results/$set_name/ablation
work=${RUNS:-runs}/$set_name/ablation
mkdir -p "$out" "$work"

common="--method quarot --solver rtn --nsamples 2 --seqlen 256"
names=(rotation-w8 rotation-w8-uncentered rotation-w8a4 rotation-w8kv4 rotation-w4 rotation-w8a8)
declare -A flags=(
  [rotation-w8]="--scheme W8A8 --a-bits 16 --kv-bits 16"
  [rotation-w8-uncentered]="--scheme W8A8 --a-bits 16 --kv-bits 16 --no-center-embeddings"
  [rotation-w8a4]="--scheme W8A8 --a-bits 4 --kv-bits 16"
  [rotation-w8kv4]="--scheme W8A8 --a-bits 16 --kv-bits 4"
  [rotation-w4]="--scheme W4A16 --w-clip"
  [rotation-w8a8]="--scheme W8A8 --kv-bits 16"
)
for name in "${names[@]}"; do
  result=$out/$name.json
  if [ -f "$result" ]; then echo "== $name: done ($result)"; continue; fi
  echo "== $name: ${flags[$name]}"
  # shellcheck disable=SC2086
  $bin quantize "$model" $common ${flags[$name]} --embeddings f32 --out "$work/$name" --overwrite
  $bin ppl "$work/$name" --simulate --windows "$windows" --json > "$result.ppl"
  python3 - "$name" "$common ${flags[$name]}" "$model" "$result.ppl" > "$result.tmp" <<'PY'
import json, sys
name, flags, model, ppl = sys.argv[1:5]
json.dump({"name": name, "model": model, "flags": flags,
           "ppl": json.load(open(ppl))}, sys.stdout, indent=1)
PY
  mv "$result.tmp" "$result"; rm -f "$result.ppl"
  rm -rf "$work/$name"   # a Qwen folder is 1.4 GB, and only its score is kept
  echo "== $name: PPL $(python3 -c "import json; print(round(json.load(open('$result'))['ppl']['perplexity'], 3))")"
done

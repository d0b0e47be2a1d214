#!/usr/bin/env bash
# Runtime vs simulator end to end: WikiText-2 perplexity of the same folder on the packed runtime and with --simulate,
# over the first WINDOWS windows (default 4), for each scheme. Quantized activations make the two differ by more
# than float summation order token by token (a value near a rounding boundary lands on the other code; see
# Tests/CoQuantRuntimeTests/RuntimeModelTests.swift), so this is the end-to-end check: the ratio should be 1 ± 0.001.
#
# Usage: bench/runtime-ppl.sh [MODEL] [method:scheme[:granularity]...]   (folders under out/bench/, made with RTN
# weights and 8 calibration windows when missing). Environment: WINDOWS (4), RESULTS (folder for the JSON lines).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
shift || true
schemes=("$@")
[ ${#schemes[@]} -gt 0 ] || schemes=(rtn:W4A16 gptq:W4A16g64 rtn:W8A8 rtn:W4A8 quarot:W4A4KV4 resq:W4A4KV4:per-layer
                                     coquant:W4A4KV4:per-layer resq:W4A4KV4:shared coquant:W4A4KV4:shared)
windows=${WINDOWS:-4}
swift build -c release --product coquant 2>&1 | tail -1
bin=.build/release/coquant
name=$(basename "$model" .gguf)
for spec in "${schemes[@]}"; do
  IFS=: read -r method scheme granularity <<< "$spec"
  dir=out/bench/$name-$method-$scheme${granularity:+-$granularity}
  flags=(--solver rtn --nsamples 8); [ -n "$granularity" ] && flags+=(--granularity "$granularity")
  [ -f "$dir/config.json" ] || $bin quantize "$model" --method "$method" --scheme "$scheme" "${flags[@]}" --out "$dir" --quiet
  rt=$($bin ppl "$dir" --windows "$windows" --json --quiet | python3 -c 'import json,sys; print(json.load(sys.stdin)["perplexity"])')
  sim=$($bin ppl "$dir" --windows "$windows" --json --quiet --simulate | python3 -c 'import json,sys; print(json.load(sys.stdin)["perplexity"])')
  line=$(python3 -c "import json; print(json.dumps({'model': '$model', 'scheme': '$spec', 'windows': $windows, 'runtime': $rt, 'simulate': $sim, 'ratio': $rt / $sim}))")
  echo "$line"
  [ -n "${RESULTS:-}" ] && mkdir -p "$RESULTS" && echo "$line" >> "$RESULTS/runtime-vs-simulate.jsonl"
done

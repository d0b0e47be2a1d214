#!/usr/bin/env bash
# Zero-shot accuracy of the W4A4KV4 models on the packed runtime against FP (issue 23's table): SmolLM2, the nine
# tasks, the same first LIMIT docs of each (1000) for every row. Each row's folder is the seed-0 CDQuant config of the
# perplexity table (scripts/results-table.sh: weights per channel with MSE clip, activations per token, K/V per
# (token, head), shared bases for ResQ/CoQuant, embeddings and head fp32 as the papers keep them), made here if
# missing; each task then runs through scripts/zeroshot-table.sh, which checkpoints every scored doc and copies the
# finished task to results/smollm2/zeroshot-<row>-<task>.json. Resumable at every level: run it again after a kill.
# Hours on 2 cores (≈ 1 h per row), so in the background:
#
#   nohup scripts/zeroshot-runtime.sh > /tmp/zeroshot-runtime.log 2>&1 &
#   python3 scripts/zeroshot-compare.py results/smollm2 fp-1000 quarot-cdquant-w4a4kv4-s0-1000 \
#       resq-cdquant-shared-s0-1000 coquant-cdquant-shared-s0-1000
#
# Variables: LIMIT (1000), RUNS (runs/), ROWS (default: QuaRot, FP, CoQuant, ResQ), BIN (the coquant binary: a copy
# keeps one build for the whole table while .build changes).
set -euo pipefail
cd "$(dirname "$0")/.."
limit=${LIMIT:-1000}
runs=${RUNS:-runs}
rows=(${ROWS:-quarot-cdquant-w4a4kv4-s0 fp coquant-cdquant-shared-s0 resq-cdquant-shared-s0})
model=${COQUANT_MODELS:-models}/SmolLM2-135M-Instruct.Q4_1.gguf
for row in "${rows[@]}"; do
  target=$model
  if [ "$row" != fp ]; then
    target=$runs/smollm2/$row
    [ -f "$target/report.json" ] || QUANTIZE_ONLY=1 scripts/results-table.sh "$row"
  fi
  MODEL=$target NAME=$row-$limit LIMIT=$limit scripts/zeroshot-table.sh
done

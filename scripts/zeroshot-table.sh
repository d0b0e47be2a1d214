#!/usr/bin/env bash
# Full-task zero-shot accuracies of one model (issue 5's FP table), resumable: each task runs as its own
# `coquant eval --out runs/$SET/zeroshot-$NAME/<task>`, continues an interrupted run with --resume (every scored doc is
# checkpointed), and is copied to results/$SET/zeroshot-$NAME-<task>.json when done, then skipped. Hours on 2 cores
# (HellaSwag alone ≈ 10k docs), so run it in the background:
#
#   nohup scripts/zeroshot-table.sh > /tmp/zeroshot.log 2>&1 &
#   scripts/zeroshot-table.sh piqa winogrande               # only these tasks
#   python3 scripts/zeroshot-summary.py results/smollm2     # the table, beside the fixture's lm-eval full runs
#
# Variables: MODEL (SmolLM2 GGUF), NAME (fp), SET (smollm2), RUNS (runs/, git-ignored), LIMIT (docs per task, for a
# smoke test; unset = the whole task), BIN (the coquant binary).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${MODEL:-${COQUANT_MODELS:-models}/SmolLM2-135M-Instruct.Q4_1.gguf}
name=${NAME:-fp}
set_name=${SET:-smollm2}
runs=${RUNS:-runs}/$set_name/zeroshot-$name
results=results/$set_name
mkdir -p "$runs" "$results"
bin=${BIN:-.build/release/coquant}
[ -x "$bin" ] || swift build -c release --product coquant
limit_args=()
[ -n "${LIMIT:-}" ] && limit_args=(--limit "$LIMIT")

# The fixture's full runs first (winogrande, piqa, arc_easy), the long ones last.
tasks=(winogrande piqa arc_easy arc_challenge openbookqa social_iqa boolq lambada_openai hellaswag)
[ $# -gt 0 ] && tasks=("$@")
for task in "${tasks[@]}"; do
  result=$results/zeroshot-$name-$task.json
  if [ -f "$result" ]; then echo "== $task: done ($result)"; continue; fi
  echo "== $task: $(date -u +%FT%TZ)"
  out=$runs/$task
  if [ ! -f "$out/results.json" ]; then
    resume=(); [ -d "$out.partial" ] && resume=(--resume)
    $bin eval "$model" --tasks "$task" --out "$out" "${limit_args[@]}" "${resume[@]}"
  fi
  cp "$out/results.json" "$result.tmp" && mv "$result.tmp" "$result"
  echo "== $task: wrote $result"
done

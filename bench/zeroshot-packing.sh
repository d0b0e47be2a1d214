#!/usr/bin/env bash
# Packed zero-shot scoring against one doc per forward pass: for each task, `coquant eval --tasks T --limit LIMIT`
# with the default --batch-tokens 2048 (several docs per pass, PackedSequences) and with --batch-tokens 1 (each doc
# alone, its choices still sharing the context), in alternating order (A B, then B A, …), and prints each side's
# median scoring seconds (the task's own time, without model load), the speed-up, and whether both gave the same
# accuracy (they differ only in float rounding). Packing helps where a doc alone leaves the GEMMs few rows
# (WinoGrande's ~20-token requests most); most tasks' docs already fill them well. Run it on an otherwise idle machine;
# single rounds are noisy, use ROUNDS=3 for figures.
#
#   bench/zeroshot-packing.sh                          # 5 tasks × 200 docs × 2 sides: ≈ 15 min on 2 cores
#   TASKS="arc_easy piqa" LIMIT=100 ROUNDS=3 bench/zeroshot-packing.sh
set -euo pipefail
cd "$(dirname "$0")/.."
model=${MODEL:-${COQUANT_MODELS:-models}/SmolLM2-135M-Instruct.Q4_1.gguf}
tasks=${TASKS:-"arc_easy winogrande piqa hellaswag boolq"}
limit=${LIMIT:-200}
rounds=${ROUNDS:-1}
[ "$rounds" -ge 1 ] 2>/dev/null || { echo "ROUNDS must be a positive integer (got '$rounds')" >&2; exit 2; }
out=${LOG_DIR:-$(mktemp -d /tmp/coquant-zeroshot-packing.XXXX)}
mkdir -p "$out"
[ "${SKIP_BUILD:-0}" = 1 ] || swift build -c release --product coquant >/dev/null
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "model: $model; first $limit docs per task; $rounds round(s); logs in $out"
printf '%-14s %12s %12s %9s  %s\n' task "packed s" "per-doc s" speed-up "same acc"
for task in $tasks; do
  for round in $(seq "$rounds"); do
    order="2048 1"; [ $((round % 2)) = 0 ] && order="1 2048"
    for batch in $order; do
      dir=$out/$task-$batch-$round
      .build/release/coquant eval "$model" --tasks "$task" --limit "$limit" --batch-tokens "$batch" --out "$dir" \
          --overwrite --quiet > "$dir.log" 2>&1 || { echo "$task --batch-tokens $batch failed: see $dir.log" >&2; exit 1; }
    done
  done
  python3 - "$out" "$task" "$rounds" <<'PY'
import json, statistics, sys
out, task, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
def runs(batch):
    return [json.load(open(f"{out}/{task}-{batch}-{r}/results.json"))["tasks"][0] for r in range(1, rounds + 1)]
packed, alone = runs(2048), runs(1)
p = statistics.median(t["seconds"] for t in packed); a = statistics.median(t["seconds"] for t in alone)
same = all(x["acc"]["value"] == y["acc"]["value"] for x, y in zip(packed, alone))
print(f"{task:<14} {p:12.1f} {a:12.1f} {a / p:8.2f}×  {'yes' if same else 'NO'}")
print(f"RESULT zeroshot-packing task={task} packed_s={p:.2f} per_doc_s={a:.2f} speedup={a / p:.3f}", file=sys.stderr)
PY
done
echo "load at end: $(cut -d' ' -f1-3 /proc/loadavg)"

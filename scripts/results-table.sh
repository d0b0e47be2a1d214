#!/usr/bin/env bash
# Quantize-and-evaluate runs for the results tables, resumable: each config writes results/$SET/NAME.json when it is
# done and is skipped afterwards; an interrupted quantization continues with --resume. Hours on 2 cores (a 128 × 2048
# W4A4KV4 config on SmolLM2 ≈ 11 min of quantization + ≈ 11 min of full-test perplexity with nothing else running,
# ResQ/CoQuant add one statistics pass per seed; 2–3× that beside other jobs), so run it in the background:
#
#   nohup scripts/results-table.sh > /tmp/results.log 2>&1 &
#   scripts/results-table.sh gptq-w4a16 rtn-w4a16      # only these configs
#   scripts/results-table.sh subspace                   # the ResQ / CoQuant table (issue 4), 3 seeds
#   python3 scripts/results-summary.py results/smollm2  # the Markdown table of what has finished
#
#   SET=qwen2.5-coder-0.5b WINDOWS=40 scripts/results-table.sh fp quarot-cdquant-w4a4kv4-s0 …   # the Qwen table
#
# Variables: SET (smollm2; a name starting with qwen defaults MODEL to the Qwen2.5-Coder GGUF), MODEL (the set's
# GGUF), NSAMPLES (128), RTN_NSAMPLES (8), WINDOWS (all), RUNS (runs/, git-ignored), QUANTIZE_ONLY (1: make or resume
# the folders runs/$SET/NAME and stop there, even for configs whose results exist; scripts/zeroshot-runtime.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/model-set.sh
nsamples=${NSAMPLES:-128}
runs=${RUNS:-runs}/$set_name
results=results/$set_name
mkdir -p "$runs" "$results"

# Every W4A4KV4 row (RTN without rotation, QuaRot, ResQ, CoQuant) uses the same quantizers, those of the
# ResQ/CoQuant reference scripts, so that the rows differ only in their rotations/bases and solver: weights per
# channel, symmetric, MSE clip search; activations per token and K/V per (token, head), asymmetric, clip 1.0 (K's
# range includes 0). results/CONFIGURATIONS.md lists every setting and the reference commands.
a4="--scheme W4A4KV4 --w-clip"
declare -A config=(
  [gptq-w4a16]="--method gptq --scheme W4A16"
  [cdquant-w4a16]="--method cdquant --scheme W4A16"
  [rtn-w4a16]="--method rtn --scheme W4A16"
  [rtn-w3a16]="--method rtn --scheme W3A16"
  [rtn-w4a4kv4]="--method rtn $a4"
  [gptq-w3a16]="--method gptq --scheme W3A16"
  [cdquant-w3a16]="--method cdquant --scheme W3A16"
  [fp]=""
)
# The QuaRot rows of this table are the seed-0 QuaRot rows of the subspace table (the same configuration).
order=(gptq-w4a16 cdquant-w4a16 rtn-w4a16 rtn-w3a16 rtn-w4a4kv4 gptq-w3a16 cdquant-w3a16 quarot-gptq-w4a4kv4-s0 quarot-cdquant-w4a4kv4-s0 fp)

# The ResQ / CoQuant table (W4A4KV4, 1/8 of the channels at 8 bits): the reference scripts' settings — weights per
# channel, symmetric, MSE clip; activations per token and K/V per (token, head), asymmetric, clip 1.0 — for seeds
# 0–2 (calibration windows and random rotations). Both solvers of one (method, granularity, seed) share a bases file,
# and all ResQ/CoQuant runs of one seed share one statistics pass (the same windows through the same fused model).
# Named e.g. coquant-cdquant-per-layer-s1; QuaRot rows as quarot-gptq-w4a4kv4-s1 (the same quantizers).
subspace_order=()
for seed in 0 1 2; do
  for solver in gptq cdquant; do
    config[quarot-$solver-w4a4kv4-s$seed]="--method quarot --solver $solver $a4 --seed $seed"
    subspace_order+=(quarot-$solver-w4a4kv4-s$seed)
    for method in resq coquant; do
      for granularity in per-layer shared; do
        name=$method-$solver-$granularity-s$seed
        config[$name]="--method $method --solver $solver --scheme W4A4KV4 --w-clip --granularity $granularity --seed $seed --bases $runs/bases-$method-$granularity-s$seed.safetensors --statistics $runs/statistics-s$seed.safetensors"
        subspace_order+=("$name")
      done
      # Not in the table: shared with each KV head's own key basis (--key-basis per-head; the reference pools them).
      config[$method-$solver-shared-keys-per-head-s$seed]="--method $method --solver $solver --scheme W4A4KV4 --w-clip --granularity shared --key-basis per-head --seed $seed --bases $runs/bases-$method-shared-keys-per-head-s$seed.safetensors --statistics $runs/statistics-s$seed.safetensors"
    done
  done
done
[ $# -gt 0 ] && order=("$@")
[ "${1:-}" = subspace ] && order=("${subspace_order[@]}")

window_args=()
[ -n "${WINDOWS:-}" ] && window_args=(--windows "$WINDOWS")

for name in "${order[@]}"; do
  [ -n "${config[$name]+x}" ] || { echo "unknown config $name (known: ${!config[*]})" >&2; exit 2; }
  result=$results/$name.json
  if [ -f "$result" ] && [ -z "${QUANTIZE_ONLY:-}" ]; then echo "== $name: done ($result)"; continue; fi
  echo "== $name: $(date -u +%FT%TZ)"
  target=$model
  quantize_seconds=0
  # RTN's weights do not depend on the calibration (its Hessians only feed the report's layer losses), so its runs
  # calibrate on RTN_NSAMPLES windows (8) instead of ≈ 10 min of passes for 128: the same model, cheaper losses.
  run_nsamples=$nsamples
  case $name in rtn-*) run_nsamples=${RTN_NSAMPLES:-8} ;; esac
  if [ "$name" != fp ]; then
    target=$runs/$name
    # A finished folder is reused only for the flags it was made with: a config edited since would otherwise be
    # evaluated on a stale model under its new name.
    stamp="$model ${config[$name]} --nsamples $run_nsamples"
    made=$(cat "$target.flags" 2>/dev/null || echo 'no record')
    if [ -f "$target/report.json" ] && [ "$made" != "$stamp" ]; then
      echo "$target was made with other flags ($made); now: $stamp." >&2
      echo "Remove $target (and $runs/$name.ppl.checkpoint) to quantize it again." >&2
      exit 1
    fi
    if [ ! -f "$target/report.json" ]; then
      [ -d "$target.partial" ] && [ "$made" != "$stamp" ] && {
        echo "$target.partial was started with other flags; remove it to start again." >&2; exit 1; }
      echo "$stamp" > "$target.flags"
      resume=(); [ -d "$target.partial" ] && resume=(--resume)
      t0=$(date +%s)
      # The papers' protocol: embeddings and head at full precision (not part of the stamp: every table run uses it).
      # shellcheck disable=SC2086
      $bin quantize "$model" ${config[$name]} --embeddings f32 --nsamples "$run_nsamples" --out "$target" --overwrite "${resume[@]}"
      quantize_seconds=$(( $(date +%s) - t0 ))
    fi
  fi
  [ -n "${QUANTIZE_ONLY:-}" ] && { echo "== $name: $target"; continue; }
  # A checkpoint holds a header line, then one line per scored window.
  eval_resumed=0; [ -f "$runs/$name.ppl.checkpoint" ] && [ "$(wc -l < "$runs/$name.ppl.checkpoint")" -gt 1 ] && eval_resumed=1
  t0=$(date +%s)
  # The checkpoint lets a killed evaluation (≈ 11 min on the full test, more beside other jobs) continue where it stopped.
  $bin ppl "$target" --simulate --json "${window_args[@]}" --checkpoint "$runs/$name.ppl.checkpoint" > "$results/$name.ppl.tmp"
  eval_seconds=$(( $(date +%s) - t0 ))
  python3 - "$name" "$target" "$results/$name.ppl.tmp" "$eval_seconds" "$run_nsamples" "${config[$name]}" "$eval_resumed" > "$result.tmp" <<'EOF'
import json, os, sys
name, target, ppl_file, eval_seconds, nsamples, flags, eval_resumed = sys.argv[1:8]
out = {"name": name, "flags": flags, "nsamples": int(nsamples), "ppl": json.load(open(ppl_file)),
       "eval_seconds": int(eval_seconds)}
if eval_resumed == "1":
    out["eval_note"] = "resumed from a checkpoint: eval_seconds covers the last invocation only"
report = os.path.join(target, "report.json")
if os.path.isfile(report):
    r = json.load(open(report))
    out["quantize_seconds"] = r["seconds"]
    # The report says itself whether its run resumed (quantize --resume after finished layers).
    if r.get("resumedAfterLayers") is not None:
        out["quantize_note"] = "resumed after an interrupt: quantize_seconds covers the last invocation only"
    out["options"] = r["options"]
    # startLoss: CDQuant's GPTQ start on the same H (the like-for-like GPTQ vs CDQuant comparison).
    out["linears"] = [{k: l[k] for k in ("layer", "name", "loss", "startLoss", "seconds") if k in l} for l in r["linears"]]
    if r.get("subspace"):
        out["subspace"] = {k: r["subspace"][k] for k in ("statisticsSeconds", "basesSeconds", "errorModel") if k in r["subspace"]}
json.dump(out, sys.stdout, indent=1)
EOF
  mv "$result.tmp" "$result"; rm -f "$results/$name.ppl.tmp"
  echo "== $name: wrote $result"
done

#!/usr/bin/env bash
# Whole-pipeline cost against one fp32 forward pass (DESIGN.md §5): on SmolLM2 with NSAMPLES × 2048 calibration
# tokens, times (1) one fp32 forward pass over NSAMPLES windows of 2048 tokens, (2) `coquant quantize` end to end
# for each of METHODS (default: GPTQ W4A16, CDQuant W4A16, CoQuant W4A4KV4), and prints each wall time divided by
# (1), CDQuant's extra time over GPTQ's, where each run's time went (statistics, eigendecompositions, solves, rest),
# and (3) `coquant ppl` of the last run's folder per window against (1). Run it on an otherwise idle machine.
#
#   bench/pipeline.sh                  # NSAMPLES=128: hours on 2 cores
#   NSAMPLES=16 bench/pipeline.sh      # a quicker look (the solve share is then larger than at 128)
set -euo pipefail
# Floating-point arithmetic without bc (not on a minimal Debian): awk is everywhere.
calc() { awk "BEGIN { printf \"%.6f\", $1 }"; }
cd "$(dirname "$0")/.."
model=${MODEL:-${COQUANT_MODELS:-models}/SmolLM2-135M-Instruct.Q4_1.gguf}
n=${NSAMPLES:-128}
methods=${METHODS:-"gptq:W4A16 cdquant:W4A16 coquant:W4A4KV4"}
out=${LOG_DIR:-$(mktemp -d /tmp/coquant-pipeline.XXXX)}
mkdir -p "$out"
[ "${SKIP_BUILD:-0}" = 1 ] || swift build -c release --product coquant --product coquant-bench >/dev/null
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "calibration: $n windows × 2048 tokens; logs in $out"
forward=$(.build/release/coquant-bench forward --model "$model" --windows "$n" | awk '/^RESULT/ { for (i = 1; i <= NF; i++) if ($i ~ /^seconds=/) { sub("seconds=", "", $i); print $i } }')
echo "fp32 forward over the calibration tokens: ${forward} s"
declare -A wall
for entry in $methods; do
  method=${entry%%:*}; scheme=${entry##*:}
  extra=(); [ "$method" = coquant ] || [ "$method" = resq ] && extra=(--w-clip)
  t0=$(date +%s.%N)
  .build/release/coquant quantize "$model" --method "$method" --scheme "$scheme" --nsamples "$n" "${extra[@]}" \
      --out "$out/$method-$scheme" --overwrite --quiet > "$out/$method-$scheme.log" 2>&1
  wall[$entry]=$(calc "$(date +%s.%N) - $t0")
  printf '%-18s %8.1f s  = %.2f × forward\n' "$method $scheme" "${wall[$entry]}" "$(calc "${wall[$entry]} / $forward")"
done
if [ -n "${wall[gptq:W4A16]:-}" ] && [ -n "${wall[cdquant:W4A16]:-}" ]; then
  python3 - "$out/gptq-W4A16/report.json" "$out/cdquant-W4A16/report.json" <<'PY'
import json, sys
g, c = (json.load(open(p)) for p in sys.argv[1:3])
gs = sum(l["seconds"] for l in g["linears"]); cs = sum(l["seconds"] for l in c["linears"])
gl = sum(l["loss"] for l in g["linears"]); cl = sum(l["loss"] for l in c["linears"])
lower = sum(1 for a, b in zip(g["linears"], c["linears"]) if b["loss"] < a["loss"])
print(f"solve time: GPTQ {gs:.1f} s, CDQuant {cs:.1f} s; CDQuant's extra time = {(cs - gs) / gs:.2f} × GPTQ's")
print(f"summed layer loss: GPTQ {gl:.6g}, CDQuant {cl:.6g} ({100 * (cl - gl) / gl:+.1f} %); CDQuant lower in {lower}/{len(g['linears'])} linears")
# Past layer 0 the two runs see different inputs (each propagates its own quantized outputs); CDQuant's report also
# scores its GPTQ start on its own H, the like-for-like comparison.
if all("startLoss" in l for l in c["linears"]):
    sl = sum(l["startLoss"] for l in c["linears"]); low = sum(1 for l in c["linears"] if l["loss"] < l["startLoss"])
    print(f"same inputs (CDQuant's GPTQ start): GPTQ {sl:.6g}, CDQuant {cl:.6g} ({100 * (cl - sl) / sl:+.1f} %); lower in {low}/{len(c['linears'])} linears")
PY
fi
# Where each run's time went (the stages of DESIGN.md §5 and issue 4): the statistics pass and eigendecompositions
# (ResQ/CoQuant), the weight solves, and the rest (layer forward passes, Hessians, fusion, packing, writing).
for entry in $methods; do
  python3 - "$out/${entry%%:*}-${entry##*:}/report.json" "${wall[$entry]}" "$forward" "$entry" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); wall, forward, name = float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
sub = r.get("subspace") or {}
stages = [("statistics", sub.get("statisticsSeconds", 0.0)), ("eigendecompositions", sub.get("basesSeconds", 0.0)),
          ("solves", sum(l["seconds"] for l in r["linears"]))]
stages.append(("rest", wall - sum(s for _, s in stages)))
print(f"{name:<16} " + "  ".join(f"{k} {v:.1f} s ({v / forward:.2f}×)" for k, v in stages if v > 0))
PY
done
# Evaluation (EVAL=0 skips it): the last quantized folder (CoQuant by default, with its online ops) scored on as
# many WikiText-2 test windows as calibration windows (at most 148).
if [ "${EVAL:-1}" = 1 ]; then
  last=${methods##* }; last_dir=$out/${last%%:*}-${last##*:}
  windows=$(( n < 148 ? n : 148 ))
  t0=$(date +%s.%N)
  .build/release/coquant ppl "$last_dir" --windows "$windows" --quiet > "$out/ppl.log" 2>&1
  ppl_wall=$(calc "$(date +%s.%N) - $t0")
  printf 'evaluation: coquant ppl of %s over %d windows %.1f s = %.2f × forward per window\n' "$last" "$windows" \
    "$ppl_wall" "$(calc "$ppl_wall / $windows / ($forward / $n)")"
fi
echo "load at end $(cut -d' ' -f1-3 /proc/loadavg)"

#!/usr/bin/env bash
# What the per-layer basis changes' int8 residual rounding costs at inference: re-scores finished per-layer runs of
# scripts/results-table.sh with the basis-change inputs unquantized (--residual-bits 16), everything else — weights,
# bases, every other quantizer — unchanged, and writes results/$SET/<method>-<solver>-per-layer-res16-s<seed>.json.
# scripts/results-summary.py then compares each with its run window by window. The weights stay those solved with
# int8 residuals in the calibration passes; `quantize --residual-bits 16` would change those too.
#
#   scripts/residual-bits-experiment.sh resq-gptq-per-layer-s0 coquant-cdquant-per-layer-s0
#
# Variables: SET (smollm2), WINDOWS (all), RUNS (runs/), BIN (.build/release/coquant; it must know residualBits). ≈ 11 min per run on SmolLM2's full test set (2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/rescore.sh

for name in "$@"; do
  case $name in *-per-layer-s*) ;; *) echo "$name: not a per-layer run (only those have basis changes)" >&2; exit 2 ;; esac
  [ -f "$runs/$name/report.json" ] || { echo "$runs/$name: no finished run (scripts/results-table.sh $name)" >&2; exit 1; }
  variant=${name/-per-layer-s/-per-layer-res16-s}
  # The variant folder links the run's tensors and tokenizer and carries its config with only residualBits changed.
  begin_variant "$variant" "$name" model.safetensors tokenizer.json tokenizer_config.json report.json || continue
  python3 - "$runs/$name/config.json" "$folder/config.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["quantization_config"]["coquant_options"]["subspace"]["residualBits"] = 16
json.dump(c, open(sys.argv[2], "w"), indent=2, sort_keys=True)
EOF
  rescore "$variant" "$folder" "$name's folder, evaluated with residualBits 16 (basis-change inputs unquantized)"
done

#!/usr/bin/env bash
# What ResQ's pooled key basis costs in `shared` granularity: re-scores finished shared runs of scripts/results-table.sh
# with each KV head's own key basis (the one `per-layer` computes) in place of the basis pooled over the layer's KV heads
# (ResQ's official U_C, COQUANT_RESQ.md §2.3), everything else unchanged, and writes
# results/$SET/<method>-<solver>-shared-keyswap-s<seed>.json. scripts/results-summary.py compares each with its run
# window by window.
#
#   SET=qwen2.5-coder-0.5b WINDOWS=40 scripts/key-basis-experiment.sh resq-cdquant-shared-s0 coquant-cdquant-shared-s0
#
# The key rotation is applied online after RoPE and fused into no weight, so swapping it is exact: the variant folder is
# the shared run's, with every `self_attn.key_rotation` tensor copied from the per-layer run of the same method, solver
# and seed (their key bases come from the same statistics, their R2 from the same seed: checked). The weights
# stay those solved with the pooled basis in the calibration passes; `quantize --key-basis per-head` (the results-table
# configs <method>-<solver>-shared-keys-per-head-s<seed>) solves them with the per-head keys too.
#
# Variables: SET (smollm2), WINDOWS (all), RUNS (runs/), BIN (.build/release/coquant).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/rescore.sh

for name in "$@"; do
  case $name in *-shared-s*) ;; *) echo "$name: not a shared run (per-layer runs already have per-head key bases)" >&2; exit 2 ;; esac
  per_layer=${name/-shared-s/-per-layer-s}
  for run in "$name" "$per_layer"; do
    [ -f "$runs/$run/report.json" ] || { echo "$runs/$run: no finished run (scripts/results-table.sh $run)" >&2; exit 1; }
  done
  variant=${name/-shared-s/-shared-keyswap-s}
  begin_variant "$variant" "$name" config.json tokenizer.json tokenizer_config.json report.json || continue
  if [ ! -f "$folder/model.safetensors" ]; then
    python3 - "$runs/$name" "$runs/$per_layer" "$folder/model.safetensors.tmp" <<'EOF'
import json, shutil, struct, sys
import numpy as np
sys.path.insert(0, "scripts")
from analysis import load
shared, per_layer, out = sys.argv[1:4]
def header(f):
    n = struct.unpack("<Q", f.read(8))[0]
    return 8 + n, json.loads(f.read(n))
# A key rotation is the head's key basis times R2, the random rotation inside its two blocks: the same seed must give the same R2.
bases = [json.load(open(f"{run}/config.json"))["quantization_config"]["coquant_options"]["subspace"]["basesFile"] for run in (shared, per_layer)]
if not np.array_equal(*(load(b, keep=lambda name: name == "R2")[0]["R2"] for b in bases)):
    sys.exit(f"{bases[0]} and {bases[1]}: different R2 (different seeds?), so the key rotations do not match the folder")
shared, per_layer = shared + "/model.safetensors", per_layer + "/model.safetensors"
shutil.copyfile(shared, out)
with open(per_layer, "rb") as src, open(out, "r+b") as dst:
    (s0, hs), (d0, hd) = header(src), header(dst)
    keys = [k for k in hd if k.endswith("self_attn.key_rotation")]
    assert keys and all(hs[k]["shape"] == hd[k]["shape"] and hs[k]["dtype"] == hd[k]["dtype"] for k in keys)
    for k in keys:
        (a, b), (c, _) = hs[k]["data_offsets"], hd[k]["data_offsets"]
        src.seek(s0 + a); dst.seek(d0 + c); dst.write(src.read(b - a))
print(f"{len(keys)} key rotations copied", file=sys.stderr)
EOF
    mv "$folder/model.safetensors.tmp" "$folder/model.safetensors"
  fi
  rescore "$variant" "$folder" "$name's folder with $per_layer's per-head key rotations (self_attn.key_rotation)"
done

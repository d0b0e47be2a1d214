#!/usr/bin/env bash
# Issue 24's "beyond" table: CoQuant's GGUF against the one llama.cpp's reference quantizer makes, same FP model, same
# file type. llama.cpp's row is the `gguf` package's Q4_0 rounding (ggml's reference quantize_row_q4_0: round to
# nearest per 32-block, no imatrix) via bench/gguf-requantize.py; ours are `coquant quantize --scheme Q4_0` with RTN,
# GPTQ and CDQuant (solved on the exact fp16 grid, the attention-sink token weighted 64× where the row says sink64),
# exported with `coquant export --format gguf`. Every file is scored
# by `coquant ppl FILE` (WikiText-2 test, GPTQ protocol, the first WINDOWS windows): llama.cpp's own perplexity tool is
# not in the xllamacpp wheel. Damage = ppl − ppl(FP); the target is ours ≤ 0.7 × llama.cpp's.
#
# Resumable: each finished row is results/gguf/<model>/<row>.json; run again after a kill.
#   scripts/gguf-table.sh                 # SmolLM2, all rows
#   ROWS="gptq-q4_0" scripts/gguf-table.sh
# Variables: MODEL, WINDOWS (16), NSAMPLES (128), ROWS (default: fp, llama.cpp's Q4_0, and ours with RTN, GPTQ, GPTQ
# with the sink weighted 64×, with act-order + static groups, both, CDQuant with both; a row is
# <method>-<scheme>[-sink<W>][-ao]: --sink-weight W, --act-order --static-groups).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${MODEL:-${COQUANT_MODELS:-models}/SmolLM2-135M-Instruct.Q4_1.gguf}
windows=${WINDOWS:-16}
nsamples=${NSAMPLES:-128}
rows=(${ROWS:-fp llamacpp-q4_0 rtn-q4_0 gptq-q4_0 gptq-q4_0-sink64-ao cdquant-q4_0-sink64-ao gptq-q4_0-ao gptq-q4_0-sink64})
bin=${BIN:-.build/release/coquant}
name=$(basename "$model" .gguf)
results=results/gguf/$name
work=out/gguf/$name
mkdir -p "$results" "$work"
venv=bench/.venv-llamacpp
for row in "${rows[@]}"; do
  [ -f "$results/$row.json" ] && { echo "$row: done ($results/$row.json)"; continue; }
  case $row in
    fp) file=$model ;;
    llamacpp-*)
      type=$(echo "${row#llamacpp-}" | tr a-z A-Z)
      file=$work/$row.gguf
      if [ ! -f "$file" ]; then
        "$venv/bin/python" -c "import gguf" 2>/dev/null || { python3 -m venv "$venv"; "$venv/bin/pip" install -q gguf numpy; }
        "$venv/bin/python" bench/gguf-requantize.py "$model" "$file" "$type"
      fi ;;
    *)
      # <method>-<scheme>[-sink<W>][-ao]: sink<W> is --sink-weight W, ao is --act-order --static-groups.
      IFS=- read -r method scheme extra <<< "$row"
      scheme=$(echo "$scheme" | tr a-z A-Z)
      flags=()
      for x in ${extra//-/ }; do
        case $x in
          sink*) flags+=(--sink-weight "${x#sink}") ;;
          ao) flags+=(--act-order --static-groups) ;;
        esac
      done
      resume=()
      [ -d "$work/$row.partial" ] && resume=(--resume)
      file=$work/$row.gguf
      if [ ! -f "$file" ]; then
        [ -f "$work/$row/report.json" ] || "$bin" quantize "$model" --method "$method" --scheme "$scheme" --nsamples "$nsamples" \
            "${flags[@]}" --out "$work/$row" "${resume[@]}" --quiet
        "$bin" export "$work/$row" --format gguf --out "$file"
      fi ;;
  esac
  start=$(date +%s)
  "$bin" ppl "$file" --windows "$windows" --quiet --json > "$results/$row.tmp"
  python3 - "$results/$row.tmp" "$file" "$row" $(( $(date +%s) - start )) "$nsamples" <<'PY'
import json, os, sys
tmp, file, row, secs, nsamples = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
r = json.load(open(tmp))
r.update({"row": row, "file": os.path.basename(file), "file_bytes": os.path.getsize(file), "ppl_seconds": secs})
if row not in ("fp",) and not row.startswith("llamacpp"):
    r["nsamples"] = nsamples
json.dump(r, open(tmp, "w"), indent=1)
PY
  mv "$results/$row.tmp" "$results/$row.json"
  echo "$row: $(python3 -c "import json; r = json.load(open('$results/$row.json')); print(r.get('perplexity'), r['file_bytes'])")"
done
python3 - "$results" <<'PY'
import glob, json, os, sys
rows = {os.path.basename(p)[:-5]: json.load(open(p)) for p in sorted(glob.glob(sys.argv[1] + "/*.json"))}
fp = rows.get("fp", {}).get("perplexity")
ref = rows.get("llamacpp-q4_0", {}).get("perplexity")
print("| row | file MB | perplexity | damage | vs llama.cpp's damage |")
print("|---|---|---|---|---|")
for k, r in rows.items():
    p = r.get("perplexity")
    dmg = p - fp if fp and p else None
    rel = dmg / (ref - fp) if dmg is not None and ref and k != "fp" else None
    print(f"| {k} | {r['file_bytes'] / 1e6:.1f} | {p:.4f} | {'' if dmg is None else f'{dmg:+.3f}'} | {'' if rel is None else f'{rel:.2f}×'} |")
PY

#!/usr/bin/env bash
# Issue 24's "beyond" table: CoQuant's GGUF against the one llama.cpp's reference quantizer makes, same FP model, same
# file type. llama.cpp's rows: Q4_0 / Q8_0 by the `gguf` package's rounding (ggml's reference quantize_row_q4_0: round
# to nearest per 32-block) via bench/gguf-requantize.py, every other type (the K-quant mixes) by llama.cpp's own
# llama-quantize (scripts/build-llama-tools.sh) from an F32 copy of the FP model; `llamacpp-<type>-imatrix` adds an
# importance matrix from llama-imatrix on the calibration text. Ours are `coquant quantize --scheme <type>` with RTN,
# GPTQ and CDQuant (solved on the exact block grids, the attention-sink token weighted 64× where the row says sink64),
# exported with `coquant export --format gguf`. Every file is scored by `coquant ppl FILE` (WikiText-2 test, GPTQ
# protocol, the first WINDOWS windows of 2048) and, when the tools are built, by llama.cpp's llama-perplexity on the
# same text (its own protocol: the first WINDOWS chunks of 2048, the second half of each scored), as
# "llamacpp_perplexity". Damage = ppl − ppl(FP); the target is ours ≤ 0.7 × llama.cpp's.
#
# Resumable: each finished row is results/gguf/<model>/<row>.json; run again after a kill.
#   scripts/gguf-table.sh                 # SmolLM2, all rows
#   ROWS="gptq-q4_0" scripts/gguf-table.sh
#   MODEL=models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf WINDOWS=4 NSAMPLES=16 \
#     ROWS="fp llamacpp-q4_k_m gptq-q4_k_m-sink64-ao" scripts/gguf-table.sh
# Variables: MODEL, WINDOWS (16), NSAMPLES (128), ROWS (default: fp, llama.cpp's Q4_0, and ours with RTN, GPTQ, GPTQ
# with the sink weighted 64×, with act-order + static groups, both, CDQuant with both; a row is
# <method>-<scheme>[-sink<W>][-ao]: --sink-weight W, --act-order --static-groups), LLAMA_TOOLS (.llama-tools),
# LLAMA_CHUNKS (llama-perplexity's chunks of 2048; default WINDOWS).
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
tools=${LLAMA_TOOLS:-.llama-tools}/bin
llama_chunks=${LLAMA_CHUNKS:-$windows}
text=data/wikitext-2-raw-v1/test.gptq_join.txt
gguf_py() {
  "$venv/bin/python" -c "import gguf" 2>/dev/null || { python3 -m venv "$venv"; "$venv/bin/pip" install -q gguf numpy; }
  "$venv/bin/python" bench/gguf-requantize.py "$@"
}
# llama.cpp's perplexity of FILE into the row's JSON (skipped with a line when the tools are not built).
llama_ppl() {
  local json=$1 file=$2
  [ -x "$tools/llama-perplexity" ] || { echo "llama-perplexity not built (scripts/build-llama-tools.sh): coquant's perplexity only"; return 0; }
  python3 -c "import json, sys; sys.exit(0 if 'llamacpp_perplexity' in json.load(open('$json')) else 1)" && return 0
  local log=$work/$(basename "$json" .json).llama-perplexity.log
  "$tools/llama-perplexity" -m "$file" -f "$text" -c 2048 -b 2048 --chunks "$llama_chunks" -t "$(nproc)" > "$log" 2>&1
  python3 - "$json" "$log" <<'PY'
import json, re, sys
r = json.load(open(sys.argv[1]))
m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", open(sys.argv[2]).read())
r["llamacpp_perplexity"], r["llamacpp_perplexity_stderr"] = float(m.group(1)), float(m.group(2))
json.dump(r, open(sys.argv[1] + ".tmp", "w"), indent=1)
PY
  mv "$json.tmp" "$json"
}
# llama.cpp scores the FP model from an F32 copy (the model file itself may be quantized: it computes with its blocks).
fp_for_llama() { [ -f "$work/fp-f32.gguf" ] || gguf_py "$model" "$work/fp-f32.gguf" F32; echo "$work/fp-f32.gguf"; }
for row in "${rows[@]}"; do
  if [ -f "$results/$row.json" ]; then
    echo "$row: done ($results/$row.json)"
    file=$work/$row.gguf; [ "$row" = fp ] && file=$(fp_for_llama)
    [ -f "$file" ] && llama_ppl "$results/$row.json" "$file"
    continue
  fi
  case $row in
    fp) file=$model ;;
    llamacpp-*)
      # llamacpp-<type>[-imatrix][-q8tables]: -q8tables stores the embedding and head as Q8_0, as CoQuant's int8 rows
      # export, so that the two files have the same tensor types and size.
      spec=${row#llamacpp-}; base=${spec%-q8tables}; base=${base%-imatrix}; type=$(echo "$base" | tr a-z A-Z)
      file=$work/$row.gguf
      if [ ! -f "$file" ]; then
        if [[ $type == Q4_0 || $type == Q8_0 ]] && [[ $spec == "$base" ]]; then
          gguf_py "$model" "$file" "$type"
        else
          [ -x "$tools/llama-quantize" ] || { echo "$row needs llama-quantize: run scripts/build-llama-tools.sh"; exit 1; }
          [ -f "$work/fp-f32.gguf" ] || gguf_py "$model" "$work/fp-f32.gguf" F32
          qflags=()
          [[ $spec == *-q8tables ]] && qflags+=(--token-embedding-type q8_0 --output-tensor-type q8_0)
          if [[ $spec == *-imatrix* ]]; then
            # The calibration text in NSAMPLES chunks of 2048, as llama-imatrix reads a file (consecutive chunks).
            [ -f "$work/imatrix.gguf" ] || "$tools/llama-imatrix" -m "$work/fp-f32.gguf" -f data/wikitext-2-raw-v1/train.first1MB_nonempty_rows.txt \
                -c 2048 -b 2048 --chunks "$nsamples" -t "$(nproc)" -o "$work/imatrix.gguf" > "$work/imatrix.log" 2>&1
            qflags+=(--imatrix "$work/imatrix.gguf")
          fi
          "$tools/llama-quantize" "${qflags[@]}" "$work/fp-f32.gguf" "$file.tmp" "$type" "$(nproc)" > "$work/$row.quantize.log" 2>&1
          mv "$file.tmp" "$file"
        fi
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
  [ "$row" = fp ] && file=$(fp_for_llama)
  llama_ppl "$results/$row.json" "$file"
  echo "$row: $(python3 -c "import json; r = json.load(open('$results/$row.json')); print(r.get('perplexity'), r.get('llamacpp_perplexity'), r['file_bytes'])")"
done
python3 - "$results" <<'PY'
import glob, json, os, sys
rows = {os.path.basename(p)[:-5]: json.load(open(p)) for p in sorted(glob.glob(sys.argv[1] + "/*.json"))}
def damage(key, k):
    fp, ref, p = rows.get("fp", {}).get(key), None, rows[k].get(key)
    # Each row against llama.cpp's file of the same type and size: the -q8tables one when there is one.
    scheme = k.split("-")[1] if k != "fp" else None
    same = rows.get(f"llamacpp-{scheme}-q8tables") or rows.get(f"llamacpp-{scheme}", {})
    ref = same.get(key)
    d = p - fp if fp and p else None
    return d, (d / (ref - fp) if d is not None and ref and fp and not k.startswith("llamacpp-") and ref != fp else None)
print("| row | file MB | coquant ppl | damage | vs llama.cpp's | llama.cpp ppl | damage | vs llama.cpp's |")
print("|---|---|---|---|---|---|---|---|")
f = lambda v, fmt: "" if v is None else format(v, fmt)
for k, r in rows.items():
    d1, r1 = damage("perplexity", k)
    d2, r2 = damage("llamacpp_perplexity", k)
    print(f"| {k} | {r['file_bytes'] / 1e6:.1f} | {f(r.get('perplexity'), '.4f')} | {f(d1, '+.3f')} | {f(r1, '.2f')}{'×' if r1 is not None else ''} "
          f"| {f(r.get('llamacpp_perplexity'), '.4f')} | {f(d2, '+.3f')} | {f(r2, '.2f')}{'×' if r2 is not None else ''} |")
PY

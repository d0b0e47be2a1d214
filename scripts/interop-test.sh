#!/usr/bin/env bash
# Interop (issue 24): every file `coquant export` writes, loaded by the real client that runs it, computing our
# log-probabilities. Models: the tiny Llama (tied head, GQA), Qwen2 (q/k/v biases, untied head) and Llama with
# head_dim ≠ hidden/heads fixtures, and SmolLM2 when models/ has it. For each, RTN folders on the GGUF-native grids
# (Q4_0, Q5_0, Q8_0), a 4-bit asymmetric g32 folder (→ Q4_1) and a per-channel W4A16 folder (→ Q4_0 with its
# scales rounded to fp16) are exported, and the Q4_0 folder also as F32 (the dequantized weights).
#
# llama.cpp (the `xllamacpp` wheel, in-process): greedy continuation and, teacher-forced on our path, top-10
# log-probabilities against `coquant generate --top-logprobs` on the same file. Tolerances, calibrated here: the F32
# export must give the same greedy tokens and |Δ log-prob| ≤ 0.05 (measured 0.005–0.011: summation order); the
# quantized types ≤ 0.75 (measured 0.20–0.24 on the tiny models, 0.14–0.36 on SmolLM2 per INTEROP.md — llama.cpp
# rounds activations to 8 bits inside quantized matmuls — while a wrong nibble order gives ≈ 20).
#
# A client that cannot be installed is skipped with a line saying so. Usage: scripts/interop-test.sh
# Environment: BIN (default .build/debug/coquant, as scripts/test.sh builds it), INTEROP_VENV (.venv-interop).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-.build/debug/coquant}
[ -x "$bin" ] || swift build --product coquant
venv=${INTEROP_VENV:-.venv-interop}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -c 4000 data/wikitext-2-raw-v1/test.gptq_join.txt > "$work/calib.txt"

llama=yes
if ! "$venv/bin/python" -c "import xllamacpp" 2>/dev/null; then
  if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q xllamacpp; } > "$work/pip.log" 2>&1; then
    echo "interop: SKIPPED llama.cpp — xllamacpp could not be installed ($(tail -1 "$work/pip.log"))"
    llama=no
  fi
fi
[ $llama = yes ] && echo "interop: llama.cpp via xllamacpp $("$venv/bin/python" -c 'import xllamacpp; print(xllamacpp.__version__)')"

failures=0
check() {   # check GGUF TOL [--exact-greedy]
  local gguf=$1 tol=$2; shift 2
  "$bin" generate "$gguf" --prompt-ids "$prompt" --max-tokens 8 --top-logprobs 10 --json --quiet > "$work/ours.json"
  [ $llama = yes ] || return 0
  if out=$("$venv/bin/python" scripts/interop_llamacpp.py "$gguf" "$work/ours.json" --tol "$tol" "$@" 2>"$work/llama.log"); then
    echo "  ok    llama.cpp $(basename "$gguf"): $out"
  else
    echo "  FAIL  llama.cpp $(basename "$gguf"): ${out:-$(tail -3 "$work/llama.log")}"
    failures=$((failures + 1))
  fi
}

models=()
for m in a_llama_gqa_tied c_qwen2_bias_untied d_llama_headdim32; do
  mkdir -p "$work/$m"
  cp Tests/Fixtures/tiny-models/$m/config.json Tests/Fixtures/tiny-models/$m/model.safetensors "$work/$m/"
  cp Tests/Fixtures/tiny-models/byte_level_tokenizer.json "$work/$m/tokenizer.json"
  models+=("$work/$m")
done
smol=${COQUANT_MODELS:-models}/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$smol" ]; then models+=("$smol"); else echo "interop: SmolLM2 skipped ($smol missing: scripts/download-models.sh smollm2)"; fi

for model in "${models[@]}"; do
  name=$(basename "$model" .gguf)
  echo "== $name"
  prompt="10,20,30,40,50"
  case $name in SmolLM2*) prompt="504,3575,282,4649,314" ;; esac      # "The capital of France is"
  for spec in "Q4_0" "Q5_0" "Q8_0" "W4A16g32 --w-asym" "W4A16"; do
    set -- $spec
    scheme=$1; shift
    folder="$work/$name-$scheme"
    "$bin" quantize "$model" --method rtn --scheme "$scheme" "$@" --nsamples 1 --seqlen 32 \
      --calib-file "$work/calib.txt" --out "$folder" --quiet > /dev/null
    "$bin" export "$folder" --format gguf --out "$folder.gguf" | sed 's/^/  /'
    check "$folder.gguf" 1.0
    if [ "$scheme" = Q4_0 ]; then
      "$bin" export "$folder" --format gguf --type f32 --out "$folder-f32.gguf" | sed 's/^/  /'
      check "$folder-f32.gguf" 0.05 --exact-greedy
    fi
  done
done
if [ $failures -gt 0 ]; then echo "interop: $failures check(s) failed"; exit 1; fi
echo "interop: all checks passed"

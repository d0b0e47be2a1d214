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
# quantized types ≤ 1.0 (measured 0.12–0.43 on the tiny models, 0.26–0.57 on SmolLM2 — llama.cpp rounds activations
# to 8 bits inside quantized matmuls — while a wrong nibble order gives ≈ 20).
#
# mlx-lm (`mlx[cpu]` + `mlx-lm`, in-process): the W4A16g32 --w-asym, Q8_0 and per-channel W4A16 folders exported
# with --format mlx, loaded by `mlx_lm.utils.load_model` (every decoder linear a QuantizedLinear, the int8 embedding
# a QuantizedEmbedding), prompt + our greedy path in one forward against `coquant generate --simulate` on the folder:
# same greedy tokens and |Δ log-prob| ≤ 1e-4 over our top-10 (mlx runs in fp32 on the folder's own codes and fp32
# scales; measured 6.8e-6–1.1e-5 on the tiny models, 1.7e-5–6.0e-5 on SmolLM2, the same with mlx's weights
# dequantized into dense Linears: fp32 summation order only).
#
# A client that cannot be installed is skipped with a line saying so. Usage: scripts/interop-test.sh
# Environment: BIN (default .build/debug/coquant, as scripts/test.sh builds it), INTEROP_VENV (.venv-interop),
# INTEROP_MLX_VENV (.venv-interop-mlx), INTEROP_CLIENTS (default "llamacpp mlx": which clients to run),
# COQUANT_MODELS (where SmolLM2 is looked for; default models).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-.build/debug/coquant}
[ -x "$bin" ] || swift build --product coquant
venv=${INTEROP_VENV:-.venv-interop}
mlx_venv=${INTEROP_MLX_VENV:-.venv-interop-mlx}
clients=" ${INTEROP_CLIENTS:-llamacpp mlx} "
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -c 4000 data/wikitext-2-raw-v1/test.gptq_join.txt > "$work/calib.txt"

llama=no
if [[ $clients == *" llamacpp "* ]]; then
  llama=yes
  if ! "$venv/bin/python" -c "import xllamacpp" 2>/dev/null; then
    if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q xllamacpp; } > "$work/pip.log" 2>&1; then
      echo "interop: SKIPPED llama.cpp — xllamacpp could not be installed ($(tail -1 "$work/pip.log"))"
      llama=no
    fi
  fi
  [ $llama = yes ] && echo "interop: llama.cpp via xllamacpp $("$venv/bin/python" -c 'import xllamacpp; print(xllamacpp.__version__)')"
fi
mlx=no
if [[ $clients == *" mlx "* ]]; then
  mlx=yes
  if ! "$mlx_venv/bin/python" -c "import mlx_lm" 2>/dev/null; then
    if ! { python3 -m venv "$mlx_venv" && "$mlx_venv/bin/pip" install -q "mlx[cpu]" mlx-lm; } > "$work/pip-mlx.log" 2>&1; then
      echo "interop: SKIPPED mlx-lm — mlx / mlx-lm could not be installed ($(tail -1 "$work/pip-mlx.log"))"
      mlx=no
    fi
  fi
  [ $mlx = yes ] && echo "interop: mlx-lm $("$mlx_venv/bin/python" -c 'from importlib.metadata import version as v; print(v("mlx-lm"), "on mlx", v("mlx"))')"
fi

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
check_mlx() {   # check_mlx FOLDER MLX_FOLDER TOL: the export against the folder it was written from
  local folder=$1 export=$2 tol=$3 result
  "$bin" generate "$folder" --simulate --prompt-ids "$prompt" --max-tokens 8 --top-logprobs 10 --json --quiet > "$work/ours-mlx.json"
  [ $mlx = yes ] || return 0
  if result=$("$mlx_venv/bin/python" scripts/interop_mlx.py "$export" "$work/ours-mlx.json" --tol "$tol" 2>"$work/mlx.log"); then
    echo "  ok    mlx-lm $(basename "$export"): $result"
  else
    echo "  FAIL  mlx-lm $(basename "$export"): ${result:-$(tail -3 "$work/mlx.log")}"
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
    gguf=no; [[ $clients == *" llamacpp "* ]] && gguf=yes
    mlx_export=no; [[ $clients == *" mlx "* && $scheme != Q4_0 && $scheme != Q5_0 ]] && mlx_export=yes
    [ $gguf = yes ] || [ $mlx_export = yes ] || continue
    folder="$work/$name-$scheme"
    "$bin" quantize "$model" --method rtn --scheme "$scheme" "$@" --nsamples 1 --seqlen 32 \
      --calib-file "$work/calib.txt" --out "$folder" --quiet > /dev/null
    if [ $gguf = yes ]; then
      "$bin" export "$folder" --format gguf --out "$folder.gguf" | sed 's/^/  /'
      check "$folder.gguf" 1.0
      if [ "$scheme" = Q4_0 ]; then
        "$bin" export "$folder" --format gguf --type f32 --out "$folder-f32.gguf" | sed 's/^/  /'
        check "$folder-f32.gguf" 0.05 --exact-greedy
      fi
    fi
    if [ $mlx_export = yes ]; then
      "$bin" export "$folder" --format mlx --out "$folder-mlx" | sed 's/^/  /'
      check_mlx "$folder" "$folder-mlx" 1e-4
    fi
  done
done
if [ $failures -gt 0 ]; then echo "interop: $failures check(s) failed"; exit 1; fi
echo "interop: all checks passed"

#!/usr/bin/env bash
# Interop (issue 24): every file `coquant export` writes, loaded by the real client that runs it, computing our
# log-probabilities. Models: the tiny Llama (tied head, GQA), Qwen2 (q/k/v biases, untied head) and Llama with
# head_dim ≠ hidden/heads fixtures, and SmolLM2 when models/ has it. For each, RTN folders on the GGUF-native grids
# (Q4_0, Q5_0, Q8_0), a 4-bit asymmetric g32 folder (→ Q4_1) and a per-channel W4A16 folder (→ Q4_0 with its
# scales rounded to fp16) are exported, and the Q4_0 folder also as F32 (the dequantized weights). A random llama
# 256 wide (scripts/random-llama.py) takes the GGUF schemes with the other block types: the K mixes Q4_K_M, Q3_K_M,
# Q2_K, Q5_K_M, Q6_K (Q2_K … Q6_K super-blocks) and Q4_1 / Q5_1 (a fractional zero per block), llama.cpp only
# (measured 0.08–0.17 within the quantized types' tolerance; its F32 export 0.004, and ours from a different random
# model shares no top-10 token at the first step, so the check sees the weights).
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
# transformers (CPU torch — the `torch==2.13.0+cpu` wheel pip finds via find-links, as bench/setup-torch.sh installs
# it — plus `transformers`, `compressed-tensors` and `accelerate`, in-process): the W4A16g32 --w-asym and per-channel
# W4A16 folders exported with --format compressed-tensors, and the W4A16g32 folder with --format hf --type f32 and
# --format hf (F16), loaded by `AutoModelForCausalLM.from_pretrained(dtype=float32)` on CPU (every decoder linear
# carries the 4-bit scheme and decompresses to at most 16 values per group), prompt + our greedy path in one forward
# against `coquant generate --simulate` on the folder: same greedy tokens and |Δ log-prob| ≤ 1e-4 (fp32 exports:
# transformers dequantizes to the folder's own values; measured 5.0e-6–1.1e-5 on the tiny models, 1.0e-5–2.2e-5 on
# SmolLM2: fp32 summation order only), ≤ 0.05 for the F16 folder (its weights rounded to fp16; measured 0.008–0.022,
# 0.012 on SmolLM2). Asymmetric folders load with dequantize=True (see
# scripts/interop_transformers.py: the default route of transformers 5.25 + compressed-tensors 0.20.1 expects the zero
# points unpacked).
#
# A client that cannot be installed is skipped with a line saying so. Usage: scripts/interop-test.sh
# Environment: BIN (default .build/debug/coquant, as scripts/test.sh builds it), INTEROP_VENV (.venv-interop),
# INTEROP_MLX_VENV (.venv-interop-mlx), INTEROP_TORCH_VENV (.venv-interop-torch), INTEROP_CLIENTS (default
# "llamacpp mlx transformers": which clients to run), COQUANT_MODELS (where SmolLM2 is looked for; default models).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${BIN:-.build/debug/coquant}
[ -x "$bin" ] || swift build --product coquant
venv=${INTEROP_VENV:-.venv-interop}
mlx_venv=${INTEROP_MLX_VENV:-.venv-interop-mlx}
torch_venv=${INTEROP_TORCH_VENV:-.venv-interop-torch}
clients=" ${INTEROP_CLIENTS:-llamacpp mlx transformers} "
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
tf=no
if [[ $clients == *" transformers "* ]]; then
  tf=yes
  if ! "$torch_venv/bin/python" -c "import torch, transformers, compressed_tensors, accelerate" 2>/dev/null; then
    # PyPI's torch is the CUDA build (3 GB); the CPU wheel comes from pip's find-links (bench/setup-torch.sh).
    torch_spec="torch==2.13.0+cpu"
    "$torch_venv/bin/pip" --version > /dev/null 2>&1 || python3 -m venv "$torch_venv" > /dev/null 2>&1 || true
    if ! "$torch_venv/bin/pip" install -q --dry-run --no-deps --only-binary=:all: "$torch_spec" > /dev/null 2>&1; then torch_spec=torch; fi
    if ! { "$torch_venv/bin/pip" install -q --no-deps --only-binary=:all: "$torch_spec" &&
           "$torch_venv/bin/pip" install -q filelock "typing-extensions>=4.10" "setuptools>=77.0.3" "sympy>=1.13.3" mpmath \
             "networkx>=2.5.1" jinja2 MarkupSafe "fsspec>=0.8.5" numpy transformers compressed-tensors accelerate; } > "$work/pip-torch.log" 2>&1; then
      echo "interop: SKIPPED transformers — torch / transformers / compressed-tensors could not be installed ($(tail -1 "$work/pip-torch.log"))"
      tf=no
    fi
  fi
  [ $tf = yes ] && echo "interop: transformers $("$torch_venv/bin/python" -c 'from importlib.metadata import version as v; print(v("transformers"), "+ compressed-tensors", v("compressed-tensors"), "on torch", v("torch"))')"
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
check_export() {   # check_export mlx|transformers FOLDER EXPORT TOL: the export against the folder it was written from
  local client=$1 folder=$2 export=$3 tol=$4 enabled python label result
  case $client in
    mlx) enabled=$mlx python=$mlx_venv/bin/python label=mlx-lm ;;
    transformers) enabled=$tf python=$torch_venv/bin/python label=transformers ;;
  esac
  "$bin" generate "$folder" --simulate --prompt-ids "$prompt" --max-tokens 8 --top-logprobs 10 --json --quiet > "$work/ours-$client.json"
  [ "$enabled" = yes ] || return 0
  if result=$("$python" "scripts/interop_$client.py" "$export" "$work/ours-$client.json" --tol "$tol" 2>"$work/$client.log"); then
    echo "  ok    $label $(basename "$export"): $result"
  else
    echo "  FAIL  $label $(basename "$export"): ${result:-$(tail -3 "$work/$client.log")}"
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
# A random llama 256 wide (the K-quants' super-blocks need inputs that are multiples of 256; the fixtures are 64 wide).
python3 scripts/random-llama.py "$work/wide_llama_256" --layers 4 --hidden 256 --ffn 512 --heads 4 --kv-heads 1 \
  --tokenizer Tests/Fixtures/tiny-models/byte_level_tokenizer.json > /dev/null
models+=("$work/wide_llama_256")
smol=${COQUANT_MODELS:-models}/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$smol" ]; then models+=("$smol"); else echo "interop: SmolLM2 skipped ($smol missing: scripts/download-models.sh smollm2)"; fi

for model in "${models[@]}"; do
  name=$(basename "$model" .gguf)
  echo "== $name"
  prompt="10,20,30,40,50"
  case $name in SmolLM2*) prompt="504,3575,282,4649,314" ;; esac      # "The capital of France is"
  specs=("Q4_0" "Q5_0" "Q8_0" "W4A16g32 --w-asym" "W4A16")
  # Every block type a GGUF scheme writes: the K mixes (Q2_K … Q6_K) where the width allows, Q4_1 / Q5_1 (fractional
  # zero) everywhere.
  case $name in wide_*) specs=("Q4_K_M" "Q3_K_M" "Q2_K" "Q5_K_M" "Q6_K" "Q4_1" "Q5_1") ;; esac
  for spec in "${specs[@]}"; do
    set -- $spec
    scheme=$1; shift
    gguf=no; [[ $clients == *" llamacpp "* ]] && gguf=yes
    mlx_export=no; [[ $clients == *" mlx "* && ( $scheme == W4A16* || $scheme == Q8_0 ) ]] && mlx_export=yes
    tf_export=no; [[ $clients == *" transformers "* && $scheme == W4A16* ]] && tf_export=yes
    [ $gguf = yes ] || [ $mlx_export = yes ] || [ $tf_export = yes ] || continue
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
      check_export mlx "$folder" "$folder-mlx" 1e-4
    fi
    if [ $tf_export = yes ]; then
      "$bin" export "$folder" --format compressed-tensors --out "$folder-ct" | sed 's/^/  /'
      check_export transformers "$folder" "$folder-ct" 1e-4
      if [ "$scheme" = W4A16g32 ]; then
        "$bin" export "$folder" --format hf --type f32 --out "$folder-hf32" | sed 's/^/  /'
        check_export transformers "$folder" "$folder-hf32" 1e-4
        "$bin" export "$folder" --format hf --out "$folder-hf16" | sed 's/^/  /'
        check_export transformers "$folder" "$folder-hf16" 0.05
      fi
    fi
  done
done
if [ $failures -gt 0 ]; then echo "interop: $failures check(s) failed"; exit 1; fi
echo "interop: all checks passed"

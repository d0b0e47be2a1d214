#!/usr/bin/env bash
# The main job end to end on the default model: install dependencies, build, download SmolLM2-135M-Instruct,
# quantize it (GPTQ W4A16 from NSAMPLES WikiText-2 train windows into a packed folder), then measure what that cost
# against the FP model — WikiText-2 perplexity and KL divergence over the first WINDOWS test windows, PIQA accuracy
# on its first LIMIT docs — print the side-by-side report, the quantized model's size and speed next to the FP
# model's (`coquant bench`, on the packed runtime), and a generation from the quantized model.
# About 10 minutes on 2 cores with the defaults NSAMPLES=16 WINDOWS=4 LIMIT=100 (the papers' setting is
# NSAMPLES=128 and all 148 windows: hours). METHOD/SCHEME pick another recipe and FLAGS adds quantize options
# (e.g. METHOD=coquant SCHEME=W4A4KV4 FLAGS=--w-clip, the reference scripts' weight clipping).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build -c release --product coquant
scripts/download-models.sh smollm2
model=${COQUANT_MODELS:-models}/SmolLM2-135M-Instruct.Q4_1.gguf
method=${METHOD:-gptq} scheme=${SCHEME:-W4A16}
name=$(echo "$method-$scheme" | tr 'A-Z' 'a-z')
bin=.build/release/coquant
$bin inspect "$model"
$bin quantize "$model" --method "$method" --scheme "$scheme" --nsamples "${NSAMPLES:-16}" ${FLAGS:-} --out "out/demo-$name" --overwrite
$bin eval "$model" --tasks piqa --limit "${LIMIT:-100}" --ppl --windows "${WINDOWS:-4}" --out runs/demo-fp --overwrite
$bin eval "out/demo-$name" --tasks piqa --limit "${LIMIT:-100}" --ppl --windows "${WINDOWS:-4}" --kl-vs "$model" \
    --out "runs/demo-$name" --overwrite
$bin report runs/demo-fp "runs/demo-$name" --out runs/demo-report --overwrite
# Size on disk, prefill and decode tok/s, peak memory: the quantized folder on the packed runtime and the FP model,
# measured in alternation (one round; `--rounds 3` for steadier figures).
$bin bench "out/demo-$name" --baseline "$model" --rounds 1 --quiet
$bin generate "out/demo-$name" --chat --prompt "Explain in two sentences why the sky is blue." --max-tokens 64

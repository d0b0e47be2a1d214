#!/usr/bin/env bash
# The main job end to end on the default model: install dependencies, build, download SmolLM2-135M-Instruct,
# print its WikiText-2 perplexity over the first windows and a short greedy generation.
# WINDOWS=n changes how many 2048-token windows are scored (default 4; 148 is the whole test set).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
swift build -c release --product coquant
scripts/download-models.sh smollm2
model=${COQUANT_MODELS:-models}/SmolLM2-135M-Instruct.Q4_1.gguf
.build/release/coquant inspect "$model"
.build/release/coquant ppl "$model" --windows "${WINDOWS:-4}"
.build/release/coquant generate "$model" --chat --prompt "Explain in two sentences why the sky is blue." --max-tokens 64

# Sourced (from the repository root) by the scripts that run one model set. Reads SET (smollm2; a name starting with
# qwen picks the Qwen2.5-Coder GGUF) and MODEL (overrides the set's GGUF); sets set_name, model and bin, building the
# release binary if it is missing.
set_name=${SET:-smollm2}
case $set_name in
  qwen*) default_model=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf ;;
  *) default_model=SmolLM2-135M-Instruct.Q4_1.gguf ;;
esac
model=${MODEL:-${COQUANT_MODELS:-models}/$default_model}
[ -e "$model" ] || { echo "$model: no such model (scripts/download-models.sh fetches the default ones, or set MODEL)" >&2; exit 1; }
bin=${BIN:-.build/release/coquant}
[ -x "$bin" ] || swift build -c release --product coquant

# Sourced (from the repository root) by the scripts that re-score a finished run's folder with one thing changed
# (residual-bits-experiment.sh, key-basis-experiment.sh). Reads SET (smollm2), WINDOWS (all), RUNS (runs/) and BIN
# (.build/release/coquant); sets runs, results and bin, and defines begin_variant and rescore.
set_name=${SET:-smollm2}
runs=${RUNS:-runs}/$set_name
results=results/$set_name
bin=${BIN:-.build/release/coquant}
[ -x $bin ] || swift build -c release --product coquant
window_args=()
[ -n "${WINDOWS:-}" ] && window_args=(--windows "$WINDOWS")

# begin_variant VARIANT RUN FILE…: fails when results/$SET/VARIANT.json exists (done: skip it); otherwise sets folder to
# runs/$SET/exp/VARIANT, made with RUN's FILEs linked into it (the caller adds what the variant changes).
begin_variant() {
  local variant=$1 run=$2 f; shift 2
  if [ -f "$results/$variant.json" ]; then echo "== $variant: done ($results/$variant.json)"; return 1; fi
  echo "== $variant: $(date -u +%FT%TZ)"
  folder=$runs/exp/$variant
  mkdir -p "$folder"
  for f in "$@"; do ln -sfn "$(realpath "$runs/$run/$f")" "$folder/$f"; done
}

# rescore VARIANT FOLDER DESCRIPTION: WikiText-2 perplexity of FOLDER into results/$SET/VARIANT.json (resumable through
# a checkpoint in runs/$SET/exp/), with DESCRIPTION as its "flags" so scripts/results-summary.py can pair it.
rescore() {
  local variant=$1 folder=$2 description=$3 result=$results/$1.json t0
  t0=$(date +%s)
  $bin ppl "$folder" --simulate --json "${window_args[@]}" --checkpoint "$runs/exp/$variant.ppl.checkpoint" > "$result.ppl.tmp"
  python3 - "$variant" "$description" "$result.ppl.tmp" "$(( $(date +%s) - t0 ))" > "$result.tmp" <<'PY'
import json, sys
variant, description, ppl_file, seconds = sys.argv[1:5]
print(json.dumps({"name": variant, "flags": description, "ppl": json.load(open(ppl_file)), "eval_seconds": int(seconds)}, indent=1))
PY
  mv "$result.tmp" "$result"; rm -f "$result.ppl.tmp"
  echo "== $variant: $(python3 -c "import json, sys; print(json.load(open(sys.argv[1]))['ppl']['perplexity'])" "$result")"
}

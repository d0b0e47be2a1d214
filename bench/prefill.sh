#!/usr/bin/env bash
# Side-by-side prefill benchmark: CoQuant (Swift, the GGUF model) vs PyTorch (fp32, SmolLM2-135M shape),
# run in alternation A B A B ... so that both see the same machine state, then medians and the ratio.
#
#   bench/prefill.sh                       # 3 rounds
#   ROUNDS=5 bench/prefill.sh
#
# Environment:
#   ROUNDS          rounds, each one Swift run then one torch run (default 3)
#   MODEL           GGUF for the Swift side (default ${COQUANT_MODELS:-models}/SmolLM2-135M-Instruct.Q4_1.gguf)
#   TOKENS          prompt length for both (default 2048)
#   TORCH_THREADS   torch.set_num_threads (default 2)
#   SKIP_BUILD=1    do not run `swift build` first
#   SWIFT_BENCH / TORCH_BENCH   replace the whole command of a side (a shell command line; for testing the
#                   parsing with a fake command, e.g. SWIFT_BENCH='echo RESULT swift tokens_per_s=1 seconds=2 gemm_share=0.5')
#   LOG_DIR         where each run's output is kept (default: a new directory under ${TMPDIR:-/tmp})
# Each side must print a line `RESULT swift tokens_per_s=<x> seconds=<s> gemm_share=<f>` or
# `RESULT torch tokens_per_s=<x> seconds=<s> threads=<n> version=<v>`.
# OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE are passed through untouched (only reported).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

ROUNDS="${ROUNDS:-3}"
TOKENS="${TOKENS:-2048}"
TORCH_THREADS="${TORCH_THREADS:-2}"
MODEL="${MODEL:-${COQUANT_MODELS:-models}/SmolLM2-135M-Instruct.Q4_1.gguf}"
LOG_DIR="${LOG_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/coquant-prefill.XXXXXX")}"
mkdir -p "$LOG_DIR"
log() { echo "prefill: $*" >&2; }
die() { log "error: $*"; exit 1; }

[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, got '$ROUNDS'"
[[ "$TOKENS" =~ ^[1-9][0-9]*$ ]] || die "TOKENS must be a positive integer, got '$TOKENS'"

if [[ -n "${SWIFT_BENCH:-}" ]]; then
    swift_cmd="$SWIFT_BENCH"
else
    [[ -f "$MODEL" ]] || die "no model at $MODEL (set MODEL or COQUANT_MODELS; scripts/download-models.sh fetches it)"
    swift_cmd="swift run -c release coquant-bench prefill --model $(printf %q "$MODEL") --tokens $TOKENS --repeats 1"
    if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
        log "building coquant-bench (release)"
        swift build -c release --product coquant-bench >&2
    fi
fi
if [[ -n "${TORCH_BENCH:-}" ]]; then
    torch_cmd="$TORCH_BENCH"
else
    [[ -x bench/.venv/bin/python ]] || die "no bench/.venv: run bench/setup-torch.sh first"
    torch_cmd="bench/.venv/bin/python bench/prefill_torch.py --tokens $TOKENS --threads $TORCH_THREADS --repeats 1"
fi

# --- machine -------------------------------------------------------------------------------------------
cpu_model="$(grep -m1 '^model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')"
cpu_flags="$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | grep -oE '\b(avx2|fma|avx512f|avx512_bf16|avx512_vnni|amx_tile)\b' | sort -u | tr '\n' ' ')"
openblas_lib=""
if [[ -z "${SWIFT_BENCH:-}" ]]; then
    bin="$(swift build -c release --show-bin-path 2>/dev/null)/coquant-bench"
    [[ -x "$bin" ]] && openblas_lib="$(ldd "$bin" 2>/dev/null | awk '/libopenblas/ {print $3; exit}')"
fi
[[ -n "$openblas_lib" ]] || openblas_lib="$(ldconfig -p 2>/dev/null | awk '/libopenblas\.so\.0 .*x86-64/ {print $NF; exit}')"
openblas_core="unknown"
if [[ -n "$openblas_lib" ]] && command -v python3 >/dev/null; then
    # Loading the library runs its init, which prints "Core: <name>" when OPENBLAS_VERBOSE=2 (DYNAMIC_ARCH builds).
    openblas_core="$(OPENBLAS_VERBOSE=2 python3 -c 'import ctypes, sys; ctypes.CDLL(sys.argv[1])' "$openblas_lib" 2>&1 \
        | sed -n 's/^Core: *//p' | head -1)"
    [[ -n "$openblas_core" ]] || openblas_core="not reported (not a DYNAMIC_ARCH build?)"
    openblas_lib="$(readlink -f "$openblas_lib")"
fi
machine_lines=(
    "nproc: $(nproc)"
    "cpu: ${cpu_model:-unknown} [${cpu_flags% }]"
    "openblas: ${openblas_lib:-not found}, core: $openblas_core"
    "openblas env: OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE-<unset>} OPENBLAS_L2_SIZE=${OPENBLAS_L2_SIZE-<unset>} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS-<unset>} OMP_NUM_THREADS=${OMP_NUM_THREADS-<unset>}"
    "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
)
for l in "${machine_lines[@]}"; do log "$l"; done

# --- runs ----------------------------------------------------------------------------------------------
declare -a swift_results=() torch_results=()

run_side() {  # name command -> appends the RESULT line to ${name}_results
    local name="$1" cmd="$2" round="$3" out line
    out="$LOG_DIR/$name.$round.log"
    log "round $round/$ROUNDS: $name: $cmd"
    set +e
    bash -c "$cmd" 2>&1 | tee "$out" >&2
    local rc=${PIPESTATUS[0]}
    set -e
    [[ $rc -eq 0 ]] || die "$name run $round exited with $rc (log: $out)"
    line="$(grep -E "^RESULT $name " "$out" | tail -1 || true)"
    [[ -n "$line" ]] || die "$name run $round printed no 'RESULT $name ...' line (log: $out)"
    eval "${name}_results+=(\"\$line\")"
}

for ((r = 1; r <= ROUNDS; r++)); do
    run_side swift "$swift_cmd" "$r"
    run_side torch "$torch_cmd" "$r"
done

# --- summary -------------------------------------------------------------------------------------------
field() {  # key line -> value of key=value in line (empty if missing)
    local key="$1" line="$2"
    tr ' ' '\n' <<<"$line" | sed -n "s/^$key=//p" | head -1
}
median() {  # values on stdin, one per line -> median (empty if none)
    grep -E '^[-+0-9.eE]+$' | sort -g | awk '{v[NR] = $1} END {
        if (NR == 0) exit
        if (NR % 2) printf "%.6g\n", v[(NR + 1) / 2]; else printf "%.6g\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
column_of() {  # side key -> values, one per line
    local -n arr="$1_results"
    local l
    for l in "${arr[@]}"; do field "$2" "$l"; done
}

swift_tps="$(column_of swift tokens_per_s | median)"
swift_s="$(column_of swift seconds | median)"
swift_gemm="$(column_of swift gemm_share | median)"
torch_tps="$(column_of torch tokens_per_s | median)"
torch_s="$(column_of torch seconds | median)"
torch_threads="$(field threads "${torch_results[-1]}")"
torch_version="$(field version "${torch_results[-1]}")"
ratio="n/a"
if [[ -n "$swift_tps" && -n "$torch_tps" ]]; then
    ratio="$(awk -v a="$swift_tps" -v b="$torch_tps" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "n/a" }')"
fi

echo
echo "== prefill, $TOKENS tokens, $ROUNDS rounds (Swift and torch alternating); logs in $LOG_DIR"
for l in "${machine_lines[@]}"; do echo "$l"; done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "swift runs: $(column_of swift tokens_per_s | tr '\n' ' ')tokens/s"
echo "torch runs: $(column_of torch tokens_per_s | tr '\n' ' ')tokens/s"
printf '%-7s %14s %12s  %s\n' side "tokens/s(med)" "seconds(med)" notes
printf '%-7s %14s %12s  %s\n' swift "${swift_tps:-?}" "${swift_s:-?}" "gemm_share=${swift_gemm:-?}, model=$MODEL"
printf '%-7s %14s %12s  %s\n' torch "${torch_tps:-?}" "${torch_s:-?}" "fp32, threads=${torch_threads:-?}, torch ${torch_version:-?}"
echo "ratio swift/torch tokens/s: $ratio"
echo "RESULT prefill swift_tokens_per_s=${swift_tps:-nan} torch_tokens_per_s=${torch_tps:-nan} ratio=$ratio swift_gemm_share=${swift_gemm:-nan} rounds=$ROUNDS tokens=$TOKENS"

